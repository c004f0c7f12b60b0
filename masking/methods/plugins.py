"""Masking methods published by other installed packages (entry point group ``fhirwall.masking_methods``).

A package declares ``[project.entry-points."fhirwall.masking_methods"] shuffle = "pkg.module:build"`` where
``build`` is a ``MethodFactory``; the name becomes usable as a profile ``method``. Plug-ins are loaded once,
before the first profile is compiled; one that cannot be loaded, or that reuses a registered name, is a
start-up problem like any other profile error.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from masking.methods.base import register_method

__all__ = ["ENTRY_POINT_GROUP", "load_plugin_methods"]

ENTRY_POINT_GROUP = "fhirwall.masking_methods"
_loaded: set[str] = set()
_scanned = False
_problems: list[tuple[str, str]] = []


def load_plugin_methods(*, rescan: bool = False) -> list[tuple[str, str]]:
    """Register the installed plug-in methods (the installed packages are scanned once per process unless
    ``rescan``); returns ``(key path, problem)`` for each plug-in that failed."""
    global _scanned
    if _scanned and not rescan:
        return list(_problems)
    _scanned = True
    problems = _problems
    problems.clear()
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.value in _loaded:
            continue
        try:
            factory = entry.load()
            if not callable(factory):
                raise TypeError("the entry point is not a method factory")
            register_method(entry.name, factory)
        except Exception as exc:  # an import error, a clash, anything: report it, do not start
            problems.append((f"plugins.{entry.name}", f"cannot load {entry.value}: {exc}"))
            continue
        _loaded.add(entry.value)
    return list(problems)

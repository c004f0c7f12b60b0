"""FHIR R4 search parameter definitions, and a walker for their element paths (pure; no I/O at request time).

The definitions come from ``data/r4-search-params.json``, distilled from the R4 (4.0.1) specification by
``data/build_tables.py`` and loaded once at import. A path is a dotted list of JSON element names relative to
the resource (``subject``, ``name.family``, ``effectiveDateTime``); a step may carry one equality filter on a
child primitive, written ``telecom[system=email]``. Parameters whose FHIRPath expression cannot be written as
such paths are kept with no paths and ``complex=True``: callers must not evaluate them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from typing import Any

import orjson

from proxy.fhir.resource_types import R4_RESOURCE_TYPES

__all__ = ["SearchParamDef", "search_param", "search_params", "values_at"]

ANY_TARGET = "*"
ALL_TARGETS: tuple[str, ...] = tuple(sorted(R4_RESOURCE_TYPES))
# Types that are not DomainResources, so do not have the DomainResource parameters (``_text``).
_NOT_DOMAIN_RESOURCES = frozenset({"Binary", "Bundle", "Parameters"})


@dataclass(frozen=True, slots=True)
class SearchParamDef:
    """One search parameter of one resource type.

    ``targets`` are the resource types a reference parameter can match (already narrowed by any
    ``where(resolve() is T)`` in its expression); it is empty for other parameter types.
    """

    name: str
    type: str
    paths: tuple[str, ...]
    targets: tuple[str, ...] = ()
    complex: bool = False


@dataclass(frozen=True, slots=True)
class _Step:
    name: str
    filter_key: str | None = None
    filter_value: str | None = None


def _definition(name: str, raw: Mapping[str, Any]) -> SearchParamDef:
    targets = tuple(raw.get("targets", ()))
    return SearchParamDef(
        name=name,
        type=str(raw["type"]),
        paths=tuple(raw["paths"]),
        targets=ALL_TARGETS if targets == (ANY_TARGET,) else targets,
        complex=bool(raw.get("complex", False)),
    )


def _load() -> dict[str, dict[str, SearchParamDef]]:
    raw = orjson.loads((files("proxy.fhir") / "data" / "r4-search-params.json").read_bytes())
    return {
        resource_type: {name: _definition(name, definition) for name, definition in params.items()}
        for resource_type, params in raw.items()
    }


_TABLE = _load()


def search_params(resource_type: str) -> Mapping[str, SearchParamDef]:
    """The parameters defined on ``resource_type`` itself (not the common ``_id``, ``_lastUpdated``, ...)."""
    return _TABLE.get(resource_type, {}) if resource_type in R4_RESOURCE_TYPES else {}


def search_param(resource_type: str, name: str) -> SearchParamDef | None:
    """The definition of ``name`` on ``resource_type``: its own parameters, then the common ones."""
    if resource_type not in R4_RESOURCE_TYPES:
        return None
    found = _TABLE[resource_type].get(name) or _TABLE["Resource"].get(name)
    if found is None and resource_type not in _NOT_DOMAIN_RESOURCES:
        found = _TABLE["DomainResource"].get(name)
    return found


def _parse_step(text: str) -> _Step:
    name, bracket, rest = text.partition("[")
    if not bracket:
        return _Step(name)
    key, equals, value = rest.removesuffix("]").partition("=")
    if not equals or not rest.endswith("]"):
        raise ValueError(f"malformed path step {text!r}")
    return _Step(name, key, value)


@lru_cache(maxsize=4096)
def _compile(path: str) -> tuple[_Step, ...]:
    return tuple(_parse_step(step) for step in path.split("."))


def _children(node: Any, step: _Step) -> list[Any]:
    if not isinstance(node, dict):
        return []
    value = node.get(step.name)
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    if step.filter_key is None:
        return [item for item in items if item is not None]
    return [
        item for item in items if isinstance(item, dict) and item.get(step.filter_key) == step.filter_value
    ]


def values_at(resource: Mapping[str, Any], paths: Iterable[str]) -> list[Any]:
    """Every leaf value (dict or primitive) at ``paths`` in ``resource``, walking through element arrays."""
    found: list[Any] = []
    for path in paths:
        nodes: list[Any] = [resource]
        for step in _compile(path):
            nodes = [child for node in nodes for child in _children(node, step)]
        found.extend(nodes)
    return found

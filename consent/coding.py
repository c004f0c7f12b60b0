"""FHIR ``Coding`` values as hashable pairs, and reading them out of JSON (pure; no I/O).

A ``Coding`` here is just ``(system, code)``; a missing system is the empty string, so a system-less code only
ever equals another system-less code. Display text, versions and ``userSelected`` play no part in matching.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

__all__ = ["Coding", "coding_of", "codings_in"]


class Coding(NamedTuple):
    """One code from one code system (``system`` is ``""`` when the source gave none)."""

    system: str
    code: str

    def __str__(self) -> str:
        return f"{self.system}|{self.code}" if self.system else self.code


def coding_of(value: Any) -> Coding | None:
    """The ``Coding`` in a JSON ``Coding`` object, or None when it has no usable code."""
    if not isinstance(value, dict):
        return None
    code, system = value.get("code"), value.get("system", "")
    if not isinstance(code, str) or not code or not isinstance(system, str):
        return None
    return Coding(system, code)


def codings_in(value: Any) -> Iterator[Coding]:
    """Every ``Coding`` in a ``Coding``, a ``CodeableConcept`` or a list of either (other shapes: none)."""
    for item in value if isinstance(value, list) else [value]:
        if not isinstance(item, dict):
            continue
        nested = item.get("coding")
        if isinstance(nested, list):
            yield from (coding for entry in nested if (coding := coding_of(entry)) is not None)
        elif (coding := coding_of(item)) is not None:
            yield coding

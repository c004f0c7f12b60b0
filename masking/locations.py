"""Where a FHIRPath result sits in the resource: ``(parent object, JSON key, list index)`` marks.

fhirpathpy (with ``returnRawData``) reports each result's location as a path string such as
``Observation.component[0].value``; FHIRPath names choice elements by their base name (``value``), so the
JSON key (``valueQuantity``) is recovered from the parent object. Results inside contained or Bundle entry
resources are dropped: those resources are masked with their own type's rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

__all__ = ["Mark", "marks_of"]

Mark = tuple[int, str, int | None]
"""``(id(parent object), JSON key, index in the list or None)``."""

_SEGMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)\])?$")


def marks_of(resource: dict[str, Any], results: Iterable[Any]) -> set[Mark]:
    """The marks of every FHIRPath result located inside ``resource`` itself."""
    marks: set[Mark] = set()
    for result in results:
        location = getattr(result, "propName", None)
        if isinstance(location, str):
            mark = _resolve(resource, location.split(".")[1:])
            if mark is not None:
                marks.add(mark)
    return marks


def _resolve(resource: dict[str, Any], segments: list[str]) -> Mark | None:
    node: Any = resource
    for position, segment in enumerate(segments):
        parsed = _SEGMENT.match(segment)
        if parsed is None or not isinstance(node, dict):
            return None
        key = _json_key(node, parsed.group(1))
        if key is None:
            return None
        index = None if parsed.group(2) is None else int(parsed.group(2))
        if position == len(segments) - 1:
            return (id(node), key, index)
        node = _child(node[key], index)
        if isinstance(node, dict) and "resourceType" in node:
            return None
    return None


def _json_key(node: dict[str, Any], name: str) -> str | None:
    if name in node:
        return name
    size = len(name)
    for key in node:
        if len(key) > size and key.startswith(name) and key[size].isupper():
            return key
    return None


def _child(value: Any, index: int | None) -> Any:
    if index is None:
        return value
    if isinstance(value, list) and index < len(value):
        return value[index]
    return None

"""substitute: replace the value with the setting ``replaceWith``.

* On a primitive, ``replaceWith`` is a primitive, read loosely for the element's type: numbers (or numeric
  strings) for numeric types (whole numbers for integer types), booleans (or ``"true"``/``"false"``) for
  ``boolean``, text otherwise (numbers and booleans written as FHIR JSON writes them). ``null`` removes the
  value. A value that cannot fit the type is a processing error (``MaskingValueError``).
* On a complex element (``apply_element``), ``replaceWith`` is a JSON object of the element's type; the
  element is replaced by a fresh copy of it (``null``: by an empty element). Children protected by earlier
  rules are merged back by the engine.

Label: MASKED natively, SUBSTITUTED in compatibility mode.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar, Final

import orjson

from masking.methods.base import (
    REMOVE,
    Leaf,
    MaskContext,
    MaskingValueError,
    MethodConfigError,
    ProfileParameters,
    common_problems,
)

__all__ = ["NUMERIC_TYPES", "Substitute", "build", "fit_to_type", "read_number"]

NUMERIC_TYPES: Final = frozenset({"decimal", "integer", "integer64", "positiveInt", "unsignedInt"})
_INTEGER_MINIMUM: Final = {"integer": None, "integer64": None, "positiveInt": 1, "unsignedInt": 0}


def read_number(value: Any) -> int | float | None:
    """A finite JSON number from a number or numeric string (``"5"`` -> 5, ``"2.5"`` -> 2.5); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float | Decimal):
        number = float(value)
    elif isinstance(value, str):
        try:
            parsed = Decimal(value.strip())
        except InvalidOperation:
            return None
        if parsed.is_finite() and parsed == parsed.to_integral_value() and "." not in value:
            return int(parsed)
        number = float(parsed)
    else:
        return None
    return number if math.isfinite(number) else None


def fit_to_type(value: Any, type_name: str) -> Any:
    """``value`` read as a JSON value of the FHIR primitive ``type_name``; ``None`` when it cannot be."""
    if type_name in NUMERIC_TYPES:
        number = read_number(value)
        if number is None or type_name == "decimal":
            return number
        if number != int(number):
            return None
        minimum = _INTEGER_MINIMUM[type_name]
        return None if minimum is not None and int(number) < minimum else int(number)
    if type_name == "boolean":
        if isinstance(value, bool):
            return value
        return value == "true" if value in ("true", "false") else None
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


class Substitute:
    """Replaces values (and whole elements) with a fixed replacement."""

    name: ClassVar[str] = "substitute"
    label: str | None

    def __init__(self, replacement: Any, *, compat: bool) -> None:
        self.label = "SUBSTITUTED" if compat else "MASKED"
        self._replacement = replacement
        self._fragment = orjson.dumps(replacement) if isinstance(replacement, dict) else None
        self._by_type: dict[str, Any] = {}

    def apply(self, leaf: Leaf, context: MaskContext) -> Any:
        """The replacement, as a value of the leaf's type."""
        if self._replacement is None:
            return REMOVE
        value = self._by_type.get(leaf.type_name)
        if value is None:
            if self._fragment is not None:
                raise MaskingValueError(f"substitute: an object cannot replace a {leaf.type_name} value")
            value = fit_to_type(self._replacement, leaf.type_name)
            if value is None:
                raise MaskingValueError(f"substitute: {self._replacement!r} is not a valid {leaf.type_name}")
            self._by_type[leaf.type_name] = value
        return value

    def apply_element(self, element: dict[str, Any], type_name: str, context: MaskContext) -> Any:
        """A fresh copy of the replacement object (an empty element for ``null``)."""
        if self._replacement is None:
            return {}
        if self._fragment is None:
            raise MaskingValueError(f"substitute: a primitive cannot replace a {type_name} element")
        return orjson.loads(self._fragment)


def _replacement_problems(replacement: Any) -> list[str]:
    if replacement is None or isinstance(replacement, str | bool | int):
        return []
    if isinstance(replacement, float | Decimal):
        return (
            [] if math.isfinite(replacement) else [f"substitute: replaceWith {replacement!r} is not finite"]
        )
    if isinstance(replacement, dict):
        try:
            orjson.dumps(replacement)
        except TypeError as exc:
            return [f"substitute: replaceWith is not a JSON object ({exc})"]
        return []
    kind = type(replacement).__name__
    return [f"substitute: replaceWith must be a primitive value or a JSON object, not {kind}"]


def build(settings: Mapping[str, Any], params: ProfileParameters) -> Substitute:
    """Settings: ``replaceWith`` (required; may be null)."""
    problems = common_problems("substitute", settings, ("replaceWith",), params)
    if "replaceWith" not in settings:
        problems.append("substitute: replaceWith is required")
    replacement = settings.get("replaceWith")
    problems += _replacement_problems(replacement)
    if problems:
        raise MethodConfigError(problems)
    if isinstance(replacement, Decimal):
        replacement = float(replacement)
    return Substitute(replacement, compat=params.mode == "compatibility")

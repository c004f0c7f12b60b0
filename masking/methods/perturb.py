"""perturb: add uniform random noise to numbers.

Settings: ``span`` (required, >= 0), ``rangeType`` ``fixed`` (default) or ``proportional``, ``roundTo``
(0..28, default 2). The noise is uniform in ``[-s/2, s/2]`` with ``s = span`` (fixed) or ``span * |value|``
(proportional); the result is rounded half-to-even to ``roundTo`` decimals (integer types: 0), positiveInt
stays >= 1 and unsignedInt >= 0. Applies to decimal, integer, positiveInt and unsignedInt values, which
includes the ``value`` of Quantity, Age, Count, Duration, Distance, Money and SimpleQuantity; other values
are kept. Label: MASKED natively, PERTURBED in compatibility mode.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation
from typing import Any, ClassVar, Final

from masking.methods.base import (
    KEEP,
    Leaf,
    MaskContext,
    MethodConfigError,
    ProfileParameters,
    common_problems,
)

__all__ = ["Perturb", "build"]

_INTEGER_MINIMUM: Final = {"integer": None, "integer64": None, "positiveInt": 1, "unsignedInt": 0}
_NUMERIC: Final = frozenset({"decimal", *_INTEGER_MINIMUM})
_CONTEXT: Final = Context(prec=400, Emax=999999, Emin=-999999)
_ONE: Final = Decimal(1)
_SETTINGS: Final = ("span", "rangeType", "roundTo")


class Perturb:
    """Adds noise from ``rng`` (OS-seeded ``SystemRandom`` unless one is injected)."""

    name: ClassVar[str] = "perturb"
    label: str | None

    def __init__(
        self,
        span: float,
        *,
        proportional: bool,
        round_to: int,
        compat: bool,
        rng: random.Random | None = None,
    ) -> None:
        self.label = "PERTURBED" if compat else "MASKED"
        self.deterministic = False  # fresh noise each time
        self._span = span
        self._proportional = proportional
        self._quantum = Decimal(1).scaleb(-round_to)
        self._round_to = round_to
        self._rng = rng if rng is not None else random.SystemRandom()

    def apply(self, leaf: Leaf, context: MaskContext) -> Any:
        """The value plus noise, rounded, of the value's JSON kind."""
        type_name = leaf.type_name
        value = leaf.value
        if (
            type_name not in _NUMERIC
            or isinstance(value, bool)
            or not isinstance(value, int | float | Decimal | str)
        ):
            return KEEP
        origin = _decimal(value)
        if origin is None:
            return KEEP
        span = self._span * abs(float(origin)) if self._proportional else self._span
        noisy = _CONTEXT.add(origin, Decimal(self._rng.uniform(-span / 2, span / 2)))
        if type_name == "decimal":
            return _emit(noisy.quantize(self._quantum, ROUND_HALF_EVEN, _CONTEXT), value, self._round_to)
        result = int(noisy.quantize(_ONE, ROUND_HALF_EVEN, _CONTEXT))
        minimum = _INTEGER_MINIMUM[type_name]
        if minimum is not None:
            result = max(result, minimum)
        return str(result) if isinstance(value, str) else result


def _decimal(value: int | float | Decimal | str) -> Decimal | None:
    try:
        number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _emit(number: Decimal, like: Any, round_to: int) -> Any:
    """The result as the input's JSON kind: text stays text, numbers become float (int at 0 decimals)."""
    if isinstance(like, str):
        return str(number)
    if isinstance(like, Decimal):
        return number
    return int(number) if round_to == 0 else float(number)


def _span_problems(settings: Mapping[str, Any]) -> tuple[float, list[str]]:
    if "span" not in settings:
        return 0.0, ["perturb: span is required"]
    span = settings["span"]
    if isinstance(span, str):
        try:
            span = float(span)
        except ValueError:
            return 0.0, [f"perturb: span {settings['span']!r} is not a number"]
    if isinstance(span, bool) or not isinstance(span, int | float) or not math.isfinite(span) or span < 0:
        return 0.0, [f"perturb: span {settings['span']!r} must be a number >= 0"]
    return float(span), []


def _round_to_problems(settings: Mapping[str, Any]) -> tuple[int, list[str]]:
    round_to = settings.get("roundTo", 2)
    if isinstance(round_to, str) and round_to.strip().isdigit():
        round_to = int(round_to)
    if isinstance(round_to, bool) or not isinstance(round_to, int) or not 0 <= round_to <= 28:
        return 2, [f"perturb: roundTo {settings.get('roundTo')!r} must be a whole number from 0 to 28"]
    return round_to, []


def _range_problems(settings: Mapping[str, Any]) -> tuple[bool, list[str]]:
    range_type = settings.get("rangeType", "fixed")
    if not isinstance(range_type, str) or range_type.lower() not in ("fixed", "proportional"):
        return False, [f"perturb: rangeType {range_type!r} must be fixed or proportional"]
    return range_type.lower() == "proportional", []


def build(
    settings: Mapping[str, Any], params: ProfileParameters, rng: random.Random | None = None
) -> Perturb:
    """Settings: ``span`` (required), ``rangeType``, ``roundTo``; ``rng`` is for tests."""
    problems = common_problems("perturb", settings, _SETTINGS, params)
    span, span_problems = _span_problems(settings)
    proportional, range_problems = _range_problems(settings)
    round_to, round_problems = _round_to_problems(settings)
    problems += span_problems + range_problems + round_problems
    if problems:
        raise MethodConfigError(problems)
    compat = params.mode == "compatibility"
    return Perturb(span, proportional=proportional, round_to=round_to, compat=compat, rng=rng)

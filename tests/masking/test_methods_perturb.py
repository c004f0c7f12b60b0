"""perturb: uniform noise, rounding, integer bounds.

Spec (masking.md, "perturb"): add uniform noise in [-s/2, s/2] (s = ``span``, or ``span`` x value if
``rangeType: proportional``), round to ``roundTo`` decimals (integers: 0); positiveInt >= 1, unsignedInt >= 0.
Applies to decimals, integers and the ``value`` of Age, Count, Duration, Distance, Money, Quantity.
"""

from __future__ import annotations

import random
from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from masking.methods import KEEP, Leaf, MaskContext, MethodConfigError, ProfileParameters
from masking.methods.perturb import build

CTX = MaskContext("Observation", "o1", today=date(2024, 6, 1))
NATIVE = ProfileParameters()


class Fixed(random.Random):
    """Draws the same point of the interval every time: ``t`` = 0 (low end) .. 1 (high end)."""

    def __init__(self, t: float) -> None:
        super().__init__(0)
        self.t = t

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.t


def leaf(value: Any, type_name: str = "decimal", parent: str = "Quantity") -> Leaf:
    return Leaf(value, type_name, "value", parent, "Observation")


@pytest.mark.parametrize(
    ("settings", "t", "item", "expected"),
    [
        ({"span": 6}, 1.0, leaf(50, "integer", "Observation"), 53),
        ({"span": 6}, 0.0, leaf(50, "integer", "Observation"), 47),
        ({"span": 6}, 0.5, leaf(50.5), 50.5),
        ({"span": 0.2, "rangeType": "proportional"}, 1.0, leaf(100.0), 110.0),
        ({"span": 0.2, "rangeType": "Proportional"}, 0.0, leaf(-100.0), -110.0),
        ({"span": 0}, 1.0, leaf(12.345), 12.34),
        ({"span": 0, "roundTo": 3}, 1.0, leaf(12.3456), 12.346),
        ({"span": 1, "roundTo": 0}, 1.0, leaf(2.0, parent="Age"), 2),
        ({"span": 10}, 0.0, leaf(1, "positiveInt", "Observation"), 1),
        ({"span": 10}, 0.0, leaf(2, "unsignedInt", "Count"), 0),
        ({"span": 10}, 0.0, leaf(2, "integer", "Observation"), -3),
        ({"span": 2}, 1.0, leaf("12.5"), "13.50"),
        ({"span": 2}, 1.0, leaf(Decimal("12.5"), parent="Money"), Decimal("13.50")),
        ({"span": 2}, 1.0, leaf("7", "integer"), "8"),
    ],
)
def test_noise_and_rounding(settings: dict[str, Any], t: float, item: Leaf, expected: Any) -> None:
    method = build(settings, NATIVE, rng=Fixed(t))
    result = method.apply(item, CTX)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    "item",
    [
        leaf("kg", "string"),
        leaf(True, "boolean"),
        leaf("2015-02-07", "date"),
        leaf("n/a", "decimal"),
        leaf(float("nan"), "decimal"),
    ],
)
def test_other_values_are_kept(item: Leaf) -> None:
    assert build({"span": 6}, NATIVE).apply(item, CTX) is KEEP


def test_real_noise_stays_in_range() -> None:
    method = build({"span": 6, "roundTo": 1}, NATIVE)
    results = {method.apply(leaf(50.0), CTX) for _ in range(2000)}
    assert all(47.0 <= value <= 53.0 for value in results)
    assert len(results) > 30


def test_labels() -> None:
    assert build({"span": 1}, NATIVE).label == "MASKED"
    assert build({"span": 1}, ProfileParameters(mode="compatibility")).label == "PERTURBED"


def test_numeric_strings_are_accepted_in_settings() -> None:
    method = build({"span": "6", "roundTo": "0"}, NATIVE, rng=Fixed(1.0))
    assert method.apply(leaf(1.2), CTX) == 4


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({}, "perturb: span is required"),
        ({"span": -1}, "perturb: span -1 must be a number >= 0"),
        ({"span": "wide"}, "perturb: span 'wide' is not a number"),
        ({"span": True}, "perturb: span True must be a number >= 0"),
        ({"span": float("inf")}, "perturb: span inf must be a number >= 0"),
        ({"span": 1, "rangeType": "relative"}, "perturb: rangeType 'relative' must be fixed or proportional"),
        ({"span": 1, "roundTo": 29}, "perturb: roundTo 29 must be a whole number from 0 to 28"),
        ({"span": 1, "roundTo": -1}, "perturb: roundTo -1 must be a whole number from 0 to 28"),
        ({"span": 1, "roundTo": 2.5}, "perturb: roundTo 2.5 must be a whole number from 0 to 28"),
        ({"span": 1, "noise": "x"}, "perturb: unknown setting 'noise'"),
    ],
)
def test_config_errors(settings: dict[str, Any], problem: str) -> None:
    with pytest.raises(MethodConfigError) as caught:
        build(settings, NATIVE)
    assert caught.value.problems == [problem]


def test_all_problems_are_reported_together() -> None:
    with pytest.raises(MethodConfigError) as caught:
        build({"rangeType": 3, "roundTo": 99, "x": 1}, NATIVE)
    assert len(caught.value.problems) == 4

"""Purpose of use (v3-ActReason) subsumption and the break-glass codes.

Spec (purpose-of-use facts): TREAT has ETREAT under it; BTG and ERTREAT are under ETREAT; PATRQT has FAMRQT
and PWATRNY under it. BTG is the break-the-glass override. Other codes (HPAYMT, HOPERAT, HRESCH, PUBHLTH,
HMARKT, CLINTRL, COC) stand alone.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consent.purpose import (
    BREAK_GLASS_CODES,
    ancestors,
    break_glass_purposes,
    is_break_glass,
    is_treatment,
    purpose_covers,
)

CODES = [
    "TREAT",
    "ETREAT",
    "BTG",
    "ERTREAT",
    "HPAYMT",
    "HOPERAT",
    "HRESCH",
    "PUBHLTH",
    "PATRQT",
    "FAMRQT",
    "PWATRNY",
    "HMARKT",
    "CLINTRL",
    "COC",
]

# Rule: a rule naming a purpose covers it and everything under it; nothing else.
COVERS = [
    ("TREAT", "TREAT", True),
    ("TREAT", "ETREAT", True),
    ("TREAT", "BTG", True),
    ("TREAT", "ERTREAT", True),
    ("ETREAT", "BTG", True),
    ("ETREAT", "ERTREAT", True),
    ("ETREAT", "TREAT", False),
    ("BTG", "BTG", True),
    ("BTG", "ETREAT", False),
    ("BTG", "TREAT", False),
    ("BTG", "ERTREAT", False),
    ("ERTREAT", "BTG", False),
    ("PATRQT", "FAMRQT", True),
    ("PATRQT", "PWATRNY", True),
    ("FAMRQT", "PATRQT", False),
    ("FAMRQT", "PWATRNY", False),
    ("TREAT", "PATRQT", False),
    ("PATRQT", "TREAT", False),
    ("TREAT", "HPAYMT", False),
    ("HRESCH", "HRESCH", True),
    ("HRESCH", "CLINTRL", False),
    ("treat", "TREAT", False),  # codes are case-sensitive
]


@pytest.mark.parametrize(("rule", "request_code", "covered"), COVERS)
def test_purpose_covers(rule: str, request_code: str, covered: bool) -> None:
    assert purpose_covers(rule, request_code) is covered


ANCESTORS = [
    ("BTG", ["ETREAT", "TREAT"]),
    ("ERTREAT", ["ETREAT", "TREAT"]),
    ("ETREAT", ["TREAT"]),
    ("TREAT", []),
    ("FAMRQT", ["PATRQT"]),
    ("PWATRNY", ["PATRQT"]),
    ("HPAYMT", []),
]


@pytest.mark.parametrize(("code", "above"), ANCESTORS)
def test_ancestors_nearest_first(code: str, above: list[str]) -> None:
    assert list(ancestors(code)) == above


def test_break_glass_codes() -> None:
    assert frozenset({"BTG", "ETREAT", "ERTREAT"}) == BREAK_GLASS_CODES


BREAK_GLASS = [
    (set(), False, frozenset()),
    ({"TREAT"}, False, frozenset()),
    ({"BTG"}, True, {"BTG"}),
    ({"TREAT", "ETREAT"}, True, {"ETREAT"}),
    ({"ERTREAT", "HPAYMT"}, True, {"ERTREAT"}),
]


@pytest.mark.parametrize(("purposes", "glass", "found"), BREAK_GLASS)
def test_break_glass_purposes(purposes: set[str], glass: bool, found: set[str]) -> None:
    assert is_break_glass(purposes) is glass
    assert break_glass_purposes(purposes) == found


# Rule (basic-normal implicit policy): "clinicians for treatment" — TREAT or anything TREAT covers.
TREATMENT = [
    ({"TREAT"}, True),
    ({"ETREAT"}, True),
    ({"BTG"}, True),
    ({"ERTREAT"}, True),
    ({"HPAYMT", "TREAT"}, True),
    ({"HPAYMT"}, False),
    ({"PATRQT"}, False),
    (set(), False),
]


@pytest.mark.parametrize(("purposes", "treatment"), TREATMENT)
def test_is_treatment(purposes: set[str], treatment: bool) -> None:
    assert is_treatment(purposes) is treatment


codes = st.sampled_from(CODES)


@given(a=codes, b=codes, c=codes)
def test_coverage_is_a_partial_order(a: str, b: str, c: str) -> None:
    assert purpose_covers(a, a)
    if purpose_covers(a, b) and purpose_covers(b, a):
        assert a == b
    if purpose_covers(a, b) and purpose_covers(b, c):
        assert purpose_covers(a, c)

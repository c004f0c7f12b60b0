"""redact, with the Safe Harbor partial options.

Spec (masking.md, "redact"): remove the value; partial dates keep only the year
(``2015-02-07T13:28:17-05:00`` -> ``2015``) unless the implied age is over 89; ``Age.value`` > 89 removed,
else kept; ``postalCode`` keeps 3 characters and zeroes the other digits (``98028-1830`` -> ``98000-0000``),
all digits zero when the 3-digit area is restricted (``20301`` -> ``00000`` with ``["203","556"]``). The age
is computed like the MS anonymizer: today's year minus the value's year, minus one before the
(month, day) anniversary, missing month/day counting as January 1st.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from masking.methods import KEEP, REMOVE, Leaf, MaskContext, MethodConfigError, ProfileParameters, Relabelled
from masking.methods.redact import build

TODAY = date(2024, 6, 1)
CTX = MaskContext("Patient", "p1", today=TODAY)
RESTRICTED = ("203", "556")
COMPAT = "compatibility"


def params(mode: str = "native", **options: Any) -> ProfileParameters:
    return ProfileParameters(mode=mode, restricted_zip_codes=RESTRICTED, **options)


def leaf(value: Any, type_name: str = "string", name: str = "x", parent: str = "Patient") -> Leaf:
    return Leaf(value, type_name, name, parent, "Patient")


ALL_PARTIAL: dict[str, Any] = {"partial_dates": True, "partial_ages": True, "partial_zip_codes": True}


@pytest.mark.parametrize("mode", ["native", COMPAT])
@pytest.mark.parametrize(
    "item",
    [
        leaf("Peter", name="family", parent="HumanName"),
        leaf("2015-02-07", "date", "birthDate"),
        leaf("2015-02-07T13:28:17-05:00", "dateTime"),
        leaf(57, "decimal", "value", "Age"),
        leaf("98028-1830", name="postalCode", parent="Address"),
        leaf(True, "boolean", "deceasedBoolean"),
    ],
)
def test_without_partial_options_everything_is_removed(mode: str, item: Leaf) -> None:
    method = build({}, params(mode))
    assert method.apply(item, CTX) is REMOVE
    assert method.label == "REDACTED"


@pytest.mark.parametrize(
    ("value", "type_name", "native", "compat"),
    [
        ("2015-02-07T13:28:17-05:00", "dateTime", Relabelled("2015", "ABSTRED"), "2015"),
        ("2015-02-07", "date", Relabelled("2015", "ABSTRED"), "2015"),
        ("2015-02", "date", Relabelled("2015", "ABSTRED"), "2015"),
        ("2015", "date", KEEP, "2015"),
        ("2015-02-07T13:28:17.123Z", "instant", REMOVE, "2015"),  # natively a year is no valid instant
        ("1925-02-07", "date", REMOVE, REMOVE),
        ("1925-02-07T13:28:17-05:00", "dateTime", REMOVE, REMOVE),
        # Age boundary with today = 2024-06-01: 89 until the 90th birthday (MS). Natively the kept year
        # must not itself imply 90 (1934 read as 1934-01-01 does), so the whole date goes.
        ("1934-06-02", "date", REMOVE, "1934"),
        ("1934-06-01", "date", REMOVE, REMOVE),
        ("1934-07", "date", REMOVE, "1934"),
        ("1934", "date", REMOVE, REMOVE),
        ("1935", "date", KEEP, "1935"),
        # Values that do not parse are removed (fail closed).
        ("2015-02-30", "date", REMOVE, REMOVE),
        ("07/02/2015", "date", REMOVE, REMOVE),
        ("", "date", REMOVE, REMOVE),
    ],
)
def test_partial_dates(value: str, type_name: str, native: Any, compat: Any) -> None:
    item = leaf(value, type_name, "date")
    assert build({}, params(partial_dates=True)).apply(item, CTX) == native
    assert build({}, params(COMPAT, partial_dates=True)).apply(item, CTX) == compat


def test_partial_dates_follow_the_pinned_clock() -> None:
    method = build({}, params(partial_dates=True))
    item = leaf("1934-06-01", "date")
    assert method.apply(item, MaskContext("Patient", "p1", today=date(2023, 12, 31))) == Relabelled(
        "1934", "ABSTRED"
    )
    assert method.apply(item, MaskContext("Patient", "p1", today=date(2024, 1, 1))) is REMOVE


@pytest.mark.parametrize("mode", ["native", COMPAT])
@pytest.mark.parametrize(
    ("value", "expected"),
    [(92, REMOVE), (57, KEEP), (89, KEEP), (89.5, REMOVE), (90, REMOVE), ("45", KEEP), ("old", REMOVE)],
)
def test_partial_ages(mode: str, value: Any, expected: Any) -> None:
    method = build({}, params(mode, partial_ages=True))
    if expected is KEEP and mode == COMPAT:  # the MS anonymizer labels the age it keeps
        expected = Relabelled(KEEP, "REDACTED")
    assert method.apply(leaf(value, "decimal", "value", "Age"), CTX) == expected


def test_partial_ages_only_apply_to_age_values() -> None:
    method = build({}, params(partial_ages=True))
    assert method.apply(leaf(57, "decimal", "value", "Quantity"), CTX) is REMOVE
    assert method.apply(leaf("a", "string", "unit", "Age"), CTX) is REMOVE


@pytest.mark.parametrize("mode", ["native", COMPAT])
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("98052", "98000"),
        ("10104", "10100"),
        ("20301", "00000"),
        ("55602", "00000"),
        ("98028-1830", "98000-0000"),
        ("20301-1830", "00000-0000"),
        ("K1A 0B1", "K1A 0B0"),
        ("\u0669\u0668\u0660\u0662\u0668", "\u0669\u0668\u066000"),  # Arabic-Indic digits
    ],
)
def test_partial_zip_codes(mode: str, value: str, expected: str) -> None:
    method = build({}, params(mode, partial_zip_codes=True))
    assert method.apply(leaf(value, name="postalCode", parent="Address"), CTX) == Relabelled(
        expected, "ABSTRED"
    )


def test_short_zip_codes_kept_by_ms_zeroed_natively() -> None:
    item = leaf("12", name="postalCode", parent="Address")
    assert build({}, params(COMPAT, partial_zip_codes=True)).apply(item, CTX) == Relabelled("12", "ABSTRED")
    assert build({}, params(partial_zip_codes=True)).apply(item, CTX) == Relabelled("00", "ABSTRED")


def test_partial_options_leave_other_values_redacted() -> None:
    method = build({}, params(**ALL_PARTIAL))
    assert method.apply(leaf("Peter", name="family", parent="HumanName"), CTX) is REMOVE
    assert method.apply(leaf("Seattle", name="city", parent="Address"), CTX) is REMOVE


def test_problems_are_collected() -> None:
    bad = ProfileParameters(mode="other", restricted_zip_codes=(203,))  # type: ignore[arg-type]
    with pytest.raises(MethodConfigError) as caught:
        build({"span": 1}, bad)
    assert caught.value.problems == [
        "redact: unknown setting 'span'",
        "redact: unknown mode 'other' (expected native or compatibility)",
        "redact: restricted zip code area 203 is not a string",
    ]

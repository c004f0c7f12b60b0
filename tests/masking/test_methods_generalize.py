"""generalize: FHIRPath cases on the value.

Spec (masking.md, "generalize"): ``cases`` = ordered map FHIRPath condition -> FHIRPath result evaluated on
the element; first true wins; ``otherValues`` redact (default) | keep. Cases
``{"$this>=0 and $this<20":"20","$this>=20 and $this<40":"40"}``: 5 -> 20, 20 -> 40; 110 -> removed (redact)
or 110 (keep). Further vectors are the MS anonymizer's own (GeneralizeProcessor tests) where FHIRPath
engines agree.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from masking.methods import (
    KEEP,
    REMOVE,
    Leaf,
    MaskContext,
    MaskingValueError,
    MethodConfigError,
    ProfileParameters,
    Relabelled,
)
from masking.methods.generalize import build

CTX = MaskContext("Patient", "p1", today=date(2024, 6, 1))
COMPAT = ProfileParameters(mode="compatibility")
NATIVE = ProfileParameters()
RANGES = {"$this>=0 and $this<20": "20", "$this>=20 and $this<40": "40"}
REDACTED = Relabelled(REMOVE, "REDACTED")


def leaf(value: Any, type_name: str = "integer") -> Leaf:
    return Leaf(value, type_name, "value", "Quantity", "Observation")


@pytest.mark.parametrize(
    ("value", "others", "compat", "native"),
    [
        (5, "redact", 20, 20),
        (20, "redact", 40, 40),
        (110, "redact", REMOVE, REDACTED),
        (110, "keep", Relabelled(KEEP, "GENERALIZED"), KEEP),  # MS labels what it keeps
        (110, "Keep", Relabelled(KEEP, "GENERALIZED"), KEEP),
        (-1, "redact", REMOVE, REDACTED),
    ],
)
def test_spec_vector(value: int, others: str, compat: Any, native: Any) -> None:
    settings = {"cases": RANGES, "otherValues": others}
    assert build(settings, COMPAT).apply(leaf(value), CTX) == compat
    assert build(settings, NATIVE).apply(leaf(value), CTX) == native


def test_decimal_values_and_results() -> None:
    method = build({"cases": RANGES}, NATIVE)
    assert method.apply(leaf(5.5, "decimal"), CTX) == 20
    halves = build({"cases": {"$this>=0 and $this<20": "$this / 2"}}, NATIVE)
    assert halves.apply(leaf(5, "decimal"), CTX) == 2.5


@pytest.mark.parametrize(("value", "expected"), [(5, -10), (20, 10), (43, 30), (78, 60), (24, 10)])
def test_approximation(value: int, expected: int) -> None:
    method = build({"cases": {"$this>=-20 and $this<80": "($this div 10 -1)*10 "}}, COMPAT)
    assert method.apply(leaf(value), CTX) == expected


@pytest.mark.parametrize(("value", "expected"), [(18, 20), (31, 40), (45, 60), (110, 80)])
def test_first_true_case_wins(value: int, expected: int) -> None:
    cases = {
        "$this>=0 and $this<20": "20",
        "$this>=10 and $this<40": "40",
        "$this>=30 and $this<60": "60",
        "true": "80",
    }
    assert build({"cases": cases}, COMPAT).apply(leaf(value), CTX) == expected


@pytest.mark.parametrize(
    ("value", "expected"), [("en-AU", "en"), ("en-CA", "en"), ("en-CI", REMOVE), ("es-ES", "es")]
)
def test_value_sets(value: str, expected: Any) -> None:
    cases = {
        "$this in ('en-AU' | 'en-CA' | 'en-GB' | 'en-IN' | 'en-NZ' | 'en-SG' | 'en-US')": "'en'",
        "('es-AR' | 'es-ES' | 'es-UY') contains $this": "'es'",
    }
    assert build({"cases": cases}, COMPAT).apply(leaf(value, "code"), CTX) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1230005", "123****"),
        ("2345234", "234****"),
        ("7654321", Relabelled(KEEP, "GENERALIZED")),
        ("98052", Relabelled(KEEP, "GENERALIZED")),
    ],
)
def test_string_masks(value: str, expected: Any) -> None:
    cases = {"$this.startsWith('123') or $this.endsWith('234')": "$this.substring(0,3)+'****'"}
    method = build({"cases": cases, "otherValues": "keep"}, COMPAT)
    assert method.apply(leaf(value, "string"), CTX) == expected


@pytest.mark.parametrize(
    ("value", "type_name", "expected"),
    [
        ("1990-01-01", "date", "1990"),
        ("1995-07-13", "date", "1990"),
        ("2000-01-01", "date", REMOVE),
        ("2010", "date", "2010-01-01"),
        ("2020", "date", "2020-01-01"),
        ("2020-05-20", "date", REMOVE),
        ("1995-07-13T10:00:00Z", "dateTime", "1990"),
    ],
)
def test_dates(value: str, type_name: str, expected: Any) -> None:
    cases = {
        "$this >= @1990-01-01 and $this < @2000-01-01": "@1990",
        "$this = @2010": "@2010-01-01",
        "$this ~ @2020": "@2020-01-01",
    }
    assert build({"cases": cases}, COMPAT).apply(leaf(value, type_name), CTX) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1990-01-01T00:00:00Z", "1990"),
        ("1990-01-01T00:00:00+08:00", REMOVE),
        ("2000-01-01T00:00:00+08:00", "1990"),
        ("2000-01-01T00:00:00-09:00", REMOVE),
        ("2009-12-31T16:00:00Z", "2010-01-01"),
        ("2010-01-01T00:00:00+08:00", "2010-01-01"),
    ],
)
def test_date_times_compare_as_instants(value: str, expected: Any) -> None:
    cases = {
        "$this >= @1990-01-01T00:00:00Z and $this <= @2000-01-01T00:00:00+08:00": "@1990",
        "$this = @2010-01-01T00:00:00+08:00": "@2010-01-01",
    }
    assert build({"cases": cases}, COMPAT).apply(leaf(value, "dateTime"), CTX) == expected


@pytest.mark.parametrize(
    ("value", "expected"), [("13:45:02", "12:00:00"), ("02:00:00", REMOVE), ("00:00:00", "00:00:00")]
)
def test_times(value: str, expected: Any) -> None:
    cases = {"$this >= @T13:45:02 and $this < @T23:45:02": "@T12:00:00", "$this = @T00:00:00": "@T00:00:00"}
    assert build({"cases": cases}, COMPAT).apply(leaf(value, "time"), CTX) == expected


def test_postal_code_prefixes() -> None:
    cases = {"$this.length() >= 3": "$this.substring(0, 3) + '**'"}
    assert build({"cases": cases}, NATIVE).apply(leaf("98052", "string"), CTX) == "980**"


def test_empty_result_removes_and_comments_are_allowed() -> None:
    method = build({"cases": {"true // always": "{}"}}, NATIVE)
    assert method.apply(leaf(5), CTX) == REDACTED
    assert build({"cases": {"true": "{}"}}, COMPAT).apply(leaf(5), CTX) is REMOVE


@pytest.mark.parametrize(
    ("cases", "value"),
    [
        ({"$this>=0": "$this / 2"}, 5),  # 2.5 is no integer (MS would write it anyway)
        ({"$this>=0": "(1 | 2)"}, 5),  # more than one result
        ({"$this + 'a' > 1": "1"}, 5),  # evaluation error
        ({"$this>=0": "'many'"}, 5),  # text result for an integer
    ],
)
def test_unusable_results_are_processing_errors(cases: dict[str, str], value: int) -> None:
    with pytest.raises(MaskingValueError):
        build({"cases": cases}, NATIVE).apply(leaf(value), CTX)


def test_outcomes_are_cached_unless_the_clock_is_read() -> None:
    method = build({"cases": RANGES}, NATIVE)
    assert method.apply(leaf(5), CTX) == method.apply(leaf(5), CTX) == 20
    for number in range(5000):
        method.apply(leaf(number % 60), CTX)
    assert method.apply(leaf(25), CTX) == 40
    clock = build({"cases": {"today() > @2000-01-01": "1"}}, NATIVE)
    assert clock.apply(leaf(5), CTX) == 1


def test_empty_values_are_kept() -> None:
    assert build({"cases": RANGES}, NATIVE).apply(leaf("", "string"), CTX) is KEEP


def test_labels() -> None:
    assert build({"cases": RANGES}, NATIVE).label == "ABSTRED"
    assert build({"cases": RANGES}, COMPAT).label == "GENERALIZED"


def test_numeric_and_boolean_result_literals() -> None:
    assert build({"cases": {"$this < 20": 20}}, NATIVE).apply(leaf(5), CTX) == 20
    assert build({"cases": {"true": True}}, NATIVE).apply(leaf(False, "boolean"), CTX) is True


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({}, "generalize: cases is required"),
        ({"cases": ["$this > 1"]}, "generalize: cases must map FHIRPath conditions to FHIRPath results"),
        (
            {"cases": {"$this >": "1"}},
            "generalize: invalid condition '$this >': column 8: mismatched input '<EOF>'",
        ),
        ({"cases": {"true": "1 1"}}, "generalize: invalid result '1 1': unexpected '1'"),
        (
            {"cases": {"frobnicate($this)": "1"}},
            "generalize: invalid condition 'frobnicate($this)': unknown function frobnicate",
        ),
        ({"cases": {"true": None}}, "generalize: result None is not a FHIRPath expression"),
        ({"cases": RANGES, "otherValues": "drop"}, "generalize: otherValues 'drop' must be redact or keep"),
        ({"cases": RANGES, "otherValues": 1}, "generalize: otherValues 1 must be redact or keep"),
        ({"cases": RANGES, "others": "keep"}, "generalize: unknown setting 'others'"),
    ],
)
def test_config_errors(settings: dict[str, Any], problem: str) -> None:
    with pytest.raises(MethodConfigError) as caught:
        build(settings, NATIVE)
    assert caught.value.problems == [problem]


def test_every_bad_expression_is_reported() -> None:
    with pytest.raises(MethodConfigError) as caught:
        build({"cases": {"(": ")", "ok()": "true"}, "otherValues": "x"}, NATIVE)
    assert len(caught.value.problems) == 4

"""substitute: fixed replacement values and fragments.

Spec (masking.md, "substitute"): replace with ``replaceWith`` (a primitive, or a JSON fragment of the
element's type merged child by child — the merging of protected children is the engine's).
"""

from __future__ import annotations

import math
from datetime import date
from typing import Any

import pytest

from masking.methods import REMOVE, Leaf, MaskContext, MaskingValueError, MethodConfigError, ProfileParameters
from masking.methods.substitute import build

CTX = MaskContext("Patient", "p1", today=date(2024, 6, 1))
NATIVE = ProfileParameters()


def leaf(value: Any, type_name: str = "string") -> Leaf:
    return Leaf(value, type_name, "x", "Address", "Patient")


@pytest.mark.parametrize(
    ("replacement", "type_name", "expected"),
    [
        ("example city", "string", "example city"),
        ("1990-01-01", "date", "1990-01-01"),
        (5, "integer", 5),
        ("5", "integer", 5),
        (5.0, "integer", 5),
        ("2.5", "decimal", 2.5),
        (2.5, "decimal", 2.5),
        (7, "decimal", 7),
        (1, "positiveInt", 1),
        (0, "unsignedInt", 0),
        (True, "boolean", True),
        ("false", "boolean", False),
        (5, "string", "5"),
        (2.5, "code", "2.5"),
        (True, "string", "true"),
    ],
)
def test_primitives_fit_the_type(replacement: Any, type_name: str, expected: Any) -> None:
    method = build({"replaceWith": replacement}, NATIVE)
    result = method.apply(leaf("old", type_name), CTX)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("replacement", "type_name"),
    [
        ("abc", "decimal"),
        (2.5, "integer"),
        (0, "positiveInt"),
        (-1, "unsignedInt"),
        (True, "integer"),
        ("yes", "boolean"),
        ({"city": "x"}, "string"),
    ],
)
def test_values_that_cannot_fit_are_processing_errors(replacement: Any, type_name: str) -> None:
    method = build({"replaceWith": replacement}, NATIVE)
    with pytest.raises(MaskingValueError):
        method.apply(leaf("old", type_name), CTX)


def test_null_removes() -> None:
    method = build({"replaceWith": None}, NATIVE)
    assert method.apply(leaf("old"), CTX) is REMOVE
    assert method.apply_element({"city": "x"}, "Address", CTX) == {}


def test_fragments_are_fresh_copies() -> None:
    fragment = {"use": "home", "city": "example city", "period": {"start": "2000-01-01"}, "line": ["a"]}
    method = build({"replaceWith": fragment}, NATIVE)
    first = method.apply_element({"city": "Seattle", "postalCode": "98052"}, "Address", CTX)
    assert first == fragment
    assert first is not fragment
    first["period"]["start"] = "changed"
    first["line"].append("b")
    assert method.apply_element({}, "Address", CTX) == fragment


def test_a_primitive_cannot_replace_an_element() -> None:
    with pytest.raises(MaskingValueError):
        build({"replaceWith": "x"}, NATIVE).apply_element({"city": "y"}, "Address", CTX)


def test_labels() -> None:
    assert build({"replaceWith": "x"}, NATIVE).label == "MASKED"
    assert build({"replaceWith": "x"}, ProfileParameters(mode="compatibility")).label == "SUBSTITUTED"


@pytest.mark.parametrize(
    ("settings", "problems"),
    [
        ({}, ["substitute: replaceWith is required"]),
        ({"replaceWith": "x", "with": "y"}, ["substitute: unknown setting 'with'"]),
        ({"replaceWith": math.nan}, ["substitute: replaceWith nan is not finite"]),
        (
            {"replaceWith": ["a"]},
            ["substitute: replaceWith must be a primitive value or a JSON object, not list"],
        ),
        (
            {"replaceWith": {"a": {1, 2}}},
            ["substitute: replaceWith is not a JSON object (Type is not JSON serializable: set)"],
        ),
        (
            {"with": "y"},
            ["substitute: unknown setting 'with'", "substitute: replaceWith is required"],
        ),
    ],
)
def test_config_errors(settings: dict[str, Any], problems: list[str]) -> None:
    with pytest.raises(MethodConfigError) as caught:
        build(settings, NATIVE)
    assert caught.value.problems == problems

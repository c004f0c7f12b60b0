"""keep, and the registry of built-in methods.

Spec (masking.md, "Rule model"): ``keep`` protects a node and its subtree; the method names are those of the
MS anonymizer profiles: keep, redact, cryptoHash, encrypt, dateShift, substitute, perturb, generalize.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from masking.methods import (
    BUILTIN_METHODS,
    KEEP,
    ElementMethod,
    Keyring,
    Leaf,
    MaskContext,
    MaskingMethod,
    MethodConfigError,
    ProfileParameters,
    known_methods,
    method_factory,
)
from masking.methods.keep import Keep

CTX = MaskContext("Patient", "p1", today=date(2024, 6, 1))
NAMES = ["cryptoHash", "dateShift", "encrypt", "generalize", "keep", "perturb", "redact", "substitute"]
PARAMS = ProfileParameters(
    date_shift_key=b"k",
    crypto_hash_key=b"k",
    keyring=Keyring(pseudonym_keys={"k1": bytes(32)}, current_pseudonym_key="k1"),
)
SETTINGS: dict[str, dict[str, Any]] = {
    "substitute": {"replaceWith": "x"},
    "perturb": {"span": 1},
    "generalize": {"cases": {"true": "1"}},
}


@pytest.mark.parametrize("mode", ["native", "compatibility"])
@pytest.mark.parametrize("value", ["Peter", 12, True, "2015-02-07"])
def test_keep_returns_keep(mode: str, value: object) -> None:
    method = method_factory("keep")({}, ProfileParameters(mode=mode))
    assert method.apply(Leaf(value, "string", "x", "Patient", "Patient"), CTX) is KEEP
    assert method.label is None


def test_keep_refuses_settings() -> None:
    with pytest.raises(MethodConfigError) as caught:
        method_factory("keep")({"span": 1}, ProfileParameters())
    assert caught.value.problems == ["keep: unknown setting 'span'"]


def test_unknown_mode_is_a_problem() -> None:
    with pytest.raises(MethodConfigError, match="unknown mode 'strict'"):
        method_factory("keep")({}, ProfileParameters(mode="strict"))


def test_builtins_are_registered_under_their_profile_names() -> None:
    assert sorted(BUILTIN_METHODS) == NAMES
    assert set(NAMES) <= set(known_methods())
    assert all(method_factory(name) is BUILTIN_METHODS[name] for name in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_builtins_implement_the_protocol(name: str) -> None:
    method = method_factory(name)(SETTINGS.get(name, {}), PARAMS)
    assert isinstance(method, MaskingMethod)
    assert method.name == name
    assert isinstance(method, ElementMethod) == (name == "substitute")


def test_keep_class_is_stateless() -> None:
    assert Keep().apply(Leaf("x", "string", "x", "X", "X"), CTX) is KEEP

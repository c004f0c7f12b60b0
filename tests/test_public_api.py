"""The public surface of each package: every name in ``__all__`` exists, once (ruff keeps it sorted)."""

from __future__ import annotations

import importlib

import pytest

PACKAGES = [
    "proxy",
    "proxy.auth",
    "proxy.fhir",
    "proxy.policy",
    "proxy.upstream",
    "proxy.audit",
    "proxy.rights",
    "proxy.limits",
    "consent",
    "masking",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_public_names_resolve(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert len(exported) == len(set(exported))
    for item in exported:
        assert getattr(module, item) is not None, f"{name}.{item}"

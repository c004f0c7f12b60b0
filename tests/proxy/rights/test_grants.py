"""Compiled grants and conditions: which roles grant what, under which condition (tables)."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.rights.grants import CompiledPolicy, Condition
from proxy.rights.model import parse_access_policy

POLICY = parse_access_policy(
    {
        "roles": {
            "clinician": {
                "isolation": "care-relationship",
                "permissions": [
                    {"resources": ["*"], "operations": ["read", "search"]},
                    {"resources": ["Observation"], "operations": ["create"]},
                ],
            },
            "lab": {
                "isolation": "none",
                "permissions": [
                    {
                        "resources": ["Observation"],
                        "operations": ["read", "search"],
                        "when": "category.coding.where(code = 'laboratory').exists()",
                    }
                ],
            },
            "exporter": {"permissions": [{"resources": ["*"], "operations": ["*"]}]},
            "approver": {"approves": ["*"]},
            "hr": {"administers": ["revocations"]},
        },
        "isolation": {"default": "none"},
    }
)


@pytest.mark.parametrize(
    ("roles", "resource_type", "operation", "expected"),
    [
        ({"clinician"}, "Observation", "read", [("clinician", False, True)]),
        ({"clinician"}, "Condition", "search", [("clinician", False, True)]),
        ({"clinician"}, "Condition", "create", []),
        ({"clinician"}, "Observation", "create", [("clinician", False, True)]),
        ({"clinician"}, "Observation", "delete", []),
        ({"lab"}, "Observation", "read", [("lab", True, False)]),
        ({"lab"}, "Condition", "read", []),
        ({"lab", "clinician"}, "Observation", "read", [("clinician", False, True), ("lab", True, False)]),
        ({"exporter"}, "Patient", "export", [("exporter", False, False)]),
        ({"exporter"}, "*", "$everything", [("exporter", False, False)]),
        ({"clinician"}, "*", "read", [("clinician", False, True)]),
        ({"approver"}, "Patient", "read", []),
        (set(), "Patient", "read", []),
    ],
)
def test_grants(roles: set[str], resource_type: str, operation: str, expected: list[Any]) -> None:
    grants = CompiledPolicy(POLICY).grants(frozenset(roles), resource_type, operation)
    assert [(g.role, g.condition is not None, g.isolated) for g in grants] == expected


def test_roles_for_approval_and_administration() -> None:
    compiled = CompiledPolicy(POLICY)
    assert compiled.approvers_of("bulk-export") == {"approver"}
    assert compiled.administrators("revocations") == {"hr"}
    assert compiled.known_roles(["clinician", "unknown"]) == {"clinician"}


LAB = {"resourceType": "Observation", "category": [{"coding": [{"code": "laboratory"}]}]}
VITALS = {"resourceType": "Observation", "category": [{"coding": [{"code": "vital-signs"}]}]}
PRINCIPAL = {"organizations": ["Organization/a"], "roles": ["lab"], "fhirUser": "Practitioner/p"}


@pytest.mark.parametrize(
    ("expression", "resource", "holds"),
    [
        ("category.coding.where(code = 'laboratory').exists()", LAB, True),
        ("category.coding.where(code = 'laboratory').exists()", VITALS, False),
        ("performer.reference = %principal.fhirUser",
         {**LAB, "performer": [{"reference": "Practitioner/p"}]}, True),
        ("performer.reference = %principal.fhirUser", LAB, False),  # empty: not true
        ("performer.reference in %principal.organizations",
         {**LAB, "performer": [{"reference": "Organization/a"}]}, True),
        ("performer.reference in %principal.organizations",
         {**LAB, "performer": [{"reference": "Organization/b"}]}, False),
        ("'lab' in %principal.roles", VITALS, True),
        ("category", LAB, False),  # not a boolean
        ("%unknown.exists()", LAB, False),  # an evaluation error counts as false
    ],
)  # fmt: skip
def test_conditions(expression: str, resource: dict[str, Any], holds: bool) -> None:
    assert Condition(expression).holds(resource, PRINCIPAL) is holds

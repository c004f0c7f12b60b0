"""Access-policy file validation: good files load, every problem is reported with its key path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from proxy.rights.model import (
    AccessPolicyError,
    access_policy_schema_text,
    load_access_policy,
    parse_access_policy,
    policy_from_settings,
)
from proxy.settings import ConfigError

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "access" / "hospital-policy.yaml"
SCHEMA = REPO / "proxy" / "rights" / "access-policy.schema.json"


def minimal(**extra: Any) -> dict[str, Any]:
    return {"roles": {"clinician": {"permissions": [{"resources": ["*"], "operations": ["read"]}]}}, **extra}


def test_example_policy_loads() -> None:
    policy = load_access_policy(EXAMPLE)
    assert policy.isolation_of("clinician") == "care-relationship"
    assert policy.isolation_of("lab-technician") == "none"
    assert policy.approvals.header == "x-fhirwall-approval"


def test_shipped_schema_is_current_and_accepts_the_example() -> None:
    assert SCHEMA.read_text() == access_policy_schema_text()
    jsonschema.validate(yaml.safe_load(EXAMPLE.read_text()), json.loads(SCHEMA.read_text()))


@pytest.mark.parametrize(
    ("document", "where", "message"),
    [
        ({"roles": {"x": {"permissions": [{"resources": ["Pateint"], "operations": ["read"]}]}}},
         "roles.x.permissions.0.resources", "unknown resource types ['Pateint']"),
        ({"roles": {"x": {"permissions": [{"resources": ["*"], "operations": ["erase"]}]}}},
         "roles.x.permissions.0.operations", "unknown operations ['erase']"),
        ({"roles": {"x": {"permissions": [{"resources": ["*"], "operations": ["read"], "when": "name.("}]}}},
         "roles.x.permissions.0.when", "not a valid FHIRPath condition"),
        ({"roles": {"x": {"permissions": [{"resources": ["*"], "operations": ["read"], "when": "nope()"}]}}},
         "roles.x.permissions.0.when", "unknown function nope"),
        ({"roles": {"Bad Name": {}}}, "roles", "role names must match"),
        (minimal(assignments={"clients": {"app": ["ghost"]}}), "(top level)", "unknown roles ['ghost']"),
        (minimal(roles={"a": {"approves": ["missing-rule"]}}), "(top level)", "unknown sensitive rules"),
        (minimal(sensitive={"r": {"operations": ["export"], "patients_over": 3}}), "sensitive.r",
         "exactly one of"),
        (minimal(sensitive={"r": {}}), "sensitive.r", "exactly one of"),
        (minimal(approvals={"default_minutes": 300, "max_minutes": 60}), "(top level)", "exceeds"),
        (minimal(isolation={"recent_days": -1}), "isolation.recent_days", "greater than or equal"),
        (minimal(rolez={}), "rolez", "Extra inputs are not permitted"),
        ({}, "roles", "Field required"),
    ],
)  # fmt: skip
def test_problems_are_reported_with_their_path(document: dict[str, Any], where: str, message: str) -> None:
    with pytest.raises(AccessPolicyError) as caught:
        parse_access_policy(document)
    assert any(path == where and message in text for path, text in caught.value.problems), (
        caught.value.problems
    )


def test_every_problem_is_reported_at_once() -> None:
    document = {
        "roles": {
            "a": {"permissions": [{"resources": ["Nope"], "operations": ["read"]}]},
            "b": {"permissions": [{"resources": ["*"], "operations": ["zap"]}]},
        },
        "isolation": {"cache_seconds": 0},
    }
    with pytest.raises(AccessPolicyError) as caught:
        parse_access_policy(document)
    assert len(caught.value.problems) == 3


def test_start_up_reports_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("roles:\n  x:\n    permissions:\n      - {resources: [Nope], operations: [read]}\n")
    with pytest.raises(ConfigError) as caught:
        policy_from_settings(path)
    [(where, message)] = caught.value.problems
    assert where.startswith("access.policy_file (")
    assert where.endswith("roles.x.permissions.0.resources")
    assert "Nope" in message
    path.write_text("roles: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        policy_from_settings(path)

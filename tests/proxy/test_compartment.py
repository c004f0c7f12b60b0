"""Patient compartment membership for every R4 type, and the consistency of the shipped FHIR tables."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import orjson
import pytest

from proxy.fhir.compartment import (
    PATIENT_COMPARTMENT_TYPES,
    compartment_params,
    compartment_search_params,
    in_patient_compartment,
    patient_id_of_reference,
    patient_references,
)
from proxy.fhir.resource_types import R4_RESOURCE_TYPES
from proxy.fhir.search_params import search_param


def _data(name: str) -> Any:
    return orjson.loads((files("proxy.fhir") / "data" / name).read_bytes())


SEARCH_TABLE: dict[str, dict[str, Any]] = _data("r4-search-params.json")
COMPARTMENT: dict[str, list[dict[str, Any]]] = _data("r4-patient-compartment.json")

MEMBER_CASES = [
    pytest.param(resource_type, entry["param"], entry["paths"][0], id=f"{resource_type}.{entry['param']}")
    for resource_type, entries in sorted(COMPARTMENT.items())
    for entry in entries
]
NEVER_TYPES = sorted(name for name, entries in COMPARTMENT.items() if not entries)


def _resource_with(
    resource_type: str, path: str, reference: dict[str, Any], as_list: bool = False
) -> dict[str, Any]:
    """A minimal resource with ``reference`` at ``path`` (``a[key=value].b`` filters become fields)."""
    resource: dict[str, Any] = {"resourceType": resource_type, "id": "r1"}
    node = resource
    steps = path.split(".")
    for position, step in enumerate(steps):
        name, _, condition = step.partition("[")
        child: dict[str, Any] = dict(reference) if position == len(steps) - 1 else {}
        if condition:
            key, _, value = condition.rstrip("]").partition("=")
            child[key] = value
        node[name] = [child] if as_list else child
        node = child
    return resource


# --- the shipped tables ---------------------------------------------------------------------------------


def test_search_table_covers_every_r4_type() -> None:
    assert set(SEARCH_TABLE) == R4_RESOURCE_TYPES | {"Resource", "DomainResource"}
    for name in ("_id", "_lastUpdated", "_tag", "_security", "_profile", "_source"):
        assert search_param("Observation", name) is not None


def test_compartment_lists_every_stored_type() -> None:
    assert set(COMPARTMENT) == R4_RESOURCE_TYPES - {"Parameters"}


@pytest.mark.parametrize(("resource_type", "param", "path"), MEMBER_CASES)
def test_every_compartment_param_is_a_search_param(resource_type: str, param: str, path: str) -> None:
    definition = search_param(resource_type, param)
    assert definition is not None
    assert definition.type == "reference"
    assert not definition.complex
    assert "Patient" in definition.targets
    assert path in definition.paths


def test_spot_checks_against_the_specification() -> None:
    observation = search_param("Observation", "date")
    assert observation is not None
    assert observation.paths == (
        "effectiveDateTime",
        "effectivePeriod",
        "effectiveTiming",
        "effectiveInstant",
    )
    patient = search_param("Condition", "patient")
    assert patient is not None
    assert patient.paths == ("subject",)
    assert patient.targets == ("Patient",)
    email = search_param("Patient", "email")
    assert email is not None
    assert email.paths == ("telecom[system=email]",)
    assert compartment_params("Encounter") == ("patient",)
    assert compartment_params("Task") == ()
    assert compartment_params("AuditEvent") == ("patient",)


# --- membership -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("resource_type", "param", "path"), MEMBER_CASES)
def test_reference_at_param_makes_a_member(resource_type: str, param: str, path: str) -> None:
    for as_list in (False, True):
        resource = _resource_with(resource_type, path, {"reference": "Patient/123"}, as_list)
        assert in_patient_compartment(resource, "123"), param
        assert not in_patient_compartment(resource, "12")
        assert not in_patient_compartment(resource, "1234")
        assert "456" not in patient_references(resource)


@pytest.mark.parametrize(("resource_type", "param", "path"), MEMBER_CASES)
def test_reference_to_another_patient_is_not_a_member(resource_type: str, param: str, path: str) -> None:
    resource = _resource_with(resource_type, path, {"reference": "Patient/456"})
    assert not in_patient_compartment(resource, "123")
    assert in_patient_compartment(resource, "456")


ABSOLUTE_AND_VERSIONED = (
    "https://fhir.example.org/base/Patient/123",
    "http://other.example/fhir/r4/Patient/123/_history/7",
    "Patient/123/_history/2",
)
NEVER_COUNTED: tuple[dict[str, Any], ...] = (
    {"reference": "#p1"},
    {"reference": "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0"},
    {"identifier": {"system": "urn:oid:1.2.3", "value": "123"}},
    {"reference": "Practitioner/123"},
    {"reference": "Group/123"},
    {"reference": "RelatedPerson/123"},
    {"reference": "Patient/12 3"},
    {"reference": "Patient/"},
    {"reference": "other/Patient/123"},
    {"display": "Patient/123"},
)


@pytest.mark.parametrize(("resource_type", "param", "path"), MEMBER_CASES)
def test_absolute_and_versioned_references(resource_type: str, param: str, path: str) -> None:
    for reference in ABSOLUTE_AND_VERSIONED:
        resource = _resource_with(resource_type, path, {"reference": reference})
        assert patient_references(resource) >= {"123"}, reference


@pytest.mark.parametrize(("resource_type", "param", "path"), MEMBER_CASES)
def test_references_that_never_count(resource_type: str, param: str, path: str) -> None:
    own = {"r1"} if resource_type == "Patient" else set()
    for reference in NEVER_COUNTED:
        resource = _resource_with(resource_type, path, reference)
        assert patient_references(resource) == own, reference


@pytest.mark.parametrize("resource_type", NEVER_TYPES)
def test_types_without_params_are_never_members(resource_type: str) -> None:
    resource: dict[str, Any] = {"resourceType": resource_type, "id": "123"}
    for name in ("subject", "patient", "beneficiary", "for", "focus", "owner", "author"):
        resource[name] = {"reference": "Patient/123"}
    assert resource_type not in PATIENT_COMPARTMENT_TYPES
    assert patient_references(resource) == set()
    assert compartment_search_params(resource_type) == ()


def test_patient_is_in_its_own_compartment_and_its_links() -> None:
    patient = {"resourceType": "Patient", "id": "123", "link": [{"other": {"reference": "Patient/9"}}]}
    assert patient_references(patient) == {"123", "9"}
    assert not in_patient_compartment(patient, "12")
    assert not in_patient_compartment({"resourceType": "Patient", "id": "../123"}, "../123")
    related = {"resourceType": "Patient", "id": "1", "link": [{"other": {"reference": "RelatedPerson/123"}}]}
    assert patient_references(related) == {"1"}


def test_multi_target_params_count_only_patient_references() -> None:
    observation = {
        "resourceType": "Observation",
        "subject": {"reference": "Group/7"},
        "performer": [{"reference": "Practitioner/123"}, {"reference": "Patient/55"}],
    }
    assert patient_references(observation) == {"55"}


def test_parameters_outside_the_definition_do_not_count() -> None:
    observation = {"resourceType": "Observation", "focus": [{"reference": "Patient/123"}]}
    assert patient_references(observation) == set()
    assert patient_references({"subject": {"reference": "Patient/1"}}) == set()
    assert patient_references({"resourceType": "NotAType", "subject": {"reference": "Patient/1"}}) == set()


@pytest.mark.parametrize(
    ("resource_type", "expected"),
    [
        ("Observation", ("subject", "performer")),
        ("Encounter", ("patient",)),
        ("Condition", ("patient", "asserter")),
        ("Patient", ("link",)),
        ("Medication", ()),
        ("Unknown", ()),
    ],
)
def test_compartment_search_params(resource_type: str, expected: tuple[str, ...]) -> None:
    assert compartment_search_params(resource_type) == expected


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("Patient/123", "123"),
        ("Patient/a-b.c", "a-b.c"),
        ("https://x.example/fhir/Patient/123", "123"),
        ("https://x.example/fhir/Patient/123/_history/4", "123"),
        ("Patient/123/_history/4", "123"),
        ("Patient/123/extra", None),
        ("Patient", None),
        ("Patient/..", None),
        ("Patient/123?x=1", None),
        ("Patient/123#x", None),
        ("#123", None),
        ("urn:uuid:123", None),
        ("Practitioner/123", None),
        ("https://x.example/Practitioner/Patient", None),
    ],
)
def test_patient_id_of_reference(reference: str, expected: str | None) -> None:
    assert patient_id_of_reference(reference) == expected

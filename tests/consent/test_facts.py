"""What the consent rules look at in a resource: type and id, codes, labels, data date, references, authors.

Spec (consent contract): ``dataPeriod`` selects data "by authored / last-updated date"; ``data.meaning`` is
instance | related | dependents | authoredby; labels come from ``meta.security``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from consent.coding import Coding
from consent.dates import Period, instant_range
from consent.facts import facts_of

LOINC = "http://loinc.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


def test_identity_codes_and_labels() -> None:
    facts = facts_of(
        {
            "resourceType": "Observation",
            "id": "o-1",
            "code": {"coding": [{"system": LOINC, "code": "8867-4"}], "text": "Heart rate"},
            "category": [{"coding": [{"system": CATEGORY, "code": "vital-signs"}]}],
            "valueCodeableConcept": {"coding": [{"system": LOINC, "code": "LA-not-counted"}]},
            "component": [{"code": {"coding": [{"system": LOINC, "code": "not-counted"}]}}],
            "meta": {
                "security": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}
                ]
            },
        }
    )
    assert (facts.resource_type, facts.id, facts.reference) == ("Observation", "o-1", "Observation/o-1")
    assert facts.codes == {Coding(LOINC, "8867-4"), Coding(CATEGORY, "vital-signs")}
    assert facts.labels == {Coding("http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "R")}


# Judgement call, documented in consent.facts: code, category, type, class, vaccineCode,
# medicationCodeableConcept — Coding or CodeableConcept values only.
CODE_ELEMENTS = [
    (
        {"resourceType": "Encounter", "class": {"system": "urn:v3-ActCode", "code": "AMB"}},
        {Coding("urn:v3-ActCode", "AMB")},
    ),
    (
        {"resourceType": "DocumentReference", "type": {"coding": [{"system": LOINC, "code": "34133-9"}]}},
        {Coding(LOINC, "34133-9")},
    ),
    (
        {"resourceType": "Immunization", "vaccineCode": {"coding": [{"system": "urn:cvx", "code": "207"}]}},
        {Coding("urn:cvx", "207")},
    ),
    (
        {
            "resourceType": "MedicationRequest",
            "medicationCodeableConcept": {"coding": [{"system": "urn:rx", "code": "1"}]},
        },
        {Coding("urn:rx", "1")},
    ),
    ({"resourceType": "Bundle", "type": "searchset"}, set()),
    ({"resourceType": "Patient", "id": "p"}, set()),
]


@pytest.mark.parametrize(("resource", "codes"), CODE_ELEMENTS)
def test_code_elements(resource: dict[str, Any], codes: set[Coding]) -> None:
    assert facts_of(resource).codes == codes


# Rule: data selected by their date — the clinically relevant one first, meta.lastUpdated last.
DATES = [
    ({"effectiveDateTime": "2024-03-05", "meta": {"lastUpdated": "2025-01-01T00:00:00Z"}}, "2024-03-05"),
    ({"effectivePeriod": {"start": "2024-03"}}, "2024-03"),
    ({"effectivePeriod": {"end": "2024-03"}, "issued": "2024-04-01T00:00:00Z"}, "2024-04-01T00:00:00Z"),
    ({"onsetDateTime": "2019"}, "2019"),
    ({"authoredOn": "2024-01-02"}, "2024-01-02"),
    ({"recordedDate": "2024-01-03"}, "2024-01-03"),
    ({"date": "2024-01-04T10:00:00+01:00"}, "2024-01-04T10:00:00+01:00"),
    ({"period": {"start": "2024-01-05"}}, "2024-01-05"),
    ({"occurrenceDateTime": "2024-01-06"}, "2024-01-06"),
    ({"performedDateTime": "2024-01-07"}, "2024-01-07"),
    ({"performedPeriod": {"start": "2024-01-08"}}, "2024-01-08"),
    ({"meta": {"lastUpdated": "2025-01-01T00:00:00Z"}}, "2025-01-01T00:00:00Z"),
    ({"onsetDateTime": "2019", "recordedDate": "2024-01-03"}, "2019"),
    ({}, None),
    ({"effectiveDateTime": "last week", "meta": {"lastUpdated": "2025-01-01T00:00:00Z"}}, None),
]


@pytest.mark.parametrize(("fields", "date"), DATES)
def test_data_date(fields: dict[str, Any], date: str | None) -> None:
    facts = facts_of({"resourceType": "Observation", **fields})
    assert facts.data_date == (None if date is None else instant_range(date))


def test_data_date_keeps_its_precision() -> None:
    facts = facts_of({"resourceType": "Condition", "onsetDateTime": "2024-02"})
    assert facts.data_date == Period(datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC))


def test_references_and_authors() -> None:
    facts = facts_of(
        {
            "resourceType": "Procedure",
            "id": "pr1",
            "subject": {"reference": "Patient/p1"},
            "encounter": {"reference": "https://ehr.example/fhir/Encounter/e1/_history/2"},
            "recorder": {"reference": "Practitioner/rec"},
            "asserter": {"reference": "PractitionerRole/ass"},
            "performer": [{"actor": {"reference": "Practitioner/surgeon"}}, {"actor": {"display": "nobody"}}],
            "reasonReference": [
                {"reference": "Condition/c1"},
                {"reference": "#contained"},
                {"reference": "urn:uuid:1"},
            ],
            "note": [{"authorReference": {"reference": "Practitioner/noter"}}],
            "contained": [
                {"resourceType": "Condition", "id": "contained", "subject": {"reference": "Patient/p1"}}
            ],
        }
    )
    assert facts.references == {
        "Patient/p1",
        "Encounter/e1",
        "Practitioner/rec",
        "PractitionerRole/ass",
        "Practitioner/surgeon",
        "Condition/c1",
        "Practitioner/noter",
    }
    assert facts.authors == {"Practitioner/rec", "PractitionerRole/ass", "Practitioner/surgeon"}


AUTHORS = [
    (
        {
            "resourceType": "Composition",
            "author": [{"reference": "Practitioner/a"}, {"reference": "Device/d"}],
        },
        {"Practitioner/a", "Device/d"},
    ),
    ({"resourceType": "MedicationRequest", "requester": {"reference": "Practitioner/r"}}, {"Practitioner/r"}),
    ({"resourceType": "Observation", "performer": [{"reference": "Organization/lab"}]}, {"Organization/lab"}),
    ({"resourceType": "Observation", "subject": {"reference": "Patient/p"}}, set()),
]


@pytest.mark.parametrize(("resource", "authors"), AUTHORS)
def test_author_elements(resource: dict[str, Any], authors: set[str]) -> None:
    assert facts_of(resource).authors == authors


def test_deeply_nested_resources_do_not_exhaust_the_stack() -> None:
    node: dict[str, Any] = {"reference": "Practitioner/deep"}
    for _ in range(5000):
        node = {"extension": [node]}
    assert "Practitioner/deep" in facts_of({"resourceType": "Basic", **node}).references


@pytest.mark.parametrize(
    "resource",
    [{}, {"resourceType": 3}, {"resourceType": "not a type"}, []],
    ids=["none", "number", "shape", "list"],
)
def test_not_a_resource(resource: Any) -> None:
    with pytest.raises(ValueError, match="resourceType"):
        facts_of(resource)


def test_invalid_ids_are_dropped() -> None:
    facts = facts_of({"resourceType": "Observation", "id": "../x"})
    assert (facts.id, facts.reference) == (None, None)

"""Search-criteria matching (granular SMART scopes) and the element path walker."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.fhir.matching import UnsupportedCriterionError, matches, matches_parsed, parse_criteria
from proxy.fhir.search_params import search_param, values_at

OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
LOINC = "http://loinc.org"

OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "obs1",
    "meta": {
        "lastUpdated": "2021-05-16T12:00:00.123Z",
        "tag": [{"system": "urn:tags", "code": "t1"}],
        "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}],
        "profile": ["http://example.org/StructureDefinition/lab"],
    },
    "status": "final",
    "category": [{"coding": [{"system": OBS_CATEGORY, "code": "laboratory"}]}],
    "code": {"coding": [{"system": LOINC, "code": "718-7", "display": "Hemoglobin"}], "text": "Hb"},
    "subject": {"reference": "Patient/123"},
    "performer": [{"reference": "Practitioner/9"}, {"reference": "https://other.example/fhir/Patient/77"}],
    "effectiveDateTime": "2020-01-15T10:00:00Z",
    "identifier": [{"system": "urn:sys", "value": "A,1"}, {"value": "local-7"}],
    "valueQuantity": {"value": 13.2, "unit": "g/dL"},
}

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "123",
    "active": True,
    "gender": "female",
    "birthDate": "1990-05-17",
    "name": [{"family": "Müller-Lüdenscheidt", "given": ["Zoë", "Anna"], "prefix": ["Dr."]}],
    "address": [{"line": ["1 Rua Augusta"], "city": "São Paulo", "postalCode": "01305-000", "country": "BR"}],
    "telecom": [{"system": "phone", "value": "+1 555 0100"}, {"system": "email", "value": "zoe@example.org"}],
    "generalPractitioner": [{"reference": "#gp"}],
}

ENCOUNTER: dict[str, Any] = {
    "resourceType": "Encounter",
    "id": "e1",
    "status": "finished",
    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
    "subject": {"reference": "Patient/123"},
    "period": {"start": "2020-01-01", "end": "2020-01-10"},
}

OPEN_ENCOUNTER: dict[str, Any] = {**ENCOUNTER, "period": {"start": "2020-01-01"}}

TRUE_CASES = [
    # token
    (OBSERVATION, "category", f"{OBS_CATEGORY}|laboratory"),
    (OBSERVATION, "category", "laboratory"),
    (OBSERVATION, "category", f"{OBS_CATEGORY}|"),
    (OBSERVATION, "code", f"{LOINC}|718-7"),
    (OBSERVATION, "status", "final"),
    (OBSERVATION, "status", "amended,final"),
    (OBSERVATION, "identifier", "urn:sys|A\\,1"),
    (OBSERVATION, "identifier", "A\\,1"),
    (OBSERVATION, "identifier", "|local-7"),
    (OBSERVATION, "_id", "obs1"),
    (OBSERVATION, "_tag", "urn:tags|t1"),
    (OBSERVATION, "_security", "http://terminology.hl7.org/CodeSystem/v3-Confidentiality|R"),
    (PATIENT, "active", "true"),
    (PATIENT, "gender", "female"),
    (PATIENT, "phone", "+1 555 0100"),
    (PATIENT, "email", "zoe@example.org"),
    (PATIENT, "telecom", "zoe@example.org"),
    (ENCOUNTER, "class", "http://terminology.hl7.org/CodeSystem/v3-ActCode|AMB"),
    # reference
    (OBSERVATION, "subject", "Patient/123"),
    (OBSERVATION, "patient", "123"),
    (OBSERVATION, "patient", "Patient/123"),
    (OBSERVATION, "subject", "https://fhir.example.org/base/Patient/123"),
    (OBSERVATION, "performer", "Patient/77"),
    (OBSERVATION, "performer", "Practitioner/9"),
    (OBSERVATION, "performer", "Practitioner/1,Practitioner/9"),
    (ENCOUNTER, "patient", "123"),
    # string
    (PATIENT, "family", "muller"),
    (PATIENT, "family", "MÜLLER-lüd"),
    (PATIENT, "given", "zoe"),
    (PATIENT, "given", "ANNA"),
    (PATIENT, "name", "dr"),
    (PATIENT, "name", "xyz,zo"),
    (PATIENT, "address-city", "sao"),
    (PATIENT, "address", "1 rua"),
    (PATIENT, "address-postalcode", "01305"),
    # uri
    (OBSERVATION, "_profile", "http://example.org/StructureDefinition/lab"),
    # date: a dateTime in the middle of January 2020
    (OBSERVATION, "date", "2020"),
    (OBSERVATION, "date", "2020-01"),
    (OBSERVATION, "date", "eq2020-01"),
    (OBSERVATION, "date", "ge2020-01-01"),
    (OBSERVATION, "date", "gt2019"),
    (OBSERVATION, "date", "le2020-01-20"),
    (OBSERVATION, "date", "lt2020-02"),
    (OBSERVATION, "_lastUpdated", "ge2021-05"),
    # date: a date
    (PATIENT, "birthdate", "1990"),
    (PATIENT, "birthdate", "1990-05"),
    (PATIENT, "birthdate", "1990-05-17"),
    (PATIENT, "birthdate", "ge1990-05-17"),
    (PATIENT, "birthdate", "le1990-05-17"),
    (PATIENT, "birthdate", "gt1990-05-16"),
    (PATIENT, "birthdate", "lt1990-05-18"),
    # date: a Period of dates
    (ENCOUNTER, "date", "2020-01"),
    (ENCOUNTER, "date", "ge2020-01-05"),
    (ENCOUNTER, "date", "le2020-01-05"),
    (ENCOUNTER, "date", "gt2019-12-31"),
    (OPEN_ENCOUNTER, "date", "gt2030"),
    (OPEN_ENCOUNTER, "date", "ge2020-01-01"),
]

FALSE_CASES = [
    (OBSERVATION, "category", f"{OBS_CATEGORY}|vital-signs"),
    (OBSERVATION, "category", "http://other.example|laboratory"),
    (OBSERVATION, "category", "|laboratory"),
    (OBSERVATION, "status", "amended"),
    (OBSERVATION, "identifier", "urn:sys|local-7"),
    (OBSERVATION, "identifier", "|A\\,1"),
    (OBSERVATION, "_id", "obs"),
    (OBSERVATION, "_tag", "urn:tags|t2"),
    (PATIENT, "active", "false"),
    (PATIENT, "email", "+1 555 0100"),
    (PATIENT, "gender", "Female"),
    (OBSERVATION, "subject", "Patient/12"),
    (OBSERVATION, "subject", "Patient/1234"),
    (OBSERVATION, "subject", "Group/123"),
    (OBSERVATION, "patient", "77"),
    (OBSERVATION, "performer", "Practitioner/90"),
    (PATIENT, "general-practitioner", "Practitioner/gp"),
    (PATIENT, "family", "ler"),
    (PATIENT, "address", "rua"),
    (PATIENT, "given", "zoey"),
    (OBSERVATION, "_profile", "http://example.org/StructureDefinition"),
    (OBSERVATION, "date", "2019"),
    (OBSERVATION, "date", "2020-02"),
    (OBSERVATION, "date", "gt2020"),
    (OBSERVATION, "date", "lt2020-01-10"),
    (OBSERVATION, "date", "ge2020-01-20"),
    (PATIENT, "birthdate", "1990-05-18"),
    (PATIENT, "birthdate", "gt1990-05-17"),
    (PATIENT, "birthdate", "lt1990-05-17"),
    (ENCOUNTER, "date", "2020-01-05"),
    (ENCOUNTER, "date", "gt2020-01-10"),
    (ENCOUNTER, "date", "lt2020-01-01"),
    (OPEN_ENCOUNTER, "date", "2020"),
    (OPEN_ENCOUNTER, "date", "lt2020-01-01"),
]

UNSUPPORTED_CASES = [
    ("Observation", "category:not", "laboratory"),
    ("Observation", "code:text", "Hb"),
    ("Observation", "subject:missing", "true"),
    ("Observation", "subject:Patient", "123"),
    ("Observation", "subject.name", "x"),
    ("Observation", "patient.identifier", "urn:sys|1"),
    ("Patient", "_has:Observation:patient:code", "718-7"),
    ("Observation", "code-value-quantity", "718-7$gt5"),
    ("Observation", "value-quantity", "5"),
    ("RiskAssessment", "probability", "0.5"),
    ("Location", "near", "1|2|3"),
    ("Patient", "deceased", "true"),
    ("Patient", "phonetic", "smith"),
    ("Organization", "phonetic", "acme"),
    ("Observation", "_content", "hb"),
    ("Observation", "_text", "hb"),
    ("Observation", "_filter", "status eq final"),
    ("Observation", "_count", "10"),
    ("Observation", "no-such-param", "x"),
    ("NotAType", "status", "final"),
    ("Observation", "category", ""),
    ("Observation", "category", "laboratory,"),
    ("Observation", "category", "a|b|c"),
    ("Observation", "category", "|"),
    ("Observation", "status", "bad\\escape"),
    ("Observation", "subject", "123"),
    ("Observation", "patient", "Practitioner/9"),
    ("Observation", "subject", "Patient/123/_history/2"),
    ("Observation", "subject", "Patient/12 3"),
    ("Observation", "subject", "patient/123"),
    ("Observation", "date", "ne2020"),
    ("Observation", "date", "sa2020"),
    ("Observation", "date", "ap2020"),
    ("Observation", "date", "2020-01-02T10:00:00Z"),
    ("Observation", "date", "20"),
    ("Observation", "date", "2020-13"),
]

DATA_DEPENDENT_UNSUPPORTED = [
    (OBSERVATION, "status", "http://hl7.org/fhir/observation-status|final"),
    (PATIENT, "gender", "|female"),
    (PATIENT, "phone", "phone|+1 555 0100"),
    (OBSERVATION, "date", "2020-01-15"),  # a zoned dateTime against a day: depends on the zone
    (OBSERVATION, "date", "ge2020-01-15"),
    ({**OBSERVATION, "effectiveDateTime": "2020-01-31T20:00:00Z"}, "date", "2020-01"),
    ({**OBSERVATION, "effectiveDateTime": None, "effectiveTiming": {"event": ["2020"]}}, "date", "2020"),
    ({**OBSERVATION, "effectiveDateTime": "last tuesday"}, "date", "2020"),
    ({**OBSERVATION, "subject": "Patient/123"}, "subject", "Patient/123"),
    ({**PATIENT, "name": [{"use": "official", "period": {}, "family": 1}]}, "family", "x"),
    ({**PATIENT, "name": [{"unexpected": "shape"}]}, "name", "x"),
]


@pytest.mark.parametrize(("resource", "name", "value"), TRUE_CASES)
def test_matches(resource: dict[str, Any], name: str, value: str) -> None:
    assert matches(resource, resource["resourceType"], [(name, value)])


@pytest.mark.parametrize(("resource", "name", "value"), FALSE_CASES)
def test_does_not_match(resource: dict[str, Any], name: str, value: str) -> None:
    assert not matches(resource, resource["resourceType"], [(name, value)])


@pytest.mark.parametrize(("resource_type", "name", "value"), UNSUPPORTED_CASES)
def test_unsupported_criteria_raise(resource_type: str, name: str, value: str) -> None:
    with pytest.raises(UnsupportedCriterionError):
        parse_criteria(resource_type, [(name, value)])
    with pytest.raises(UnsupportedCriterionError):
        matches({"resourceType": resource_type}, resource_type, [(name, value)])


@pytest.mark.parametrize(("resource", "name", "value"), DATA_DEPENDENT_UNSUPPORTED)
def test_values_that_cannot_be_evaluated_raise(resource: dict[str, Any], name: str, value: str) -> None:
    with pytest.raises(UnsupportedCriterionError):
        matches(resource, resource["resourceType"], [(name, value)])


def test_and_across_criteria() -> None:
    lab = [("category", f"{OBS_CATEGORY}|laboratory"), ("patient", "123")]
    assert matches(OBSERVATION, "Observation", lab)
    assert not matches(OBSERVATION, "Observation", [*lab, ("status", "amended")])
    assert matches(OBSERVATION, "Observation", [*lab, ("status", "final"), ("status", "final,amended")])
    assert not matches(OBSERVATION, "Observation", [*lab, ("status", "final"), ("patient", "77")])
    assert matches(OBSERVATION, "Observation", [])


def test_a_false_criterion_decides_even_when_another_cannot_be_evaluated() -> None:
    criteria = [("status", "amended"), ("gender", "female")]
    assert not matches({**OBSERVATION, "gender": "female"}, "Observation", criteria[:1])
    with pytest.raises(UnsupportedCriterionError):
        matches(OBSERVATION, "Observation", [("status", "final"), ("date", "2020-01-15")])
    assert not matches(OBSERVATION, "Observation", [("status", "amended"), ("date", "2020-01-15")])


def test_a_matching_value_decides_even_when_another_cannot_be_evaluated() -> None:
    odd = {**OBSERVATION, "performer": ["Practitioner/1", {"reference": "Practitioner/9"}]}
    assert matches(odd, "Observation", [("performer", "Practitioner/9")])
    with pytest.raises(UnsupportedCriterionError):
        matches(odd, "Observation", [("performer", "Practitioner/2")])


def test_wrong_resource_type_never_matches() -> None:
    assert not matches(PATIENT, "Observation", [("status", "final")])
    assert not matches({**OBSERVATION, "resourceType": "Condition"}, "Observation", [("status", "final")])


def test_contained_urn_and_logical_references_never_match() -> None:
    for subject in ({"reference": "#p1"}, {"reference": "urn:uuid:123"}, {"identifier": {"value": "123"}}):
        assert not matches({**OBSERVATION, "subject": subject}, "Observation", [("subject", "Patient/123")])


def test_granular_smart_scope_query() -> None:
    scope = parse_criteria("Observation", [("category", f"{OBS_CATEGORY}|laboratory")])
    vital = {**OBSERVATION, "category": [{"coding": [{"system": OBS_CATEGORY, "code": "vital-signs"}]}]}
    assert all(criterion.holds(OBSERVATION) for criterion in scope)
    assert not all(criterion.holds(vital) for criterion in scope)
    assert not matches({**OBSERVATION, "category": []}, "Observation", [("category", "laboratory")])
    assert matches_parsed(OBSERVATION, "Observation", scope)
    assert not matches_parsed(vital, "Observation", scope)
    assert not matches_parsed(PATIENT, "Observation", scope)


# --- values_at and definitions --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        (("subject",), [{"reference": "Patient/123"}]),
        (("name.given",), ["Zoë", "Anna", "Ann"]),
        (("name.family", "gender"), ["Müller-Lüdenscheidt", "female"]),
        (("telecom[system=email]",), [{"system": "email", "value": "zoe@example.org"}]),
        (("telecom[system=fax]",), []),
        (("contact.name.family",), ["Doe"]),
        (("nothing.here",), []),
        (("gender.deeper",), []),
    ],
)
def test_values_at(paths: tuple[str, ...], expected: list[Any]) -> None:
    patient = {
        **PATIENT,
        "subject": {"reference": "Patient/123"},
        "name": [*PATIENT["name"], {"given": ["Ann"]}],
        "contact": [{"name": {"family": "Doe"}}, {"relationship": []}],
    }
    assert values_at(patient, paths) == expected


def test_search_param_lookup() -> None:
    subject = search_param("Observation", "subject")
    assert subject is not None
    assert subject.type == "reference"
    assert "Patient" in subject.targets
    last_updated = search_param("Patient", "_lastUpdated")
    assert last_updated is not None
    assert last_updated.paths == ("meta.lastUpdated",)
    assert search_param("Observation", "nope") is None
    assert search_param("NotAType", "_id") is None
    text = search_param("Observation", "_text")
    assert text is not None
    assert text.complex
    assert search_param("Bundle", "_text") is None
    focus = search_param("Observation", "focus")
    assert focus is not None
    assert "Patient" in focus.targets
    assert len(focus.targets) > 100

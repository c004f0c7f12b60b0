"""Parsing Consent resources (R4 and R5) into the directive tree; FHIR date precision; malformed input.

Spec (consent contract): R4 — the root ``provision.type`` states the base rule and nested provisions their own
``type``; R5 — ``decision`` replaces the root ``provision.type``, nested ``provision`` has no ``type`` and
negates its parent level, ``patient`` -> ``subject``, ``dateTime`` -> ``date``, new ``Consent.period`` and
``grantee``, ``class`` split into ``resourceType`` and ``documentType``. A Consent the proxy cannot
understand must raise (the caller fails closed), never be half-read.
"""

from __future__ import annotations

import contextlib
import copy
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consent.coding import Coding
from consent.dates import FhirDateError, Period, instant_range, parse_period
from consent.labels import ACT_CODE_SYSTEM, CONFIDENTIALITY_SYSTEM
from consent.model import (
    MAX_DEPTH,
    RESOURCE_TYPES_SYSTEM,
    ActorRule,
    ConsentParseError,
    DataReference,
    Provision,
    parse_consent,
    reads_resource,
    resource_independent,
)

LOINC = "http://loinc.org"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
SCOPE = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]
}


def ref(reference: str) -> dict[str, str]:
    return {"reference": reference}


def r4(provision: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Consent",
        "id": "c4",
        "status": "active",
        "scope": SCOPE,
        "patient": ref("Patient/p1"),
        "dateTime": "2024-05-01T10:00:00Z",
    }
    if provision is not None:
        resource["provision"] = provision
    return resource | fields


def r5(
    decision: str | None = "deny", provisions: list[dict[str, Any]] | None = None, **fields: Any
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Consent",
        "id": "c5",
        "status": "active",
        "subject": ref("Patient/p1"),
        "date": "2024-05-01",
    }
    if decision is not None:
        resource["decision"] = decision
    if provisions is not None:
        resource["provision"] = provisions
    return resource | fields


# --- R4 and R5 spellings of the same directive ----------------------------------------------------------

ELEMENTS = {
    "period": {"start": "2024-01-01", "end": "2025"},
    "actor": [{"role": {"coding": [{"code": "PRCP"}]}, "reference": ref("Practitioner/dr1")}],
    "action": [
        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "access"}]}
    ],
    "securityLabel": [{"system": ACT_CODE_SYSTEM, "code": "PSY"}],
    "purpose": [{"system": ACT_REASON, "code": "TREAT"}],
    "code": [{"coding": [{"system": LOINC, "code": "8867-4"}]}],
    "dataPeriod": {"start": "2020-01-01T00:00:00Z"},
    "data": [{"meaning": "related", "reference": ref("Encounter/e1")}],
}


def test_r4_and_r5_spellings_of_one_consent_parse_to_the_same_tree() -> None:
    """Deny everything, except Dr 1 for treatment of PSY data — with a deny for one encounter inside that."""
    innermost_r4 = {"type": "deny", "data": [{"meaning": "instance", "reference": ref("Encounter/secret")}]}
    innermost_r5 = {"data": [{"meaning": "instance", "reference": ref("Encounter/secret")}]}
    r4_tree = {
        "type": "deny",
        "provision": [
            {
                "type": "permit",
                **ELEMENTS,
                "class": [{"system": RESOURCE_TYPES_SYSTEM, "code": "Observation"}],
                "provision": [innermost_r4],
            }
        ],
    }
    r5_tree = [
        {
            **ELEMENTS,
            "resourceType": [{"system": "http://hl7.org/fhir/fhir-types", "code": "Observation"}],
            "provision": [innermost_r5],
        }
    ]
    four, five = parse_consent(r4(r4_tree)), parse_consent(r5("deny", r5_tree))
    assert four.root == five.root
    assert (four.version, five.version) == ("R4", "R5")
    assert four.patient == five.patient == "p1"
    assert four.root is not None
    exception = four.root.children[0]
    assert exception == Provision(
        kind="permit",
        period=Period(datetime(2024, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC)),
        actors=(ActorRule((Coding("", "PRCP"),), "Practitioner/dr1"),),
        actions=("access",),
        security_labels=(Coding(ACT_CODE_SYSTEM, "PSY"),),
        purposes=("TREAT",),
        classes=(Coding(RESOURCE_TYPES_SYSTEM, "Observation"),),
        codes=(Coding(LOINC, "8867-4"),),
        data_period=Period(datetime(2020, 1, 1, tzinfo=UTC), None),
        data=(DataReference("related", "Encounter/e1"),),
        children=(Provision(kind="deny", data=(DataReference("instance", "Encounter/secret"),)),),
    )


def test_r5_grantee_becomes_the_root_actors() -> None:
    five = parse_consent(r5("permit", grantee=[ref("Organization/o1"), ref("https://h/fhir/CareTeam/t1")]))
    four = parse_consent(
        r4(
            {
                "type": "permit",
                "actor": [{"reference": ref("Organization/o1")}, {"reference": ref("CareTeam/t1")}],
            }
        )
    )
    assert (
        five.root
        == four.root
        == Provision(kind="permit", actors=(ActorRule((), "Organization/o1"), ActorRule((), "CareTeam/t1")))
    )


# Rule: R5 nested provisions negate their parent level — three levels deep, from both decisions.
NEGATION = [
    ("deny", ["deny", "permit", "deny", "permit"]),
    ("permit", ["permit", "deny", "permit", "deny"]),
]


@pytest.mark.parametrize(("decision", "kinds"), NEGATION)
def test_r5_nested_provisions_negate_their_parent(decision: str, kinds: list[str]) -> None:
    level3 = {"purpose": [{"system": ACT_REASON, "code": "ETREAT"}]}
    level2 = {"actor": [{"reference": ref("Practitioner/x")}], "provision": [level3]}
    level1 = {"securityLabel": [{"system": CONFIDENTIALITY_SYSTEM, "code": "R"}], "provision": [level2, {}]}
    root = parse_consent(r5(decision, [level1])).root
    found = []
    node = root
    while node is not None:
        found.append(node.kind)
        node = node.children[0] if node.children else None
    assert found == kinds
    assert root is not None
    assert root.children[0].children[1].kind == kinds[2]  # siblings share their level's kind


def test_r4_nested_provisions_state_their_own_type() -> None:
    tree = {"type": "permit", "provision": [{"type": "permit", "provision": [{"type": "permit"}]}]}
    root = parse_consent(r4(tree)).root
    assert root is not None
    assert root.children[0].kind == root.children[0].children[0].kind == "permit"


# --- element readings ---------------------------------------------------------------------------------

CLASSES = [
    (
        {"system": "http://hl7.org/fhir/resource-types", "code": "Condition"},
        Coding(RESOURCE_TYPES_SYSTEM, "Condition"),
    ),
    ({"code": "Condition"}, Coding(RESOURCE_TYPES_SYSTEM, "Condition")),
    ({"system": LOINC, "code": "34133-9"}, Coding(LOINC, "34133-9")),
    (
        {"system": "http://hl7.org/fhir/StructureDefinition", "code": "lipidprofile"},
        Coding("http://hl7.org/fhir/StructureDefinition", "lipidprofile"),
    ),
]


@pytest.mark.parametrize(("coding", "expected"), CLASSES)
def test_r4_class_codings(coding: dict[str, str], expected: Coding) -> None:
    root = parse_consent(r4({"type": "deny", "class": [coding]})).root
    assert root is not None
    assert root.classes == (expected,)


def test_r5_document_type_is_kept_apart_from_resource_type() -> None:
    provision = {
        "resourceType": [{"code": "DocumentReference"}],
        "documentType": [{"system": LOINC, "code": "X-1"}],
    }
    root = parse_consent(r5("permit", [provision])).root
    assert root is not None
    assert root.children[0].classes == (Coding(RESOURCE_TYPES_SYSTEM, "DocumentReference"),)
    assert root.children[0].document_types == (Coding(LOINC, "X-1"),)


CODED = [
    ("purpose", [{"system": ACT_REASON, "code": "HPAYMT"}], "purposes", ("HPAYMT",)),
    ("purpose", [{"system": "urn:oid:2.16.840.1.113883.5.8", "code": "BTG"}], "purposes", ("BTG",)),
    ("purpose", [{"code": "TREAT"}], "purposes", ("TREAT",)),
    ("purpose", [{"system": "urn:example", "code": "TREAT"}], "purposes", ("urn:example|TREAT",)),
    ("action", [{"coding": [{"code": "access"}, {"code": "use"}]}], "actions", ("access", "use")),
    ("action", [{"coding": [{"system": "urn:example", "code": "print"}]}], "actions", ("urn:example|print",)),
    (
        "securityLabel",
        [{"system": "urn:oid:2.16.840.1.113883.5.25", "code": "R"}],
        "security_labels",
        (Coding(CONFIDENTIALITY_SYSTEM, "R"),),
    ),
    (
        "code",
        [{"coding": [{"system": LOINC, "code": "1"}, {"system": LOINC, "code": "2"}]}],
        "codes",
        (Coding(LOINC, "1"), Coding(LOINC, "2")),
    ),
]


@pytest.mark.parametrize(("element", "value", "field", "expected"), CODED)
def test_coded_elements(element: str, value: list[Any], field: str, expected: tuple[Any, ...]) -> None:
    root = parse_consent(r4({"type": "deny", element: value})).root
    assert getattr(root, field) == expected


REFERENCES = [
    ("Practitioner/1", "Practitioner/1"),
    ("https://ehr.example/fhir/Practitioner/1", "Practitioner/1"),
    ("Practitioner/1/_history/7", "Practitioner/1"),
    ("RelatedPerson/rp.5", "RelatedPerson/rp.5"),
]


@pytest.mark.parametrize(("reference", "expected"), REFERENCES)
def test_actor_references_are_read_as_type_and_id(reference: str, expected: str) -> None:
    root = parse_consent(r4({"type": "permit", "actor": [{"reference": ref(reference)}]})).root
    assert root is not None
    assert root.actors[0].reference == expected


def test_header_fields() -> None:
    four = parse_consent(
        r4(
            {"type": "permit"},
            policy=[{"uri": "https://policy.example/opt-in"}],
            policyRule={"coding": [{"system": ACT_CODE_SYSTEM, "code": "OPTIN"}]},
        )
    )
    assert four.id == "c4"
    assert four.recorded == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert four.scopes == (Coding("http://terminology.hl7.org/CodeSystem/consentscope", "patient-privacy"),)
    assert four.policies == ("https://policy.example/opt-in",)
    assert four.policy_rules == (Coding(ACT_CODE_SYSTEM, "OPTIN"),)
    assert four.period is None
    five = parse_consent(
        r5(
            "permit",
            period={"start": "2024-01-01", "end": "2024-12-31"},
            policyBasis={"url": "https://policy.example/x"},
        )
    )
    assert five.recorded == datetime(2024, 5, 1, tzinfo=UTC)
    assert five.period == Period(datetime(2024, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC))
    assert five.policies == ("https://policy.example/x",)


PATIENTS = [
    (r4({"type": "permit"}), "p1"),
    (r4({"type": "permit"}, patient=ref("https://h/fhir/Patient/p2")), "p2"),
    (r5("permit", subject=ref("Group/g1")), None),
    (r5("permit", subject={"identifier": {"value": "x"}}), None),
]


@pytest.mark.parametrize(("resource", "patient"), PATIENTS)
def test_patient(resource: dict[str, Any], patient: str | None) -> None:
    assert parse_consent(resource).patient == patient


# Spec: R4 statuses draft | proposed | active | rejected | inactive | entered-in-error; R5 draft | active |
# inactive | not-done | entered-in-error | unknown.
STATUSES = [
    *[
        (r4({"type": "deny"}, status=status), True)
        for status in ("draft", "proposed", "active", "rejected", "inactive", "entered-in-error")
    ],
    *[
        (r5("deny", status=status), True)
        for status in ("draft", "active", "inactive", "not-done", "entered-in-error", "unknown")
    ],
    (r4({"type": "deny"}, status="not-done"), False),
    (r5("deny", status="proposed"), False),
    (r4({"type": "deny"}, status="Active"), False),
    (r4({"type": "deny"}, status=None), False),
]


@pytest.mark.parametrize(("resource", "known"), STATUSES)
def test_statuses(resource: dict[str, Any], known: bool) -> None:
    if known:
        directive = parse_consent(resource)
        assert directive.status == resource["status"]
        assert directive.active is (resource["status"] == "active")
    else:
        with pytest.raises(ConsentParseError, match="status"):
            parse_consent(resource)


def test_a_consent_that_is_not_active_may_state_no_rule() -> None:
    assert parse_consent(r4(None, status="draft")).root is None
    assert parse_consent(r5(None, status="inactive")).root is None


def test_the_version_can_be_forced() -> None:
    bare = {"resourceType": "Consent", "status": "draft"}
    assert parse_consent(bare).version == "R4"
    assert parse_consent(bare, version="R5").version == "R5"


# --- malformed Consents raise ---------------------------------------------------------------------------


def _r4_with(**provision: Any) -> dict[str, Any]:
    return r4({"type": "permit", **provision})


MALFORMED = [
    pytest.param("not json object", "not a Consent", id="not-an-object"),
    pytest.param({"resourceType": "Patient"}, "not a Consent", id="other-type"),
    pytest.param(
        r4({"type": "permit"}, modifierExtension=[{"url": "x"}]), "modifierExtension", id="root-modifier"
    ),
    pytest.param(r4({"type": "permit"}, implicitRules="https://x"), "implicitRules", id="implicit-rules"),
    pytest.param(r4({"type": "permit"}, subject=ref("Patient/p1")), "mixes", id="mixed-versions"),
    pytest.param(r4(None), "states no provision", id="active-without-rule"),
    pytest.param(r5(None), "states no provision", id="r5-active-without-rule"),
    pytest.param(r4(None) | {"provision": [{"type": "permit"}]}, "mixes", id="r4-provision-list"),
    pytest.param(r4({"type": "permit"}, dateTime="yesterday"), "dateTime", id="bad-recorded"),
    pytest.param(_r4_with(type=None), "type", id="no-type"),
    pytest.param(_r4_with(type="maybe"), "type", id="unknown-type"),
    pytest.param(_r4_with(provision=[{"actor": []}]), "type", id="nested-without-type"),
    pytest.param(_r4_with(actors=[]), "actors", id="misspelt-element"),
    pytest.param(_r4_with(resourceType=[{"code": "Observation"}]), "resourceType", id="r5-element-in-r4"),
    pytest.param(_r4_with(modifierExtension=[{"url": "x"}]), "modifierExtension", id="provision-modifier"),
    pytest.param(
        _r4_with(actor=[{"reference": ref("Practitioner/1"), "modifierExtension": [{"url": "x"}]}]),
        "modifierExtension",
        id="actor-modifier",
    ),
    pytest.param(
        _r4_with(actor=[{"role": {"coding": [{"code": "PRCP"}]}}]), "reference", id="actor-no-reference"
    ),
    pytest.param(
        _r4_with(actor=[{"reference": {"identifier": {"value": "123"}}}]),
        "reference",
        id="actor-identifier-only",
    ),
    pytest.param(_r4_with(actor=[{"reference": ref("#contained")}]), "reference", id="actor-contained"),
    pytest.param(
        _r4_with(actor=[{"reference": ref("urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0")}]),
        "reference",
        id="actor-urn",
    ),
    pytest.param(
        _r4_with(actor=[{"reference": ref("Practitioner?name=x")}]), "reference", id="actor-conditional"
    ),
    pytest.param(_r4_with(actor={"reference": ref("Practitioner/1")}), "list", id="actor-not-list"),
    pytest.param(_r4_with(actor=["Practitioner/1"]), "object", id="actor-entry-not-object"),
    pytest.param(
        _r4_with(data=[{"meaning": "everything", "reference": ref("Encounter/1")}]),
        "meaning",
        id="data-meaning",
    ),
    pytest.param(_r4_with(data=[{"meaning": "instance"}]), "reference", id="data-no-reference"),
    pytest.param(_r4_with(period={"start": "not-a-date"}), "period", id="period-start"),
    pytest.param(
        _r4_with(period={"start": "2025-01-01", "end": "2024-12-31"}), "starts after", id="period-order"
    ),
    pytest.param(_r4_with(period="2024"), "Period", id="period-not-object"),
    pytest.param(_r4_with(dataPeriod={"end": "2024-13"}), "dataPeriod", id="data-period-month"),
    pytest.param(_r4_with(dataPeriod={"end": 2024}), "dataPeriod", id="data-period-number"),
    pytest.param(_r4_with(securityLabel=[{"system": ACT_CODE_SYSTEM}]), "securityLabel", id="label-no-code"),
    pytest.param(_r4_with(purpose=[{"display": "treatment"}]), "purpose", id="purpose-no-code"),
    pytest.param(_r4_with(action=[{"text": "read it"}]), "action", id="action-text-only"),
    pytest.param(_r4_with(code=[{"text": "HIV test"}]), "code", id="code-text-only"),
    pytest.param(_r4_with(code=[{"coding": [{"display": "x"}]}]), "code", id="code-no-code"),
    pytest.param(_r4_with(**{"class": [{"code": "observation"}]}), "resource type", id="class-not-a-type"),
    pytest.param(r5("permit", [{"type": "deny"}]), "type", id="r5-provision-type"),
    pytest.param(
        r5(None, [{"actor": [{"reference": ref("Practitioner/1")}]}]), "decision", id="r5-no-decision"
    ),
    pytest.param(r5("allow", []), "decision", id="r5-bad-decision"),
    pytest.param(
        r5("permit", [{"expression": {"language": "text/fhirpath", "expression": "true"}}]),
        "expression",
        id="r5-expression",
    ),
    pytest.param(r5("permit", [{"class": [{"code": "Observation"}]}]), "class", id="r4-element-in-r5"),
    pytest.param(
        r5("permit", [{"actor": [{"role": {"coding": [{"code": "PRCP"}]}}]}]),
        "reference",
        id="r5-role-only-actor",
    ),
    pytest.param(r5("permit", grantee=[{"display": "Dr Who"}]), "grantee", id="r5-grantee-no-reference"),
    pytest.param(r5("permit", period={"start": "2024-02-30"}), "period", id="r5-period-day"),
]


@pytest.mark.parametrize(("resource", "message"), MALFORMED)
def test_malformed_consents_raise(resource: Any, message: str) -> None:
    with pytest.raises(ConsentParseError, match=message):
        parse_consent(copy.deepcopy(resource))


def test_primitive_extensions_and_plain_extensions_are_allowed() -> None:
    provision = {"type": "permit", "_type": {"extension": [{"url": "x"}]}, "extension": [{"url": "y"}]}
    assert parse_consent(r4(provision)).root == Provision(kind="permit")


# --- FHIR date precision ---------------------------------------------------------------------------------

# Judgement call, documented: values without a zone are UTC; each value covers its whole precision.
RANGES = [
    ("2024", datetime(2024, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC)),
    ("2024-02", datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC)),
    ("2024-12", datetime(2024, 12, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC)),
    ("2024-02-29", datetime(2024, 2, 29, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC)),
    (
        "2024-03-05T10:00:00Z",
        datetime(2024, 3, 5, 10, tzinfo=UTC),
        datetime(2024, 3, 5, 10, 0, 1, tzinfo=UTC),
    ),
    (
        "2024-03-05T10:00:00.5+02:00",
        datetime(2024, 3, 5, 8, 0, 0, 500000, tzinfo=UTC),
        datetime(2024, 3, 5, 8, 0, 0, 600000, tzinfo=UTC),
    ),
    (
        "2024-03-05T10:00:00-05:30",
        datetime(2024, 3, 5, 15, 30, tzinfo=UTC),
        datetime(2024, 3, 5, 15, 30, 1, tzinfo=UTC),
    ),
    ("2024-03-05T10:00:00", datetime(2024, 3, 5, 10, tzinfo=UTC), datetime(2024, 3, 5, 10, 0, 1, tzinfo=UTC)),
    ("9999", datetime(9999, 1, 1, tzinfo=UTC), datetime.max.replace(tzinfo=UTC)),
]


@pytest.mark.parametrize(("text", "start", "end"), RANGES)
def test_instant_ranges(text: str, start: datetime, end: datetime) -> None:
    assert instant_range(text) == Period(start, end)


BAD_DATES = [
    "",
    "24",
    "2024-1",
    "2024-00",
    "2024-13-01",
    "2023-02-29",
    "2024-03-05T25:00:00Z",
    "2024-03-05T10:00Z",
    "2024-03-05T10:00:00+15:00",
    "2024-03-05 10:00:00Z",
    "0000",
    "\uff12\uff10\uff12\uff14",
]


@pytest.mark.parametrize("text", BAD_DATES)
def test_bad_dates(text: str) -> None:
    with pytest.raises(FhirDateError):
        instant_range(text)


def test_period_end_includes_its_whole_precision() -> None:
    period = parse_period({"start": "2024", "end": "2024"})
    assert period.contains(datetime(2024, 1, 1, tzinfo=UTC))
    assert period.contains(datetime(2024, 12, 31, 23, 59, 59, 999999, tzinfo=UTC))
    assert not period.contains(datetime(2025, 1, 1, tzinfo=UTC))
    assert not period.contains(datetime(2023, 12, 31, 23, 59, 59, tzinfo=UTC))
    assert period.contains(datetime(2024, 6, 1, 1, tzinfo=timezone(timedelta(hours=5))))


def test_open_periods() -> None:
    assert parse_period({}) == Period(None, None)
    assert parse_period({"end": "2024"}).contains(datetime(1900, 1, 1, tzinfo=UTC))


ENCLOSES = [
    (Period(None, None), Period(None, None), True),
    (Period(datetime(2024, 1, 1, tzinfo=UTC), None), Period(None, datetime(2024, 5, 1, tzinfo=UTC)), False),
    (instant_range("2024"), instant_range("2024-03"), True),
    (instant_range("2024-03"), instant_range("2024"), False),
    (instant_range("2024-03"), instant_range("2024-03-31T23:59:59Z"), True),
    (instant_range("2024-03"), instant_range("2024-04-01T00:00:00Z"), False),
    (Period(None, datetime(2024, 1, 1, tzinfo=UTC)), Period(datetime(2023, 1, 1, tzinfo=UTC), None), False),
]


@pytest.mark.parametrize(("outer", "inner", "encloses"), ENCLOSES)
def test_encloses(outer: Period, inner: Period, encloses: bool) -> None:
    assert outer.encloses(inner) is encloses


@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9998, 12, 30)),
    st.sampled_from([4, 7, 10, 19, 23, 26]),
)
def test_every_value_contains_its_own_start_and_not_its_end(moment: datetime, precision: int) -> None:
    text = moment.isoformat(timespec="microseconds")[:precision]
    if precision >= 19:
        text += "Z"
    value = instant_range(text)
    assert value.start is not None
    assert value.end is not None
    assert value.start < value.end
    assert value.contains(value.start)
    assert not value.contains(value.end)
    assert value.contains(moment.replace(tzinfo=UTC)) or precision == 23  # .fff truncates microseconds


def test_deep_nesting_is_refused() -> None:
    provision: dict[str, Any] = {"type": "deny"}
    for _ in range(MAX_DEPTH + 1):
        provision = {"type": "permit", "provision": [provision]}
    with pytest.raises(ConsentParseError, match="nested deeper"):
        parse_consent(r4(provision))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=8)
    | st.sampled_from(["permit", "deny", "active"]),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=12,
)
PROVISION_KEYS = [
    "type",
    "period",
    "actor",
    "action",
    "securityLabel",
    "purpose",
    "class",
    "code",
    "dataPeriod",
    "data",
    "provision",
    "resourceType",
    "documentType",
]


@given(
    header=st.dictionaries(
        st.sampled_from(
            [
                "status",
                "decision",
                "patient",
                "subject",
                "period",
                "grantee",
                "date",
                "dateTime",
                "scope",
                "policy",
                "id",
            ]
        ),
        json_values,
        max_size=4,
    ),
    provision=st.dictionaries(st.sampled_from(PROVISION_KEYS), json_values, max_size=4),
    as_list=st.booleans(),
)
def test_any_malformed_consent_raises_only_consent_parse_error(
    header: dict[str, Any], provision: dict[str, Any], as_list: bool
) -> None:
    resource = {
        "resourceType": "Consent",
        "status": "active",
        **header,
        "provision": [provision] if as_list else provision,
    }
    with contextlib.suppress(ConsentParseError):
        parse_consent(resource)


# --- which rules look at the resource (used to decide once per patient) ---------------------------------


def _consent_with(provision: dict[str, object]) -> dict[str, object]:
    return {
        "resourceType": "Consent",
        "id": "c",
        "status": "active",
        "patient": {"reference": "Patient/p"},
        "scope": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "provision": provision,
    }


@pytest.mark.parametrize(
    ("provision", "reads"),
    [
        ({"type": "deny"}, False),
        (
            {
                "type": "permit",
                "provision": [{"type": "deny", "actor": [{"reference": {"reference": "Practitioner/x"}}]}],
            },
            False,
        ),
        (
            {
                "type": "permit",
                "purpose": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}
                ],
            },
            False,
        ),
        (
            {
                "type": "permit",
                "provision": [
                    {
                        "type": "deny",
                        "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}],
                    }
                ],
            },
            True,
        ),
        (
            {
                "type": "permit",
                "provision": [
                    {
                        "type": "deny",
                        "securityLabel": [
                            {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}
                        ],
                    }
                ],
            },
            True,
        ),
        ({"type": "permit", "dataPeriod": {"start": "2020-01-01"}}, True),
        ({"type": "permit", "code": [{"coding": [{"system": "http://loinc.org", "code": "1-1"}]}]}, True),
        (
            {
                "type": "permit",
                "data": [{"meaning": "instance", "reference": {"reference": "Observation/1"}}],
            },
            True,
        ),
    ],
)
def test_rules_that_read_the_resource(provision: dict[str, object], reads: bool) -> None:
    directive = parse_consent(_consent_with(provision))
    assert directive.root is not None
    assert reads_resource(directive.root) is reads
    assert resource_independent((directive,)) is not reads

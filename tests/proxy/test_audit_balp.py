"""BALP AuditEvents from audit records: every interaction, success and failure, per-patient events, alerts."""

from __future__ import annotations

import base64
import dataclasses
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent

from proxy.audit.balp import EXTENSION_BASE, ID_NAMESPACE, MAX_RESOURCE_ENTITIES, ObserverInfo, audit_events
from proxy.audit.record import AuditRecord, Decision

Json = dict[str, Any]

OBSERVER = ObserverInfo(name="fhirwall-test", site="test-site", url="https://proxy.example/fhir")
STARTED = 1_700_000_000.25  # 2023-11-14T22:13:20.250Z
DCM = "http://dicom.nema.org/resources/ontology/DCM"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
READS = {"read", "vread", "capabilities"}


def _record(**changes: Any) -> AuditRecord:
    """A permitted read by a practitioner through an app; ``changes`` override any field."""
    record = AuditRecord(
        request_id="req-0001",
        method="GET",
        route="/Patient/{id}",
        interaction="read",
        started=STARTED,
        status=200,
        duration_ms=42.0,
        decision=Decision.PERMIT,
        client_id="app-1",
        subject="user-7",
        fhir_user="Practitioner/pr-1",
        issuer="https://issuer.example",
        token_id="jti-123",
        roles=("doctor",),
        purpose_of_use=("TREAT",),
        client_address="192.0.2.10",
    )
    return dataclasses.replace(record, **changes)


def _events(record: AuditRecord) -> list[Json]:
    """The record's events, each checked against the FHIR R4B AuditEvent model."""
    events = audit_events(record, observer=OBSERVER)
    for event in events:
        AuditEvent.model_validate(event)
    return events


def _codes(concept: Json) -> set[tuple[str, str]]:
    return {(coding["system"], coding["code"]) for coding in concept.get("coding", [concept])}


def _agent(event: Json, system: str, code: str) -> Json:
    matching: list[Json] = [agent for agent in event["agent"] if (system, code) in _codes(agent["type"])]
    assert len(matching) == 1, (system, code)
    return matching[0]


def _entities(event: Json, role: str) -> list[Json]:
    return [entity for entity in event.get("entity", []) if entity.get("role", {}).get("code") == role]


def _references(entities: list[Json]) -> list[str]:
    return [entity["what"]["reference"] for entity in entities]


def _extensions(event: Json, name: str) -> list[Json]:
    return [ext for ext in event["extension"] if ext["url"] == EXTENSION_BASE + name]


def _decoded_query(event: Json) -> str:
    (entity,) = _entities(event, "24")
    assert "what" not in entity
    return base64.b64decode(entity["query"]).decode()


# --- every interaction, success and failure ----------------------------------------------------------


@dataclass(frozen=True)
class Case:
    interaction: str
    method: str
    route: str
    resource_type: str | None
    resource_id: str | None
    action: str
    query: str = ""
    operation: str | None = None
    patients: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    success: int = 200
    raw: str | None = None
    """The raw request the query entity holds, or None when the interaction has no query entity."""


CASES = [
    Case("read", "GET", "/Patient/{id}", "Patient", "p1", "R", patients=("p1",), resources=("Patient/p1",)),
    Case(
        "vread",
        "GET",
        "/Observation/{id}/_history/{vid}",
        "Observation",
        "o1",
        "R",
        patients=("p1",),
        resources=("Observation/o1",),
    ),
    Case(
        "search-type",
        "GET",
        "/Observation",
        "Observation",
        None,
        "E",
        query="patient=p1&code=http://loinc.org|8867-4",
        patients=("p1",),
        resources=("Observation/o1", "Observation/o2"),
        raw="GET /Observation?patient=p1&code=http://loinc.org|8867-4",
    ),
    Case(
        "search-system",
        "GET",
        "/",
        None,
        None,
        "E",
        query="_type=Patient&name=smith",
        patients=("p1",),
        resources=("Patient/p1",),
        raw="GET /?_type=Patient&name=smith",
    ),
    Case(
        "create",
        "POST",
        "/Observation",
        "Observation",
        None,
        "C",
        patients=("p1",),
        resources=("Observation/new-1",),
        success=201,
    ),
    Case("update", "PUT", "/Observation/{id}", "Observation", "o1", "U", patients=("p1",)),
    Case("patch", "PATCH", "/Observation/{id}", "Observation", "o1", "U", patients=("p1",)),
    Case("delete", "DELETE", "/Observation/{id}", "Observation", "o1", "D", patients=("p1",)),
    Case(
        "history-instance",
        "GET",
        "/Patient/{id}/_history",
        "Patient",
        "p1",
        "R",
        patients=("p1",),
        raw="GET /Patient/p1/_history",
    ),
    Case(
        "history-type",
        "GET",
        "/Observation/_history",
        "Observation",
        None,
        "R",
        query="_since=2024-01-01",
        raw="GET /Observation/_history?_since=2024-01-01",
    ),
    Case("history-system", "GET", "/_history", None, None, "R", raw="GET /_history"),
    Case(
        "operation",
        "GET",
        "/Patient/{id}/$everything",
        "Patient",
        "p1",
        "E",
        query="_count=10",
        operation="everything",
        patients=("p1",),
        raw="GET /Patient/p1/$everything?_count=10",
    ),
    Case("batch", "POST", "/", None, None, "E", patients=("p1",), resources=("Observation/o1",)),
    Case("transaction", "POST", "/", None, None, "E", patients=("p1",), resources=("Observation/o9",)),
    Case("capabilities", "GET", "/metadata", None, None, "R"),
]

FAILURES = {
    403: ("ForbiddenError", "forbidden"),
    404: ("NotFoundError", "not-found"),
    500: ("UpstreamError", "exception"),
}
OUTCOMES = {200: "0", 201: "0", 403: "4", 404: "4", 500: "8"}


def _case_record(case: Case, status: int) -> AuditRecord:
    error_type, reason = FAILURES.get(status, (None, None))
    return _record(
        method=case.method,
        route=case.route,
        interaction=case.interaction,
        resource_type=case.resource_type,
        resource_id=case.resource_id,
        operation=case.operation,
        query=case.query,
        patients=set(case.patients),
        resources=list(case.resources),
        status=status,
        error_type=error_type,
        reasons=[reason] if reason else [],
        decision=Decision.DENY if status == 403 else Decision.PERMIT,
    )


def _user_type(interaction: str) -> str:
    return {"create": "AUT", "update": "AUT", "patch": "AUT", "delete": "INF"}.get(interaction, "IRCP")


@pytest.mark.parametrize("status", ["success", 403, 404, 500])
@pytest.mark.parametrize("case", CASES, ids=[case.interaction for case in CASES])
def test_interaction(case: Case, status: int | str) -> None:
    code = case.success if status == "success" else int(status)
    (event,) = _events(_case_record(case, code))

    assert event["type"] == {
        "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
        "code": "rest",
        "display": "Restful Operation",
    }
    assert event["subtype"][0] == {"system": RESTFUL, "code": case.interaction}
    operations = [{"system": "urn:fhirwall:operation", "code": case.operation}] if case.operation else []
    assert event["subtype"][1:] == operations
    assert event["action"] == case.action
    assert event["outcome"] == OUTCOMES[code]
    assert ("outcomeDesc" in event) == (code >= 400)


@pytest.mark.parametrize("status", ["success", 403, 500])
@pytest.mark.parametrize("case", CASES, ids=[case.interaction for case in CASES])
def test_agents(case: Case, status: int | str) -> None:
    code = case.success if status == "success" else int(status)
    (event,) = _events(_case_record(case, code))
    client_role, server_role = ("110152", "110153") if case.interaction in READS else ("110153", "110152")

    user = _agent(event, PARTICIPATION, _user_type(case.interaction))
    assert user["requestor"] is True
    assert user["who"] == {
        "reference": "Practitioner/pr-1",
        "identifier": {"system": "https://issuer.example", "value": "user-7"},
    }
    assert user["purposeOfUse"] == [
        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}]}
    ]
    assert user["role"] == [{"coding": [{"system": "urn:fhirwall:role", "code": "doctor"}], "text": "doctor"}]
    assert user["policy"] == ["urn:ietf:params:oauth:jti:jti-123"]
    assert "network" not in user  # BALP: the network address belongs to the client

    client = _agent(event, DCM, "110150")
    assert (DCM, client_role) in _codes(client["type"])
    assert client["requestor"] is False
    assert client["who"] == {"identifier": {"system": "https://issuer.example", "value": "app-1"}}
    assert client["network"] == {"address": "192.0.2.10", "type": "2"}

    server = _agent(event, DCM, server_role)
    assert server["requestor"] is False
    assert server["who"] == event["source"]["observer"]
    assert server["network"] == {"address": "https://proxy.example/fhir", "type": "5"}
    custodian = ("http://terminology.hl7.org/CodeSystem/provenance-participant-type", "custodian")
    assert (custodian in _codes(server["type"])) == (case.interaction == "delete")
    assert len(event["agent"]) == 3


@pytest.mark.parametrize("status", ["success", 404])
@pytest.mark.parametrize("case", CASES, ids=[case.interaction for case in CASES])
def test_entities(case: Case, status: int | str) -> None:
    code = case.success if status == "success" else int(status)
    (event,) = _events(_case_record(case, code))

    if case.raw is None:
        assert _entities(event, "24") == []
    else:
        assert _decoded_query(event) == case.raw
    requested = [f"{case.resource_type}/{case.resource_id}"] if case.resource_id else []
    assert _references(_entities(event, "4")) == list(dict.fromkeys([*requested, *case.resources]))
    assert _references(_entities(event, "1")) == [f"Patient/{patient}" for patient in case.patients]
    request_ids = [e["what"] for e in event["entity"] if e["type"]["code"] == "XrequestId"]
    assert request_ids == [{"identifier": {"value": "req-0001"}}]


def test_source_and_times() -> None:
    (event,) = _events(_record())
    assert event["source"] == {
        "observer": {
            "identifier": {"system": "urn:fhirwall:observer", "value": "fhirwall-test"},
            "display": "fhirwall-test",
        },
        "site": "test-site",
        "type": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                "code": "4",
                "display": "Application Server",
            }
        ],
    }
    assert event["recorded"] == "2023-11-14T22:13:20.250Z"
    assert event["period"] == {"start": "2023-11-14T22:13:20.250Z", "end": "2023-11-14T22:13:20.292Z"}


# --- one event per patient ---------------------------------------------------------------------------

QUERIES = ["search-type", "search-system", "history-type", "history-instance", "operation"]


@pytest.mark.parametrize("interaction", QUERIES)
def test_one_event_per_patient_for_queries(interaction: str) -> None:
    record = _record(
        interaction=interaction,
        route="/Observation",
        resource_type="Observation",
        query="code=8867-4",
        patients={"p3", "p1", "p2"},
        resources=["Observation/o1", "Observation/o2", "Observation/o3"],
    )
    events = _events(record)

    assert len(events) == 3
    assert [_references(_entities(event, "1")) for event in events] == [
        ["Patient/p1"],
        ["Patient/p2"],
        ["Patient/p3"],
    ]
    assert all(_decoded_query(event) == "GET /Observation?code=8867-4" for event in events)
    assert all(_entities(event, "4") == [] for event in events)  # results cannot be attributed per patient
    ids = [event["id"] for event in events]
    assert len(set(ids)) == 3
    assert ids == [str(uuid.uuid5(ID_NAMESPACE, f"req-0001:p{n}")) for n in (1, 2, 3)]
    assert [event["id"] for event in _events(dataclasses.replace(record, patients={"p1", "p2", "p3"}))] == ids
    assert not set(ids) & {event["id"] for event in _events(dataclasses.replace(record, request_id="req-2"))}


def test_other_interactions_carry_all_patients_in_one_event() -> None:
    record = _record(
        interaction="transaction",
        method="POST",
        route="/",
        resource_type=None,
        resource_id=None,
        patients={"p2", "p1"},
        resources=["Observation/o1", "Observation/o2"],
    )
    (event,) = _events(record)
    assert _references(_entities(event, "1")) == ["Patient/p1", "Patient/p2"]
    assert _references(_entities(event, "4")) == ["Observation/o1", "Observation/o2"]
    assert event["id"] == str(uuid.uuid5(ID_NAMESPACE, "req-0001:-"))


def test_query_without_patients_gives_one_event_without_patient_entity() -> None:
    record = _record(interaction="search-type", route="/Organization", resource_type="Organization")
    (event,) = _events(record)
    assert _entities(event, "1") == []
    assert _decoded_query(event) == "GET /Organization"
    assert event["id"] == _events(record)[0]["id"] == str(uuid.uuid5(ID_NAMESPACE, "req-0001:-"))


def test_resource_entities_are_capped() -> None:
    resources = [f"Observation/o{n}" for n in range(MAX_RESOURCE_ENTITIES + 50)]
    (event,) = _events(
        _record(interaction="batch", method="POST", route="/", resource_id=None, resources=resources)
    )
    assert _references(_entities(event, "4")) == resources[:MAX_RESOURCE_ENTITIES]


# --- failures never echo request values --------------------------------------------------------------


@pytest.mark.parametrize("status", [403, 404, 500])
def test_outcome_description_has_no_phi(status: int) -> None:
    error_type, reason = FAILURES[status]
    record = _record(
        interaction="search-type",
        route="/Observation",
        resource_type="Observation",
        query="name=Jane%20Doe&birthdate=1970-01-01&identifier=123-45-6789",
        patients={"pat-secret-42"},
        resources=["Observation/obs-secret-9"],
        status=status,
        error_type=error_type,
        reasons=[reason],
        decision=Decision.DENY,
    )
    for event in _events(record):
        description = event["outcomeDesc"]
        assert description == f"HTTP {status} {error_type}: {reason}"
        for phi in ("Jane", "1970", "123-45-6789", "pat-secret-42", "obs-secret-9", "user-7", "192.0.2.10"):
            assert phi not in description


# --- decisions, alerts, extensions -------------------------------------------------------------------


def test_break_glass_adds_a_security_alert() -> None:
    record = _record(
        interaction="search-type",
        route="/Observation",
        resource_type="Observation",
        patients={"p1", "p2"},
        consent_ids=["c-1"],
        break_glass=True,
        purpose_of_use=("BTG",),
        reasons=["BREAK-GLASS: an eligible requester overrode a denial"],
    )
    *rest, alert = _events(record)

    assert len(rest) == 2
    glass = [{"url": EXTENSION_BASE + "audit-break-glass", "valueBoolean": True}]
    assert all(_extensions(event, "audit-break-glass") == glass for event in rest)
    assert alert["type"] == {"system": DCM, "code": "110113", "display": "Security Alert"}
    assert alert["action"] == "E"
    assert alert["subtype"] == [{"system": "urn:fhirwall:security-alert", "code": "break-glass"}]
    assert alert["agent"] == rest[0]["agent"]
    references = [entity["what"].get("reference") for entity in alert["entity"]]
    assert references == ["Patient/p1", "Patient/p2", "Consent/c-1", None]
    assert alert["id"] == str(uuid.uuid5(ID_NAMESPACE, "req-0001:alert:break-glass"))
    assert alert["id"] not in {event["id"] for event in rest}


@pytest.mark.parametrize(
    ("error_type", "reasons", "decision", "alert"),
    [
        ("ConsentDeniedError", ["forbidden"], Decision.DENY, True),
        ("NotFoundError", ["consent: withheld by the patient's consent"], Decision.DENY, True),
        ("ForbiddenError", ["forbidden"], Decision.DENY, False),
        ("NotFoundError", ["not-found"], Decision.PERMIT, False),
    ],
)
def test_consent_denials_add_a_security_alert(
    error_type: str, reasons: list[str], decision: str, alert: bool
) -> None:
    record = _record(status=403, error_type=error_type, reasons=reasons, decision=decision, patients={"p1"})
    events = _events(record)
    alerts = [event for event in events if event["type"]["code"] == "110113"]
    assert len(events) == 1 + alert
    if alert:
        assert alerts[0]["subtype"] == [
            {"system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/AuthZsubType", "code": "AuthZ-Consent"},
            {"system": "urn:fhirwall:security-alert", "code": "consent-deny"},
        ]
        assert alerts[0]["outcome"] == "4"
    else:
        assert alerts == []


def test_decision_extensions() -> None:
    record = _record(
        reasons=["1 applicable Consent(s) combined by deny-overrides: permit by the root rule"],
        consent_ids=["c-1", "c-2", "c-1"],
        masking_profile="research",
        masked_values=7,
    )
    (event,) = _events(record)
    url = EXTENSION_BASE
    assert _extensions(event, "audit-decision") == [{"url": url + "audit-decision", "valueCode": "permit"}]
    assert [ext["valueString"] for ext in _extensions(event, "audit-reason")] == record.reasons
    assert _extensions(event, "audit-masking") == [
        {
            "url": url + "audit-masking",
            "extension": [{"url": "profile", "valueString": "research"}, {"url": "count", "valueInteger": 7}],
        }
    ]
    consents = [ext["valueReference"] for ext in _extensions(event, "audit-consent")]
    assert consents == [{"reference": "Consent/c-1"}, {"reference": "Consent/c-2"}]
    assert _extensions(event, "audit-break-glass") == []


def test_no_masking_extension_without_a_profile() -> None:
    (event,) = _events(_record(decision=Decision.NOT_EVALUATED))
    assert _extensions(event, "audit-masking") == []
    assert _extensions(event, "audit-decision")[0]["valueCode"] == "not-evaluated"


# --- agents without a user ---------------------------------------------------------------------------


def test_backend_service_client_is_the_requestor() -> None:
    record = _record(subject="app-1", fhir_user=None, roles=(), purpose_of_use=())
    (event,) = _events(record)
    assert [agent for agent in event["agent"] if agent["requestor"]] == [_agent(event, DCM, "110150")]
    assert _agent(event, DCM, "110150")["policy"] == ["urn:ietf:params:oauth:jti:jti-123"]
    assert len(event["agent"]) == 2


def test_user_known_only_by_fhir_user() -> None:
    (event,) = _events(_record(subject=None, fhir_user="https://ehr.example/fhir/Practitioner/pr-9"))
    user = _agent(event, PARTICIPATION, "IRCP")
    assert user["who"] == {"reference": "https://ehr.example/fhir/Practitioner/pr-9"}
    assert "name" not in user


def test_unauthenticated_unclassified_request() -> None:
    record = _record(
        interaction="unclassified",
        route="unclassified",
        resource_id=None,
        status=401,
        error_type="AuthenticationError",
        reasons=["login"],
        decision=Decision.NOT_EVALUATED,
        client_id=None,
        subject=None,
        fhir_user=None,
        token_id=None,
        issuer=None,
        roles=(),
        purpose_of_use=(),
        client_address="client.example.org",
    )
    (event,) = _events(record)
    assert event["subtype"] == [{"system": "urn:fhirwall:interaction", "code": "unclassified"}]
    assert event["action"] == "E"
    assert event["outcome"] == "4"
    assert event["outcomeDesc"] == "HTTP 401 AuthenticationError: login"
    client = _agent(event, DCM, "110150")
    assert client["who"] == {"display": "unidentified client"}
    assert client["requestor"] is True
    assert client["network"] == {"address": "client.example.org", "type": "1"}
    assert "policy" not in client


def test_roles_that_are_not_codes_are_text_and_client_without_issuer() -> None:
    (event,) = _events(_record(roles=("ward  nurse", "admin"), issuer=None))
    user = _agent(event, PARTICIPATION, "IRCP")
    assert user["role"] == [
        {"text": "ward  nurse"},
        {"coding": [{"system": "urn:fhirwall:role", "code": "admin"}], "text": "admin"},
    ]
    assert user["who"]["identifier"] == {"value": "user-7"}
    assert _agent(event, DCM, "110150")["who"]["identifier"] == {
        "system": "urn:fhirwall:client",
        "value": "app-1",
    }


def test_records_without_request_id_still_get_stable_ids() -> None:
    record = _record(request_id="")
    first, again = _events(record), _events(dataclasses.replace(record))
    assert first[0]["id"] == again[0]["id"]
    assert "entity" not in first[0]  # nothing identifies the request, so no XrequestId entity

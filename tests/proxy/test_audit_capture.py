"""Filling audit records: route templates, request and error facts, consent verdicts, patients in bodies."""

from __future__ import annotations

import orjson
import pytest

from consent.evaluate import ConsentVerdict
from proxy.audit.capture import (
    describe_principal,
    describe_request,
    note_error,
    note_patients_in_body,
    note_stage,
    route_template,
    start_record,
)
from proxy.audit.context import CONSENT_WITHHELD, current_record, note_consent_verdict
from proxy.audit.record import AuditRecord, Decision
from proxy.auth.principal import Principal
from proxy.errors import AuthenticationError, ForbiddenError, NotFoundError, ProxyError
from proxy.fhir.request import classify


def new_record() -> AuditRecord:
    return AuditRecord(request_id="r1", method="GET", route="unclassified", interaction="unclassified")


@pytest.mark.parametrize(
    ("method", "path", "route", "interaction"),
    [
        ("GET", "/Patient/123", "/Patient/{id}", "read"),
        ("GET", "/Patient/123/_history/2", "/Patient/{id}/_history/{vid}", "vread"),
        ("GET", "/Patient/123/_history", "/Patient/{id}/_history", "history-instance"),
        ("GET", "/Observation", "/Observation", "search-type"),
        ("GET", "/Patient/123/Observation", "/Patient/{id}/Observation", "search-type"),
        ("POST", "/Patient", "/Patient", "create"),
        ("GET", "/Patient/123/$everything", "/Patient/{id}/$everything", "operation"),
        ("GET", "/metadata", "/metadata", "capabilities"),
    ],
)
def test_routes_never_carry_ids(method: str, path: str, route: str, interaction: str) -> None:
    record = new_record()
    describe_request(record, classify(method, path, ""), "")
    assert (record.route, record.interaction) == (route, interaction)
    assert "123" not in route_template(classify(method, path, ""))


def test_patients_named_by_the_request_are_recorded() -> None:
    record = new_record()
    describe_request(record, classify("GET", "/Patient/123/Observation", ""), "code=x")
    assert record.patients == {"123"}
    assert record.query == "code=x"


@pytest.mark.parametrize(
    ("error", "before", "after"),
    [
        (ForbiddenError(), Decision.NOT_EVALUATED, Decision.DENY),
        (AuthenticationError("no token"), Decision.NOT_EVALUATED, Decision.DENY),
        (NotFoundError(), Decision.PERMIT, Decision.DENY),
        (NotFoundError(), Decision.NOT_EVALUATED, Decision.NOT_EVALUATED),
        (ProxyError(), Decision.PERMIT, Decision.PERMIT),
    ],
)
def test_errors_set_status_reason_and_decision(error: ProxyError, before: str, after: str) -> None:
    record = new_record()
    record.decision = before
    note_error(record, error)
    assert (record.status, record.decision, record.reasons) == (error.status_code, after, [error.issue_code])


def test_patients_and_resources_in_a_bundle() -> None:
    bundle = {
        "resourceType": "Bundle",
        "entry": [
            {"resource": {"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/a"}}},
            {"resource": {"resourceType": "Patient", "id": "b"}},
            {"resource": {"resourceType": "OperationOutcome"}},
        ],
    }
    record = new_record()
    note_patients_in_body(record, orjson.dumps(bundle))
    assert record.patients == {"a", "b"}
    assert record.resources == ["Observation/o1", "Patient/b"]
    note_patients_in_body(record, b"not json")  # ignored


def test_consent_verdicts_reach_the_current_record_only() -> None:
    denied = ConsentVerdict(False, ("deny",), ("c1",), "consent")
    glass = ConsentVerdict(True, ("break-glass",), ("c2",), "break-glass")
    note_consent_verdict(denied)  # no request: nothing happens
    record = new_record()
    token = current_record.set(record)
    try:
        note_consent_verdict(denied)
        note_consent_verdict(glass)
        note_consent_verdict(denied)
    finally:
        current_record.reset(token)
    assert record.consent_ids == ["c1", "c2"]
    assert record.reasons == [CONSENT_WITHHELD]
    assert record.break_glass


SCOPE = {
    "method": "GET",
    "scheme": "https",
    "client": ("192.0.2.7", 5000),
    "headers": [
        (b"user-agent", b"old/1"),
        (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        (b"user-agent", b"curl/8"),
    ],
}
PRINCIPAL = Principal(
    issuer="https://idp.example",
    subject="u1",
    client_id="app",
    scope_text="openid patient/*.rs",
    expires_at=1.0,
)


def test_a_record_gathers_what_telemetry_uses() -> None:
    record = start_record(SCOPE, "r1")
    assert (record.method, record.client_address, record.scheme, record.user_agent) == (
        "GET",
        "192.0.2.7",
        "https",
        "curl/8",  # the last header wins
    )
    assert record.traceparent == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    describe_principal(record, PRINCIPAL)
    note_stage(record, "token", 1.0)
    assert record.scopes == ("openid", "patient/*.rs")
    assert [stage[:2] for stage in record.stages] == [("token", 1.0)]


def test_without_telemetry_a_record_leaves_out_what_only_telemetry_uses() -> None:
    record = start_record(SCOPE, "r1", telemetry=False)
    assert (record.request_id, record.method, record.client_address) == ("r1", "GET", "192.0.2.7")
    assert record.user_agent is record.scheme is record.traceparent is None
    describe_principal(record, PRINCIPAL)
    note_stage(record, "token", 1.0)
    assert (record.client_id, record.subject, record.issuer) == ("app", "u1", "https://idp.example")
    assert record.scopes == ()
    assert record.stages == []

"""Filling audit records: route templates, request and error facts, consent verdicts, patients in bodies."""

from __future__ import annotations

import orjson
import pytest

from consent.evaluate import ConsentVerdict
from proxy.audit.capture import describe_request, note_error, note_patients_in_body, route_template
from proxy.audit.context import CONSENT_WITHHELD, current_record, note_consent_verdict
from proxy.audit.record import AuditRecord, Decision
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

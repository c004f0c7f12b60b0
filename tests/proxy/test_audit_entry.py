"""Request entries of the audit log: a record's facts in, the same BALP AuditEvents out, bad ones refused."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from proxy.audit.balp import MAX_RESOURCE_ENTITIES, ObserverInfo, audit_events
from proxy.audit.chain import canonical
from proxy.audit.entry import EntryError, entry_events, entry_record, request_entry
from proxy.audit.record import AuditRecord, Decision
from tests.proxy.test_audit_balp import CASES, OBSERVER, _case_record, _record

BARE = ObserverInfo(name="fhirwall")


def _records() -> list[AuditRecord]:
    """Records covering every field the events are made of."""
    records = [_case_record(case, status) for case in CASES for status in (case.success, 403, 404, 500)]
    records += [
        _record(
            interaction="search-type",
            route="/Observation",
            resource_type="Observation",
            resource_id=None,
            query="code=8867-4&subject=Patient/p1",
            patients={"p3", "p1", "p2"},
            resources=[f"Observation/o{n}" for n in range(5)],
        ),
        _record(break_glass=True, consent_ids=["c1", "c2", "c1"], reasons=["break-glass", " "]),
        _record(
            status=403,
            decision=Decision.DENY,
            error_type="ConsentDeniedError",
            reasons=["consent-withheld"],
            consent_ids=["c9"],
            patients={"p1"},
        ),
        _record(masking_profile="research", masked_values=7, operation="$export", roles=("a b", "nurse")),
        _record(request_id="", started=1_700_000_000, duration_ms=0),  # ids from started|method|route|...
        _record(client_id=None, subject=None, fhir_user=None, issuer=None, token_id=None, roles=()),
        _record(client_address="host.example", user_agent="curl/8", scheme="https", scopes=("x",)),
        AuditRecord(request_id="r-1", method="GET", route="unclassified", interaction="unclassified"),
    ]
    return records


@pytest.mark.parametrize("observer", [OBSERVER, BARE], ids=["site", "bare"])
def test_events_from_an_entry_are_the_events_of_the_record(observer: ObserverInfo) -> None:
    for record in _records():
        logged = orjson.loads(canonical(request_entry(record, observer)))  # as written and read back
        expected = audit_events(record, observer=observer)
        assert entry_events(logged) == expected
        assert entry_events(logged) == expected  # the same however often they are made


def test_the_record_read_back_keeps_what_the_events_need() -> None:
    record = _record(patients={"p2", "p1"}, resources=["Patient/p1"], masking_profile="m", masked_values=2)
    entry = request_entry(record, OBSERVER)
    assert entry["patients"] == ["p1", "p2"]
    assert not {"user_agent", "stages", "scopes"} & set(entry)  # for telemetry, not for the events
    back, observer = entry_record(orjson.loads(canonical(entry)))
    assert observer == OBSERVER
    for field in ("request_id", "started", "duration_ms", "patients", "resources", "roles", "purpose_of_use"):
        assert getattr(back, field) == getattr(record, field), field
    assert (back.masking_profile, back.masked_values, back.outcome) == ("m", 2, record.outcome)


def test_fields_at_their_defaults_are_left_out() -> None:
    record = AuditRecord(
        request_id="r", method="GET", route="/metadata", interaction="capabilities", started=1.5
    )
    assert request_entry(record, BARE) == {
        "request_id": "r",
        "method": "GET",
        "route": "/metadata",
        "interaction": "capabilities",
        "started": 1.5,
        "status": 0,
        "duration_ms": 0.0,
        "decision": "not-evaluated",
        "observer": "fhirwall",
    }


def test_only_the_resources_an_event_can_name_are_kept() -> None:
    resources = ["Observation/o0", "", "Observation/o0"] + [f"Observation/o{n}" for n in range(300)]
    record = _record(resources=resources, resource_type=None, resource_id=None)
    entry = request_entry(record, OBSERVER)
    assert len(entry["resources"]) == MAX_RESOURCE_ENTITIES
    assert entry_events(orjson.loads(canonical(entry))) == audit_events(record, observer=OBSERVER)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bogus": 1}, "unknown request entry field"),
        ({"request_id": None}, "request_id must be a string"),
        ({"started": "yesterday"}, "started must be a number"),
        ({"duration_ms": True}, "duration_ms must be a number"),
        ({"status": 200.0}, "status must be an integer"),
        ({"patients": "p1"}, "patients must be a list of strings"),
        ({"roles": [1]}, "roles must be a list of strings"),
        ({"break_glass": "yes"}, "break_glass must be a boolean"),
        ({"observer": None}, "observer must be a string"),
        ({"subject": 7}, "subject must be a string"),
        ({"masked_values": "7"}, "masked_values must be an integer"),
    ],
)
def test_entries_that_are_not_valid_are_refused(change: dict[str, Any], message: str) -> None:
    entry = {**request_entry(_record(masked_values=1, masking_profile="m"), OBSERVER), **change}
    with pytest.raises(EntryError, match=message):
        entry_events(entry)


def test_an_entry_must_be_an_object() -> None:
    with pytest.raises(EntryError, match="JSON object"):
        entry_record(["not", "an", "entry"])  # type: ignore[arg-type]

"""Examining the audit trail: the filters of ``select`` and the "who accessed this patient" report."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from proxy.audit.chain import AuditChainWriter, read_events
from proxy.audit.query import (
    AccessLine,
    break_glass_of,
    client_of,
    decision_of,
    interaction_of,
    patient_access_report,
    patients_of,
    purpose_of,
    reason_of,
    recorded_of,
    select,
    user_of,
)
from tests.proxy.test_audit_chain import KEY, audit_event

IDENTIFIED = {"system": "https://idp.example.org", "value": "nurse-7"}


def events() -> list[dict[str, Any]]:
    return [
        audit_event(1, patient="p1", user="Practitioner/123", client="ehr", recorded="2024-05-01T08:00:00Z"),
        audit_event(
            2,
            patient="p1",
            user="Practitioner/123",
            client="ehr",
            recorded="2024-05-01T09:30:00Z",
            interaction="search-type",
        ),
        audit_event(
            3,
            patient="p2",
            user="Practitioner/123",
            client="ehr",
            recorded="2024-05-02T10:00:00Z",
            decision="deny",
            outcome="4",
        ),
        audit_event(
            4,
            patient="p1",
            user=IDENTIFIED,
            client="mobile",
            recorded="2024-05-03T10:00:00+02:00",
            purpose="ETREAT",
            break_glass=True,
        ),
        audit_event(
            5,
            patient=None,
            user="Practitioner/9",
            client="analytics",
            recorded="2024-05-04T00:00:00Z",
            resource="https://fhir.example.org/fhir/Patient/p1/_history/3",
            decision="deny",
            outcome="4",
        ),
        audit_event(6, patient=None, user=None, client=None, recorded="not a date", decision="not-evaluated"),
    ]


def ids(selected: Any) -> list[int]:
    return [int(event["extension"][1]["valueString"].rsplit(" ", 1)[1]) for event in selected]


def test_accessors() -> None:
    first, _, _, fourth, fifth, sixth = events()
    assert user_of(first) == "Practitioner/123"
    assert user_of(fourth) == "https://idp.example.org|nurse-7"
    assert user_of(sixth) is None
    assert client_of(first) == "ehr"
    assert client_of(sixth) is None
    assert patients_of(first) == {"p1"}
    assert patients_of(fifth) == {"p1"}  # an absolute, versioned reference to the Patient resource
    assert patients_of(sixth) == set()
    assert recorded_of(fourth) == datetime(2024, 5, 3, 8, 0, tzinfo=UTC)
    assert recorded_of(sixth) is None
    assert decision_of(first) == "permit"
    assert reason_of(first) == "decided by rule 1"
    assert break_glass_of(fourth)
    assert not break_glass_of(first)
    assert purpose_of(fourth) == "ETREAT"
    assert interaction_of(first) == "read"
    assert decision_of({}) is None
    assert interaction_of({"action": "E"}) == "E"
    assert purpose_of({"purposeOfEvent": [{"coding": [{"code": "HPAYMT"}]}]}) == "HPAYMT"


def test_no_filter_keeps_everything_in_order() -> None:
    assert ids(select(events())) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"patient": "p1"}, [1, 2, 4, 5]),
        ({"patient": "Patient/p1"}, [1, 2, 4, 5]),
        ({"patient": "p2"}, [3]),
        ({"patient": "nobody"}, []),
        ({"user": "Practitioner/123"}, [1, 2, 3]),
        ({"user": "nurse-7"}, [4]),
        ({"user": "https://idp.example.org|nurse-7"}, [4]),
        ({"user": "Practitioner/12"}, []),
        ({"client": "ehr"}, [1, 2, 3]),
        ({"client": "mobile"}, [4]),
        ({"decision": "deny"}, [3, 5]),
        ({"decision": "not-evaluated"}, [6]),
        ({"outcome": "4"}, [3, 5]),
        ({"since": datetime(2024, 5, 1, 9, 30, tzinfo=UTC)}, [2, 3, 4, 5]),
        ({"until": datetime(2024, 5, 1, 9, 30, tzinfo=UTC)}, [1]),
        ({"since": datetime(2024, 5, 3, 8, 0), "until": datetime(2024, 5, 4)}, [4]),  # naive = UTC
        ({"since": datetime(2024, 5, 3, 10, 0, tzinfo=timezone(timedelta(hours=2)))}, [4, 5]),
        ({"patient": "p1", "user": "Practitioner/123", "decision": "permit"}, [1, 2]),
        ({"patient": "p1", "client": "ehr", "since": datetime(2024, 5, 1, 9, tzinfo=UTC)}, [2]),
    ],
)
def test_filters(filters: dict[str, Any], expected: list[int]) -> None:
    assert ids(select(events(), **filters)) == expected


def test_absolute_user_reference_matches_a_relative_filter() -> None:
    event = audit_event(7, user="https://ehr.example.org/fhir/Practitioner/55")
    assert ids(select([event], user="Practitioner/55")) == [7]
    assert ids(select([event], user="Practitioner/5")) == []


def test_select_is_lazy() -> None:
    def stream() -> Any:
        yield audit_event(1)
        raise AssertionError("read too far")

    first = next(select(stream()))
    assert first["id"] == audit_event(1)["id"]


def test_patient_access_report() -> None:
    lines = patient_access_report(events(), "p1")
    assert lines == [
        AccessLine(
            user="Practitioner/123",
            client="ehr",
            purpose="TREAT",
            count=2,
            first=datetime(2024, 5, 1, 8, 0, tzinfo=UTC),
            last=datetime(2024, 5, 1, 9, 30, tzinfo=UTC),
            interactions={"read": 1, "search-type": 1},
            decisions={"permit": 2},
            outcomes={"0": 2},
            break_glass=0,
        ),
        AccessLine(
            user="https://idp.example.org|nurse-7",
            client="mobile",
            purpose="ETREAT",
            count=1,
            first=datetime(2024, 5, 3, 8, 0, tzinfo=UTC),
            last=datetime(2024, 5, 3, 8, 0, tzinfo=UTC),
            interactions={"read": 1},
            decisions={"permit": 1},
            outcomes={"0": 1},
            break_glass=1,
        ),
        AccessLine(
            user="Practitioner/9",
            client="analytics",
            purpose="TREAT",
            count=1,
            first=datetime(2024, 5, 4, tzinfo=UTC),
            last=datetime(2024, 5, 4, tzinfo=UTC),
            interactions={"read": 1},
            decisions={"deny": 1},
            outcomes={"4": 1},
            break_glass=0,
        ),
    ]
    assert patient_access_report(events(), "Patient/p2")[0].decisions == {"deny": 1}
    assert patient_access_report(events(), "nobody") == []


def test_report_groups_by_purpose_and_client() -> None:
    stream = [
        audit_event(1, purpose="TREAT", recorded="2024-01-01T00:00:03Z"),
        audit_event(2, purpose="TREAT", recorded="2024-01-01T00:00:01Z", decision="deny"),
        audit_event(3, purpose="HRESCH", recorded="2024-01-01T00:00:02Z"),
        audit_event(4, purpose=None, client="other", recorded="2024-01-01T00:00:00Z"),
    ]
    lines = patient_access_report(stream, "p1")
    assert [(line.client, line.purpose, line.count) for line in lines] == [
        ("other", None, 1),
        ("ehr-app", "TREAT", 2),
        ("ehr-app", "HRESCH", 1),
    ]
    treat = lines[1]
    assert treat.first == datetime(2024, 1, 1, 0, 0, 1, tzinfo=UTC)
    assert treat.last == datetime(2024, 1, 1, 0, 0, 3, tzinfo=UTC)
    assert treat.decisions == {"permit": 1, "deny": 1}


def test_reading_from_the_log(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    with AuditChainWriter(log, key=KEY, checkpoint_every=2) as writer:
        for event in events():
            writer.append(event)
    assert ids(select(read_events(log), patient="p1", decision="permit")) == [1, 2, 4]
    assert [line.count for line in patient_access_report(read_events(log), "p1")] == [2, 1, 1]

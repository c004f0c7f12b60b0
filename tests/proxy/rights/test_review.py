"""The access review over BALP AuditEvents made by the real builder: events mapped back to rights (table),
requests counted once, used and unused rights per role and user, dormant accounts, denials, output."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from proxy.audit.balp import ObserverInfo, audit_events
from proxy.audit.record import AuditRecord, Decision
from proxy.rights.model import parse_access_policy
from proxy.rights.review import (
    AccessReview,
    GrantedRight,
    Right,
    RoleReview,
    UserReview,
    access_review,
    review_json,
    review_text,
    rights_of,
)

Json = dict[str, Any]

OBSERVER = ObserverInfo(name="fhirwall-test", site="test-site")
START = datetime(2024, 1, 1, tzinfo=UTC)
END = datetime(2024, 4, 1, tzinfo=UTC)
LAB_CONDITION = "category.coding.where(code = 'laboratory').exists()"

POLICY = parse_access_policy(
    {
        "roles": {
            "clinician": {
                "description": "Physicians and nurses.",
                "isolation": "care-relationship",
                "permissions": [
                    {"resources": ["*"], "operations": ["read", "search"]},
                    {"resources": ["Observation", "Condition"], "operations": ["create", "update"]},
                    {"resources": ["Binary"], "operations": ["download"]},
                ],
            },
            "lab": {
                "isolation": "none",
                "permissions": [
                    {
                        "resources": ["Observation"],
                        "operations": ["read", "search", "create"],
                        "when": LAB_CONDITION,
                    }
                ],
            },
            "exporter": {"permissions": [{"resources": ["*"], "operations": ["export"]}]},
            "hr-admin": {"administers": ["revocations"]},
        },
        "assignments": {
            "users": {"Practitioner/ghost": ["exporter"], "doc-1": ["clinician"]},
            "clients": {"hr-system": ["hr-admin"]},
        },
    }
)


def _record(request_id: str, day: float, **changes: Any) -> AuditRecord:
    """A permitted read of an Observation by a clinician through the EHR, ``day`` days after ``START``."""
    record = AuditRecord(
        request_id=request_id,
        method="GET",
        route="/Observation/{id}",
        interaction="read",
        started=(START + timedelta(days=day)).timestamp(),
        resource_type="Observation",
        resource_id="o1",
        status=200,
        decision=Decision.PERMIT,
        client_id="ehr",
        subject="doc-1",
        fhir_user="Practitioner/doc-1",
        issuer="https://idp.example.org",
        roles=("clinician",),
        patients={"p1"},
        resources=["Observation/o1"],
    )
    return dataclasses.replace(record, **changes)


def _denied(record: AuditRecord) -> AuditRecord:
    return dataclasses.replace(
        record, decision=Decision.DENY, status=403, error_type="PolicyDeniedError", reasons=["forbidden"]
    )


def _search(request_id: str, day: float, patients: set[str], **changes: Any) -> AuditRecord:
    search: Json = {
        "route": "/Observation",
        "interaction": "search-type",
        "resource_id": None,
        "query": "code=1234",
        "resources": [],
    }
    return _record(request_id, day, **(search | {"patients": patients} | changes))


LAB = {"subject": "lab-1", "fhir_user": "Practitioner/lab-1", "roles": ("lab",)}
EXPORTER = {"subject": "exp-1", "fhir_user": "Practitioner/exp-1", "roles": ("exporter",)}
HR_SYSTEM = {"client_id": "hr-system", "subject": "hr-system", "fhir_user": None, "roles": ()}

RECORDS = [
    _record("r-old", -30, subject="old-1", fhir_user="Practitioner/old-1"),  # before the period
    _record("r1", 10),
    _search("r2", 11, {"p1", "p2", "p3"}),  # three events, one request
    _record(
        "r3", 12, method="POST", route="/Observation", interaction="create", resources=["Observation/new"]
    ),
    _denied(_record("r4", 13, method="DELETE", interaction="delete")),
    _denied(_search("r5", 15, set(), route="/Patient", **HR_SYSTEM)),
    _record("r6", 16, route="/Patient/{id}", resource_type="Patient", resource_id="p2", break_glass=True),
    _search("r7", 20, set(), route="/$export", interaction="operation", operation="export", **EXPORTER),
    _search("r8", 80, {"p1"}, route="/Patient/{id}/Observation", **LAB),
    _record("r9", 85, subject="nurse-9", fhir_user="Practitioner/nurse-9", roles=("nurse",)),
    _record("r-late", 100, subject="late-1", fhir_user="Practitioner/late-1"),  # after the period
]


def _events(records: list[AuditRecord]) -> list[Json]:
    return [event for record in records for event in audit_events(record, observer=OBSERVER)]


def _review(**options: Any) -> AccessReview:
    return access_review(_events(RECORDS), POLICY, START, END, **options)


def _role(review: AccessReview, name: str) -> RoleReview:
    return next(role for role in review.roles if role.name == name)


def _user(review: AccessReview, key: str) -> UserReview:
    return next(user for user in review.users if user.id == key)


def _used(uses: Any) -> dict[str, int]:
    return {use.right.text(): use.requests for use in uses}


# --- events back to rights ----------------------------------------------------------------------------

SYSTEM_LEVEL: Json = {"resource_type": None, "resource_id": None, "resources": []}

MAPPING = [
    ("read", {}, ["read on Observation"]),
    (
        "vread",
        {"interaction": "vread", "route": "/Observation/{id}/_history/{vid}"},
        ["history on Observation"],
    ),
    (
        "Binary read",
        {"route": "/Binary/{id}", "resource_type": "Binary", "resources": ["Binary/b1"]},
        ["download on Binary"],
    ),
    (
        "Binary vread",
        {"interaction": "vread", "resource_type": "Binary", "resources": ["Binary/b1"]},
        ["download on Binary"],
    ),
    ("search", {"interaction": "search-type", "route": "/Observation"}, ["search on Observation"]),
    (
        "compartment search",
        {"interaction": "search-type", "route": "/Patient/{id}/Observation", "resource_id": None},
        ["search on Observation"],
    ),
    (
        "system search with _type",
        {
            **SYSTEM_LEVEL,
            "interaction": "search-system",
            "route": "/",
            "query": "_type=Observation,Condition",
        },
        ["search on Observation", "search on Condition"],
    ),
    ("system search", {**SYSTEM_LEVEL, "interaction": "search-system", "route": "/"}, ["search on *"]),
    (
        "sealed page",
        {**SYSTEM_LEVEL, "interaction": "search-type", "route": "/_page", "query": "token=abc"}
        | {"resources": ["Condition/c1"]},
        ["search on Condition"],
    ),
    (
        "history of an instance",
        {"interaction": "history-instance", "route": "/Observation/{id}/_history"},
        ["history on Observation"],
    ),
    (
        "system history",
        {**SYSTEM_LEVEL, "interaction": "history-system", "route": "/_history"},
        ["history on *"],
    ),
    (
        "create",
        {"interaction": "create", "route": "/Observation", "resources": ["Observation/n"]},
        ["create on Observation"],
    ),
    ("refused create", {"interaction": "create", "resource_id": None, "resources": []}, ["create on ?"]),
    ("update", {"interaction": "update"}, ["update on Observation"]),
    ("patch", {"interaction": "patch"}, ["update on Observation"]),
    ("delete", {"interaction": "delete"}, ["delete on Observation"]),
    (
        "$everything",
        {"interaction": "operation", "operation": "everything", "route": "/Patient/{id}/$everything"},
        ["$everything on Patient"],
    ),
    (
        "$export",
        {**SYSTEM_LEVEL, "interaction": "operation", "operation": "export", "route": "/$export"},
        ["export on *"],
    ),
    (
        "type-level $export",
        {"interaction": "operation", "operation": "export", "route": "/Patient/$export"},
        ["export on Patient"],
    ),
    (
        "$reidentify",
        {"interaction": "operation", "operation": "reidentify", "route": "/Patient/{id}/$reidentify"},
        ["reidentify on Patient"],
    ),
    ("capabilities", {**SYSTEM_LEVEL, "interaction": "capabilities", "route": "/metadata"}, []),
    ("batch", {**SYSTEM_LEVEL, "interaction": "batch", "route": "/"}, []),
    ("transaction", {**SYSTEM_LEVEL, "interaction": "transaction", "route": "/"}, []),
    ("unclassified", {**SYSTEM_LEVEL, "interaction": "unclassified", "route": "unclassified"}, []),
]


@pytest.mark.parametrize(("case", "changes", "expected"), MAPPING, ids=[case for case, _, _ in MAPPING])
def test_an_event_maps_back_to_the_rights_it_used(case: str, changes: Json, expected: list[str]) -> None:
    event = audit_events(_record("req", 1, **changes), observer=OBSERVER)[0]
    assert [right.text() for right in rights_of(event)] == expected


def test_every_per_patient_event_of_a_search_gives_the_same_rights() -> None:
    events = audit_events(_search("req", 1, {"p1", "p2", "p3"}), observer=OBSERVER)
    assert len(events) == 3
    assert {rights_of(event) for event in events} == {(Right("Observation", "search"),)}


def test_grants_cover_rights_by_type_and_operation() -> None:
    assert GrantedRight("*", "read").covers(Right("Observation", "read"))
    assert GrantedRight("*", "read").covers(Right("*", "read"))  # system level
    assert GrantedRight("*", "read").covers(Right("?", "read"))
    assert not GrantedRight("Observation", "read").covers(Right("*", "read"))
    assert not GrantedRight("Observation", "read").covers(Right("?", "read"))
    assert GrantedRight("Observation", "*").covers(Right("Observation", "delete"))
    assert not GrantedRight("Observation", "read").covers(Right("Observation", "search"))


# --- the review ---------------------------------------------------------------------------------------


def test_requests_are_counted_once_and_out_of_period_events_ignored() -> None:
    review = _review()
    assert review.requests == 9  # r1..r9: the search's three events and the break-glass alert count once
    assert review.events == 11  # REST events in the period
    assert review.unattributed == 0
    users = {user.id for user in review.users}
    assert users == {
        "Practitioner/doc-1",
        "Practitioner/lab-1",
        "Practitioner/exp-1",
        "Practitioner/nurse-9",
        "hr-system",
    }


def test_roles_list_grants_holders_used_and_unused_rights() -> None:
    review = _review()
    assert [role.name for role in review.roles] == ["clinician", "lab", "exporter", "hr-admin"]
    clinician = _role(review, "clinician")
    assert clinician.description == "Physicians and nurses."
    assert clinician.isolation == "care-relationship"
    assert clinician.permissions == (
        "read/search on *",
        "create/update on Observation, Condition",
        "download on Binary",
    )
    assert clinician.holders == ("Practitioner/doc-1",)
    assert _used(clinician.used) == {
        "read on Observation": 1,
        "read on Patient": 1,
        "search on Observation": 1,
        "create on Observation": 1,
    }
    assert [grant.text() for grant in clinician.unused] == [
        "create on Condition",
        "update on Observation",
        "update on Condition",
        "download on Binary",
    ]
    lab = _role(review, "lab")
    assert lab.isolation == "none"
    assert _used(lab.used) == {"search on Observation": 1}
    assert [grant.text() for grant in lab.unused] == [
        f"read on Observation when: {LAB_CONDITION}",
        f"create on Observation when: {LAB_CONDITION}",
    ]
    exporter = _role(review, "exporter")
    assert _used(exporter.used) == {"export on *": 1}
    assert exporter.unused == ()
    hr = _role(review, "hr-admin")
    assert hr.holders == ("hr-system",)
    assert hr.administers == ("revocations",)
    assert (hr.used, hr.unused) == ((), ())
    assert review.roles_not_in_policy == {"nurse": ("Practitioner/nurse-9",)}


def test_a_user_has_roles_requests_used_and_unused_rights() -> None:
    doc = _user(_review(), "Practitioner/doc-1")
    assert (doc.kind, doc.aliases, doc.clients, doc.roles) == ("user", ("doc-1",), ("ehr",), ("clinician",))
    assert doc.roles_source == "audit log"
    assert doc.requests == {"total": 5, "permit": 4, "deny": 1}
    assert _used(doc.used) == {
        "read on Observation": 1,
        "read on Patient": 1,
        "search on Observation": 1,
        "create on Observation": 1,
    }
    assert [(role, grant.text()) for role, grant in doc.unused] == [
        ("clinician", "create on Condition"),
        ("clinician", "update on Observation"),
        ("clinician", "update on Condition"),
        ("clinician", "download on Binary"),
    ]
    assert doc.denied == {"PolicyDeniedError: forbidden": 1}
    assert doc.break_glass == 1
    assert doc.first_seen == START + timedelta(days=10)
    assert doc.last_seen == START + timedelta(days=16)
    assert doc.used_without_grant == ()


def test_use_outside_the_held_roles_and_clients_without_users() -> None:
    review = _review()
    nurse = _user(review, "Practitioner/nurse-9")
    assert nurse.roles == ("nurse",)
    assert _used(nurse.used_without_grant) == {"read on Observation": 1}
    assert nurse.unused == ()
    hr = _user(review, "hr-system")
    assert (hr.kind, hr.roles, hr.roles_source) == ("client", ("hr-admin",), "policy assignments")
    assert hr.requests == {"total": 1, "permit": 0, "deny": 1}
    assert hr.used == ()


def test_dormant_accounts_are_listed_and_earlier_users_without_recent_requests() -> None:
    dormant = {account.id: account for account in _review().dormant}
    assert set(dormant) == {"Practitioner/ghost", "Practitioner/old-1"}
    ghost = dormant["Practitioner/ghost"]
    assert (ghost.kind, ghost.listed_in_policy, ghost.roles, ghost.last_activity) == (
        "user",
        True,
        ("exporter",),
        None,
    )
    old = dormant["Practitioner/old-1"]
    assert (old.listed_in_policy, old.roles, old.last_activity) == (
        False,
        ("clinician",),
        START - timedelta(days=30),
    )


def test_a_shorter_dormancy_window_flags_accounts_quiet_at_the_end_of_the_period() -> None:
    dormant = {account.id: account for account in _review(dormant_days=30).dormant}
    # doc-1 is listed by subject and last asked on day 16; hr-system on day 15; exp-1 on day 20
    assert set(dormant) == {
        "Practitioner/ghost",
        "Practitioner/old-1",
        "doc-1",
        "hr-system",
        "Practitioner/exp-1",
    }
    assert dormant["doc-1"].last_activity == START + timedelta(days=16)
    assert dormant["hr-system"].listed_in_policy


def test_naive_bounds_are_utc_and_the_end_is_exclusive() -> None:
    naive = access_review(_events(RECORDS), POLICY, START.replace(tzinfo=None), END.replace(tzinfo=None))
    assert naive.requests == 9
    until_r1 = access_review(_events(RECORDS), POLICY, START, START + timedelta(days=10))
    assert until_r1.requests == 0


# --- output -------------------------------------------------------------------------------------------


def test_json_output_has_stable_keys() -> None:
    document = review_json(_review())
    json.dumps(document)  # plain JSON types only
    assert list(document) == [
        "report",
        "period",
        "dormant_days",
        "totals",
        "roles",
        "roles_not_in_policy",
        "users",
        "dormant",
        "denials",
    ]
    assert document["period"] == {"start": "2024-01-01T00:00:00Z", "end": "2024-04-01T00:00:00Z"}
    assert document["totals"] == {"events": 11, "requests": 9, "unattributed_requests": 0}
    role = document["roles"][0]
    assert list(role) == [
        "name",
        "description",
        "isolation",
        "permissions",
        "approves",
        "administers",
        "holders",
        "used",
        "unused",
    ]
    assert role["unused"][0] == {"resource": "Condition", "operation": "create", "when": None}
    doc = next(user for user in document["users"] if user["id"] == "Practitioner/doc-1")
    assert doc["unused"][0] == {
        "role": "clinician",
        "resource": "Condition",
        "operation": "create",
        "when": None,
    }
    assert {"resource": "Observation", "operation": "search", "requests": 1} in doc["used"]
    assert doc["first_seen"] == "2024-01-11T00:00:00Z"
    assert document["dormant"][0] == {
        "id": "Practitioner/ghost",
        "kind": "user",
        "listed_in_policy": True,
        "roles": ["exporter"],
        "last_activity": None,
    }
    assert document["denials"] == [
        {
            "id": "Practitioner/doc-1",
            "kind": "user",
            "count": 1,
            "by_reason": {"PolicyDeniedError: forbidden": 1},
        },
        {"id": "hr-system", "kind": "client", "count": 1, "by_reason": {"PolicyDeniedError: forbidden": 1}},
    ]


def test_text_output_has_every_section() -> None:
    text = review_text(_review())
    for heading in (
        "ACCESS REVIEW",
        "ROLES",
        "ROLES NOT IN THE POLICY",
        "USERS",
        "DORMANT ACCOUNTS",
        "DENIED",
    ):
        assert f"\n{heading}" in "\n" + text
    assert "UNUSED: create on Condition; update on Observation, Condition; download on Binary" in text
    assert "Practitioner/ghost (user, listed in the policy; roles exporter): last activity never" in text
    assert "Practitioner/doc-1: 1 (PolicyDeniedError: forbidden (1))" in text

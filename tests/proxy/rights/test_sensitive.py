"""Sensitive rules: which requests and answers need approvals, and how presented approvals are used."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from proxy.auth.principal import Principal
from proxy.rights.approvals import MemoryApprovalStore
from proxy.rights.errors import ApprovalRequiredError
from proxy.rights.model import parse_access_policy
from proxy.rights.sensitive import answer_rules, lifts_isolation, patient_rules, request_rules, use_approvals

POLICY = parse_access_policy(
    {
        "roles": {"clinician": {}, "emergency": {}, "officer": {"approves": ["*"]}},
        "sensitive": {
            "bulk": {"operations": ["export"]},
            "reid": {"operations": ["reidentify"], "except_roles": ["officer"]},
            "many": {"patients_over": 2},
            "glass": {"break_glass": True, "except_roles": ["emergency"]},
        },
    }
)


def principal(subject: str = "u1", purposes: tuple[str, ...] = ()) -> Principal:
    return Principal("https://issuer", subject, "app", "user/*.rs", 2e9, purpose_of_use=purposes)


@pytest.mark.parametrize(
    ("roles", "operation", "purposes", "expected"),
    [
        ({"clinician"}, "read", (), []),
        ({"clinician"}, "export", (), ["bulk"]),
        ({"clinician"}, "reidentify", (), ["reid"]),
        ({"officer"}, "reidentify", (), []),
        ({"clinician"}, "read", ("BTG",), ["glass"]),
        ({"emergency"}, "read", ("ETREAT",), []),
        ({"clinician"}, "export", ("BTG",), ["bulk", "glass"]),
        ({"clinician"}, None, ("TREAT",), []),
    ],
)
def test_request_rules(
    roles: set[str], operation: str | None, purposes: tuple[str, ...], expected: list[str]
) -> None:
    assert request_rules(POLICY, roles, operation, principal(purposes=purposes)) == expected


def test_break_glass_lifts_isolation_only_where_the_policy_governs_it() -> None:
    assert lifts_isolation(POLICY, principal(purposes=("BTG",)))
    assert not lifts_isolation(POLICY, principal())
    ungoverned = parse_access_policy({"roles": {"clinician": {}}})
    assert not lifts_isolation(ungoverned, principal(purposes=("BTG",)))


def bundle(*patients: str, nested: bool = False) -> bytes:
    entries: list[dict[str, Any]] = [
        {"resource": {"resourceType": "Observation", "subject": {"reference": f"Patient/{p}"}}}
        for p in patients
    ]
    if nested:
        entries = [{"resource": {"resourceType": "Bundle", "type": "searchset", "entry": entries}}]
    return orjson.dumps({"resourceType": "Bundle", "type": "searchset", "entry": entries})


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (bundle("a", "b"), []),
        (bundle("a", "a", "a", "a"), []),  # many entries, one patient
        (bundle("a", "b", "c"), ["many"]),
        (bundle("a", "b", "c", nested=True), ["many"]),  # one outer entry, three patients inside
        (orjson.dumps({"resourceType": "Bundle", "type": "searchset"}), []),
    ],
)
def test_answers_with_too_many_patients(body: bytes, expected: list[str]) -> None:
    assert answer_rules(POLICY, {"clinician"}, body) == expected
    assert patient_rules(POLICY, {"clinician"}, 3) == ["many"]


def test_each_rule_uses_one_approval_of_its_own() -> None:
    async def scenario() -> None:
        store = MemoryApprovalStore(POLICY.approvals)
        requester, officer = principal("u1"), principal("officer")
        bulk = await store.create("bulk", "export for the registry", requester)
        glass = await store.create("glass", "emergency", requester)
        for approval in (bulk, glass):
            await store.approve(approval.id, officer, True)
        header = POLICY.approvals.header
        presented = f"{glass.id}, {bulk.id}"
        used = await use_approvals(store, ["bulk", "glass"], presented, requester, "req-1", header)
        assert used == [bulk.id, glass.id]
        with pytest.raises(ApprovalRequiredError, match="bulk"):
            await use_approvals(store, ["bulk"], presented, requester, "req-2", header)
        with pytest.raises(ApprovalRequiredError, match="no approval was presented"):
            await use_approvals(store, ["bulk"], None, requester, "req-3", header)
        with pytest.raises(ApprovalRequiredError, match="not available"):
            await use_approvals(None, ["bulk"], bulk.id, requester, "req-4", header)

    asyncio.run(scenario())

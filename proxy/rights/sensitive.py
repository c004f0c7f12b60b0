"""Sensitive requests and two-person review: which policy rules a request sets off, and the approvals it
must present for them.

Rules by operation (e.g. ``export``, ``reidentify``) and break-glass are known before forwarding; rules by
the number of patients an answer carries are checked on the answer, after every filter (the body is
withheld when no approval is presented). Holders of a rule's ``except_roles`` need none. Each rule needs
its own approval: the approval header carries one id, or several separated by commas; an approval is
single-use (``ApprovalStore.use`` is atomic across replicas).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from consent.purpose import BREAK_GLASS_CODES
from proxy.auth.principal import Principal
from proxy.policy.filtering import entry_count, patients_of_entries
from proxy.rights.errors import ApprovalRequiredError
from proxy.rights.model import AccessPolicy

__all__ = [
    "ApprovalUser",
    "answer_rules",
    "counts_patients",
    "lifts_isolation",
    "patient_rules",
    "request_rules",
    "use_approvals",
]


class ApprovalUser(Protocol):
    """Consumes an approval for one rule (raises ``ApprovalRequiredError`` when it cannot be used)."""

    async def use(self, approval_id: str, principal: Principal, rule: str, request_id: str) -> Any: ...


def request_rules(
    policy: AccessPolicy, roles: Iterable[str], operation: str | None, principal: Principal
) -> list[str]:
    """The rules the request itself sets off (by operation, or break-glass)."""
    held = set(roles)
    break_glass = bool(set(principal.purpose_of_use) & BREAK_GLASS_CODES)
    return [
        name
        for name, rule in sorted(policy.sensitive.items())
        if not held & set(rule.except_roles)
        and ((operation is not None and operation in rule.operations) or (rule.break_glass and break_glass))
    ]


def lifts_isolation(policy: AccessPolicy, principal: Principal) -> bool:
    """A break-glass request lifts department isolation when the policy governs break-glass (the request got
    this far, so its approval was used or the caller holds an exempt role); never when it does not."""
    break_glass = bool(set(principal.purpose_of_use) & BREAK_GLASS_CODES)
    return break_glass and any(rule.break_glass for rule in policy.sensitive.values())


def patient_rules(policy: AccessPolicy, roles: Iterable[str], patients: int) -> list[str]:
    """The rules an answer carrying ``patients`` distinct patients sets off."""
    held = set(roles)
    return [
        name
        for name, rule in sorted(policy.sensitive.items())
        if rule.patients_over is not None
        and patients > rule.patients_over
        and not held & set(rule.except_roles)
    ]


def counts_patients(policy: AccessPolicy, roles: Iterable[str]) -> bool:
    """Whether answers must be counted for patients (a patients_over rule applies to the caller)."""
    return bool(patient_rules(policy, roles, 2**62))


def answer_rules(policy: AccessPolicy, roles: Iterable[str], body: bytes) -> list[str]:
    """The rules a Bundle answer sets off by the number of patients it carries. A Bundle with no nested
    Bundle and no more entries than the lowest threshold cannot exceed it, so it is not counted."""
    held = list(roles)
    if not counts_patients(policy, held):
        return []
    if body.count(b'"Bundle"') == 1:  # only the outer Bundle: each entry holds at most one resource
        lowest = min(r.patients_over for r in policy.sensitive.values() if r.patients_over is not None)
        if entry_count(body) <= lowest:
            return []
    return patient_rules(policy, held, len(patients_of_entries(body)))


async def use_approvals(
    store: ApprovalUser | None,
    rules: list[str],
    presented: str | None,
    principal: Principal,
    request_id: str,
    header: str,
) -> list[str]:
    """Use one presented approval per rule; the ids used, or ``ApprovalRequiredError`` for the first rule
    no presented approval covers."""
    ids = [item.strip() for item in (presented or "").split(",") if item.strip()]
    used: list[str] = []
    for rule in rules:
        unused = [approval_id for approval_id in ids if approval_id not in used]
        used.append(await _use_one(store, rule, unused, principal, request_id, header))
    return used


async def _use_one(
    store: ApprovalUser | None,
    rule: str,
    ids: list[str],
    principal: Principal,
    request_id: str,
    header: str,
) -> str:
    if store is None:
        raise ApprovalRequiredError(rule, "approvals are not available on this proxy", header)
    problem = "no approval was presented"
    for approval_id in ids:
        try:
            await store.use(approval_id, principal, rule, request_id)
        except ApprovalRequiredError as refused:
            problem = refused.problem
            continue
        return approval_id
    raise ApprovalRequiredError(rule, problem, header)

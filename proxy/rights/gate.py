"""The access-policy layer in the pipeline: per request, the caller's rights as the policy grants them.

``RightsGate.view_for(principal)`` gives a ``RightsView`` (or None for principals the policy exempts); the
enforcement point asks it, in order: may the caller perform this operation on this type at all
(``check_operation``); may the resource being written be written (``check_written``: conditions and care
relationship); and on the way back, which returned resources may be seen (``filter_body`` /
``check_resource``). A resource is visible when one of the caller's roles grants the operation on its type,
that permission's condition holds for it, and — for roles under department isolation — every patient it
belongs to is in the caller's care. Unknown means deny.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.auth.principal import Principal
from proxy.errors import NotFoundError
from proxy.fhir.compartment import patient_references
from proxy.policy.filtering import filter_bundle, patients_of_entries
from proxy.rights.approvals import ApprovalStore
from proxy.rights.attributes import AttributeResolver, StaffAttributes
from proxy.rights.care import CareFacts, CareIndex
from proxy.rights.errors import PolicyDeniedError
from proxy.rights.grants import CompiledPolicy, Grant
from proxy.rights.model import AccessPolicy
from proxy.rights.revocation import RevocationList

__all__ = ["RightsGate", "RightsView"]

_PATIENT_USERS = ("Patient/", "RelatedPerson/")


class RightsGate:
    """The access policy of one deployment, with its attribute and care-relationship lookups."""

    def __init__(
        self,
        policy: AccessPolicy,
        attributes: AttributeResolver,
        care: CareIndex,
        *,
        hide_existence: bool,
        approvals: ApprovalStore | None = None,
        revocations: RevocationList | None = None,
    ) -> None:
        self.policy = policy
        self.compiled = CompiledPolicy(policy)
        self.attributes = attributes
        self.care = care
        self.hide_existence = hide_existence
        self.approvals = approvals
        self.revocations = revocations

    async def check_revoked(self, principal: Principal) -> None:
        """``RevokedError`` (401) when the caller's user, client or token was revoked."""
        if self.revocations is not None:
            await self.revocations.refresh_if_due()
            self.revocations.check(principal)

    async def view_for(self, principal: Principal) -> RightsView | None:
        """The caller's rights for one request; None when the policy exempts the caller (patients)."""
        if principal.fhir_user and principal.fhir_user.startswith(_PATIENT_USERS):
            if self.policy.patients == "exempt":
                return None
            raise PolicyDeniedError("the access policy does not admit patients or their representatives")
        member = await self.attributes.attributes_for(principal)
        return RightsView(self, member)


@dataclass(slots=True)
class RightsView:
    """One caller's rights during one request."""

    gate: RightsGate
    member: StaffAttributes
    isolation_lifted: bool = False
    """Break-glass, approved or by an exempt role: department isolation does not apply to this request."""

    @property
    def roles(self) -> frozenset[str]:
        return self.member.roles

    def grants(self, resource_type: str, operations: Iterable[str]) -> tuple[Grant, ...]:
        """The caller's grants for any of ``operations`` on ``resource_type``."""
        compiled = self.gate.compiled
        return tuple(grant for op in operations for grant in compiled.grants(self.roles, resource_type, op))

    def check_operation(self, resource_type: str | None, operation: str) -> None:
        """Refuse when no role grants ``operation`` on the type (``*``: the system level) at all."""
        target = resource_type or "*"
        if not self.grants(target, (operation,)):
            held = ", ".join(sorted(self.roles)) or "none"
            where = f"on {target}" if resource_type else "at the system level"
            raise PolicyDeniedError(
                f"the access policy gives the roles held ({held}) no right to {operation} {where}"
            )

    def restricted(self, resource_type: str, operations: Iterable[str]) -> bool:
        """True unless a grant for the type needs neither a condition nor a care relationship."""
        return not any(
            grant.condition is None and (not grant.isolated or self.isolation_lifted)
            for grant in self.grants(resource_type, operations)
        )

    def unrestricted_everywhere(self, operations: Iterable[str]) -> bool:
        """Every type is granted without condition or isolation for all of ``operations``."""
        return all(not self.restricted("*", (op,)) for op in operations)

    async def check_written(self, resource: Mapping[str, Any], operation: str) -> None:
        """Refuse writing (or deleting) ``resource`` unless a grant for ``operation`` accepts it."""
        facts = await self._facts(patient_references(resource))
        if not self._accepts(resource, (operation,), facts):
            raise PolicyDeniedError(
                f"the access policy does not permit this {operation}: the resource is outside the "
                "conditions or the care relationships of the roles held"
            )

    async def check_resource(self, body: bytes, operations: Iterable[str]) -> None:
        """Refuse returning the one resource in ``body`` unless it is visible."""
        resource = orjson.loads(body)
        if not isinstance(resource, dict) or resource.get("resourceType") == "OperationOutcome":
            return
        facts = await self._facts(patient_references(resource))
        if self._accepts(resource, tuple(operations), facts):
            return
        if self.gate.hide_existence:
            raise NotFoundError()
        raise PolicyDeniedError("the resource is outside what the access policy lets the roles held see")

    async def filter_body(
        self, body: bytes, operations: Iterable[str], proven: tuple[str, str] | None = None
    ) -> tuple[bytes, int]:
        """The Bundle without the entries the caller may not see, and how many were dropped (the total is
        removed when anything could be dropped: other pages may hold withheld entries). ``proven``:
        ``(type, patient id)`` when every entry is known to be of that type and that patient's, so one
        decision covers them all."""
        ops = tuple(operations)
        if self.unrestricted_everywhere(ops):
            return body, 0
        slim = not self._conditions_apply(ops)
        if slim and proven is not None and await self._sees_all(ops, *proven):
            return body, 0
        facts = await self._facts(patients_of_entries(body)) if self._isolation_applies(ops) else {}

        def visible(resource: dict[str, Any]) -> bool:
            resource_type = resource.get("resourceType")
            return isinstance(resource_type, str) and self._accepts(resource, ops, facts)

        result = filter_bundle(body, visible, keep_total=False, seal_links=None, slim=slim)
        return result.body, result.dropped

    async def _sees_all(self, operations: tuple[str, ...], resource_type: str, patient: str) -> bool:
        """May the caller see any resource of ``resource_type`` of ``patient`` (no condition applies)?"""
        facts = await self._facts({patient})
        sample = {"resourceType": resource_type}
        return self._accepts(sample, operations, facts, patients={patient})

    def _accepts(
        self,
        resource: Mapping[str, Any],
        operations: tuple[str, ...],
        facts: Mapping[str, CareFacts],
        *,
        patients: set[str] | None = None,
    ) -> bool:
        """``patients``: the resource's patients when known already (else read from the resource)."""
        resource_type = resource.get("resourceType")
        if not isinstance(resource_type, str):
            return False
        grants = self.grants(resource_type, operations)
        if not grants:
            return False
        for grant in grants:
            if grant.condition is not None and not grant.condition.holds(resource, self.member.environment):
                continue
            if not grant.isolated or self.isolation_lifted:
                return True
            if patients is None:
                patients = patient_references(resource)
            if self._in_care(patients, facts):
                return True
        return False

    def _in_care(self, patients: set[str], facts: Mapping[str, CareFacts]) -> bool:
        """Every patient of the resource is in the caller's care (no patient: nothing to isolate)."""
        now = time.time()
        references = self.member.references
        return all(patient in facts and facts[patient].relates(references, now) for patient in patients)

    async def _facts(self, patients: set[str]) -> dict[str, CareFacts]:
        if not patients or not self.member.references:
            return {}
        return await self.gate.care.facts_for_all(patients)

    def _isolation_applies(self, operations: tuple[str, ...]) -> bool:
        if self.isolation_lifted:
            return False
        compiled = self.gate.compiled
        return any(grant.isolated for grant in compiled.all_grants(self.roles, operations))

    def _conditions_apply(self, operations: tuple[str, ...]) -> bool:
        compiled = self.gate.compiled
        return any(grant.condition is not None for grant in compiled.all_grants(self.roles, operations))

"""Consent enforcement in the pipeline: every returned resource that belongs to a patient is checked against
that patient's Consents (or the implicit policy), after the SMART checks.

The requester's side of the decision (actors, purposes, break-glass eligibility) comes only from the verified
token, never from request headers. Consents are looked up per patient through the ``ConsentStore`` (cached);
any lookup failure raises ``ConsentLookupError`` and the response is withheld. A patient reading their own
record (``fhirUser`` is that Patient) is not restricted by their own consent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson

from consent.errors import ConsentDeniedError
from consent.evaluate import AccessContext, BreakGlass, ConsentVerdict, ImplicitPolicy, evaluate
from consent.facts import ResourceFacts, facts_of
from consent.model import ConsentDirective, resource_independent
from consent.purpose import BREAK_GLASS_CODES
from consent.store import ConsentStore
from proxy.audit.context import note_consent_verdict
from proxy.auth.principal import Principal, claim_at
from proxy.errors import NotFoundError
from proxy.fhir.compartment import patient_id_of_reference, patient_references
from proxy.policy.actors import ActorResolver
from proxy.policy.filtering import filter_bundle, patients_of_entries
from proxy.settings import ConsentSettings

__all__ = ["ConsentGate"]

logger = logging.getLogger("fhirwall.consent")
Consents = dict[str, tuple[ConsentDirective, ...]]
_RAW_BUNDLE = msgspec.json.Decoder(dict[str, msgspec.Raw])
# what an unlabelled resource looks like to rules that never look at the resource
_NEUTRAL_FACTS = facts_of({"resourceType": "Basic"})
_VERDICT_SECONDS = 1.0  # how long a per-patient decision is reused (Consent periods are checked that often)


@dataclass(frozen=True)
class _Requester:
    principal: Principal
    context: AccessContext
    implicit: ImplicitPolicy
    break_glass: BreakGlass | None

    @property
    def key(self) -> tuple[Any, ...]:
        """Everything about the requester a decision depends on, except the time."""
        return (
            self.context.actors,
            self.context.purposes,
            self.context.action,
            self.implicit,
            self.break_glass,
        )


class ConsentGate:
    """Applies patient consent to response bodies for one deployment."""

    def __init__(
        self, settings: ConsentSettings, store: ConsentStore, actors: ActorResolver, *, hide_existence: bool
    ) -> None:
        self.settings = settings
        self.store = store
        self.actors = actors
        self.hide_existence = hide_existence
        self._recent: dict[tuple[str, int, tuple[Any, ...]], tuple[float, Any, ConsentVerdict]] = {}
        self._independence: dict[int, tuple[tuple[ConsentDirective, ...], bool]] = {}
        self._requesters: dict[int, tuple[Principal, float, _Requester]] = {}

    async def check_resource(self, principal: Principal, body: bytes) -> None:
        """Raise when the patients' consent does not permit returning the resource in ``body``."""
        resource = orjson.loads(body)
        consents = await self._consents_for(patient_references(resource))
        labelled = _labelled(resource)
        if self._nothing_to_withhold(principal, consents, body, labelled=labelled, total_gone=True):
            return  # (one resource: no total)
        requester = await self._requester(principal)
        if not labelled and all(self._independent(directives) for directives in consents.values()):
            if all(self._permits_patient(requester, patient, consents) for patient in consents):
                return
            self._refuse(None)
        verdict = self._verdict(requester, resource, consents)
        if verdict is not None and not verdict.permitted:
            self._refuse(verdict)

    def _refuse(self, verdict: ConsentVerdict | None) -> None:
        if self.hide_existence:
            raise NotFoundError()
        reasons = "; ".join(verdict.reasons) if verdict is not None else ""
        raise ConsentDeniedError(reasons or None)

    async def filter_body(
        self,
        principal: Principal,
        body: bytes,
        patients: set[str] | None = None,
        *,
        labelled: bool | None = None,
    ) -> bytes:
        """A Bundle without the entries whose patients' consent does not permit them (totals removed).
        ``patients``: every entry is already known to belong to these patients, and the total is gone;
        ``labelled``: whether any entry's resource carries security labels, if known (else the bytes tell)."""
        total_gone = patients is not None
        if patients is not None and all(principal.fhir_user == f"Patient/{p}" for p in patients):
            return body  # patients reading their own record (see _verdict)
        if patients is None:
            patients = patients_of_entries(body)
        consents = await self._consents_for(patients)
        if labelled is None:
            labelled = b'"security"' in body  # conservative: any member of that name anywhere
        if self._nothing_to_withhold(principal, consents, body, labelled=labelled, total_gone=total_gone):
            return body
        requester = await self._requester(principal)
        same_for_all = {p for p, directives in consents.items() if self._independent(directives)}
        if same_for_all == set(patients) and not labelled:
            return self._filter_by_patient(requester, body, consents, total_gone=total_gone)
        decided: dict[frozenset[str], bool] = {}

        def permitted(resource: dict[str, Any]) -> bool:
            key = frozenset(patient_references(resource))
            if key <= same_for_all and not _labelled(resource):
                if key not in decided:  # the rules do not look at unlabelled resources: decide once
                    decided[key] = _permits(self._verdict(requester, resource, consents))
                return decided[key]
            return _permits(self._verdict(requester, resource, consents))

        # totals are dropped: other pages may hold entries the consent withholds
        return filter_bundle(body, permitted, keep_total=False, seal_links=None).body

    def _filter_by_patient(
        self, requester: _Requester, body: bytes, consents: Consents, *, total_gone: bool
    ) -> bytes:
        """Nothing in the page is labelled and no rule looks at the resource: one decision per patient, and
        entries are read only for their compartment references (slim)."""
        permitted = {patient for patient in consents if self._permits_patient(requester, patient, consents)}
        if permitted == set(consents):  # nothing to drop
            return body if total_gone else _without_total(body)

        def visible(resource: dict[str, Any]) -> bool:
            return patient_references(resource) <= permitted

        return filter_bundle(body, visible, keep_total=False, seal_links=None, slim=True).body

    def _permits_patient(self, requester: _Requester, patient: str, consents: Consents) -> bool:
        """The verdict for any unlabelled resource of ``patient`` (no rule looks at the resource), reused
        for up to a second for the same Consents and requester facts (bursts of requests from one app)."""
        if requester.principal.fhir_user == f"Patient/{patient}":
            return True
        key = (patient, id(consents[patient]), requester.key)
        now = time.monotonic()
        remembered = self._recent.get(key)
        if remembered is not None and remembered[0] > now and remembered[1] is consents[patient]:
            note_consent_verdict(remembered[2])  # a reused verdict still counts for this request's audit
            return bool(remembered[2].permitted)
        verdict = self._decide(requester, _NEUTRAL_FACTS, {patient}, consents, "resource")
        if len(self._recent) > 10_000:
            self._recent.clear()
        self._recent[key] = (now + _VERDICT_SECONDS, consents[patient], verdict)
        return verdict.permitted

    def _nothing_to_withhold(
        self,
        principal: Principal,
        consents: Consents,
        body: bytes,
        *,
        labelled: bool,
        total_gone: bool = False,
    ) -> bool:
        """No Consent on file for anyone concerned, an implicit policy that permits normal data, and no
        security label (nor a total to remove): everything is permitted as it is."""
        if any(consents.values()) or self._implicit(principal) is not ImplicitPolicy.ALL_NORMAL:
            return False
        return not labelled and (total_gone or b'"total"' not in body)

    def _independent(self, directives: tuple[ConsentDirective, ...]) -> bool:
        """``resource_independent``, remembered per cached tuple of Consents (the store hands out the same
        tuple until they change)."""
        remembered = self._independence.get(id(directives))
        if remembered is not None and remembered[0] is directives:
            return remembered[1]
        if len(self._independence) > 10_000:
            self._independence.clear()
        independent = resource_independent(directives)
        self._independence[id(directives)] = (directives, independent)
        return independent

    async def forget(self, document: dict[str, Any] | None, body: bytes) -> None:
        """A Consent was written: drop the cached Consents of its patient on every replica (all patients
        when the answer does not say whose it was, e.g. a delete)."""
        patients = {
            patient
            for resource in (document, _json_or_none(body))
            if isinstance(resource, dict)
            for patient in _consent_patients(resource)
        }
        if not patients:
            await self.store.invalidate_all()
        for patient in patients:
            await self.store.invalidate(patient)

    async def _consents_for(self, patients: Iterable[str]) -> Consents:
        unique = sorted(set(patients))
        if len(unique) == 1:
            return {unique[0]: await self.store.consents_for(unique[0])}
        found = await asyncio.gather(*(self.store.consents_for(patient) for patient in unique))
        return dict(zip(unique, found, strict=True))

    async def _requester(self, principal: Principal) -> _Requester:
        """The requester's side of every decision in this request; reused for up to a second for the same
        verified token (its time then as old as a reused verdict's, see ``_permits_patient``)."""
        now = time.monotonic()
        remembered = self._requesters.get(id(principal))
        if remembered is not None and remembered[0] is principal and remembered[1] > now:
            return remembered[2]
        context = AccessContext(
            actors=await self.actors.actors_for(principal),
            purposes=frozenset(principal.purpose_of_use),
            when=datetime.now(UTC),
        )
        requester = _Requester(principal, context, self._implicit(principal), self._break_glass(principal))
        if len(self._requesters) > 10_000:
            self._requesters.clear()
        self._requesters[id(principal)] = (principal, now + _VERDICT_SECONDS, requester)
        return requester

    def _verdict(
        self, requester: _Requester, resource: dict[str, Any], consents: Consents
    ) -> ConsentVerdict | None:
        """The combined verdict over every patient the resource belongs to (None: nothing to decide).

        Patients reading their own record are not restricted by their own consent (right of access:
        HIPAA 164.524, GDPR Art. 15, PIPL Art. 45); everyone else's compartments are."""
        principal = requester.principal
        patients = {p for p in patient_references(resource) if principal.fhir_user != f"Patient/{p}"}
        if not patients:
            return None
        return self._decide(requester, facts_of(resource), patients, consents, resource.get("resourceType"))

    def _decide(
        self,
        requester: _Requester,
        facts: ResourceFacts,
        patients: set[str],
        consents: Consents,
        resource_type: Any,
    ) -> ConsentVerdict:
        """Every patient's Consents must permit (the first denial decides); break-glass is logged."""
        verdicts = [
            evaluate(
                consents[patient],
                requester.context,
                facts,
                implicit=requester.implicit,
                combining=self.settings.combining,
                break_glass=requester.break_glass,
            )
            for patient in sorted(patients)
        ]
        chosen = next((verdict for verdict in verdicts if not verdict.permitted), verdicts[0])
        note_consent_verdict(chosen)
        if chosen.permitted and chosen.basis == "break-glass":
            principal = requester.principal
            logger.warning(
                "BREAK-GLASS access: client=%s subject=%s type=%s reasons=%s",
                principal.client_id,
                principal.binding[:12],
                resource_type,
                "; ".join(chosen.reasons),
            )
        return chosen

    def _implicit(self, principal: Principal) -> ImplicitPolicy:
        for purpose in principal.purpose_of_use:
            if purpose in self.settings.implicit_policy_by_purpose:
                return ImplicitPolicy(self.settings.implicit_policy_by_purpose[purpose])
        return ImplicitPolicy(self.settings.implicit_policy)

    def _break_glass(self, principal: Principal) -> BreakGlass | None:
        if not set(principal.purpose_of_use) & BREAK_GLASS_CODES:
            return None
        policy = self.settings.break_glass
        eligible = bool(set(principal.roles) & set(policy.eligible_roles)) or principal.client_id in (
            policy.eligible_clients
        )
        justification = None
        if policy.justification_claim:
            value = claim_at(principal.claims, policy.justification_claim)
            justification = value if isinstance(value, str) and value.strip() else None
        return BreakGlass(
            eligible=eligible,
            justification=justification,
            justification_required=policy.require_justification,
        )


def _permits(verdict: ConsentVerdict | None) -> bool:
    return verdict is None or verdict.permitted


def _labelled(resource: dict[str, Any]) -> bool:
    meta = resource.get("meta")
    return isinstance(meta, dict) and bool(meta.get("security"))


def _json_or_none(body: bytes) -> Any:
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None


def _consent_patients(resource: dict[str, Any]) -> set[str]:
    """The patient a Consent is about (R4 ``patient``, R5 ``subject``)."""
    if resource.get("resourceType") != "Consent":
        return set()
    return {
        patient_id
        for key in ("patient", "subject")
        if isinstance(resource.get(key), dict)
        and isinstance(resource[key].get("reference"), str)
        and (patient_id := patient_id_of_reference(resource[key]["reference"])) is not None
    }


def _without_total(body: bytes) -> bytes:
    """The Bundle without ``total`` (other pages may hold entries the consent withholds)."""
    members = _RAW_BUNDLE.decode(body)
    if "total" not in members:
        return body
    del members["total"]
    return msgspec.json.encode(members)

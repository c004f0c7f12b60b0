"""The consent verdict for one resource: the patient's Consents, else the implicit policy, then break-glass.

1. **Which Consents count.** Only ``active`` ones whose ``Consent.period`` (R5) contains the request time,
   and not R4 Consents whose only scope is ``treatment`` or ``adr`` (consent to a procedure, advance
   directives: not rules about information). The others are ignored, and the reasons say so.
2. **Applicable Consents decide.** A counted Consent applies when its root provision matches the request
   and resource (``consent.matching``). Several applicable Consents combine by the deployment's rule:
   ``deny-overrides`` (any deny wins; the default), ``permit-overrides`` (any permit wins) or
   ``most-recent`` (the latest ``dateTime``/``date``; undated ones count as oldest; a tie is a deny).
3. **Otherwise the implicit policy decides** (IHE PCF): ``DENY`` (opt-in), ``ALL_NORMAL`` (opt-out: permit),
   ``BASIC_NORMAL`` (permit for treatment purposes: TREAT or a purpose under it), ``BREAK_GLASS_ONLY``.
   "Once a Consent exists, its terms override the implicit policy" is read per resource: a Consent whose
   root rule does not match a resource says nothing about it, so the implicit policy decides that resource.
   (A root rule with no constraints, the usual shape, matches every resource.)
4. **Sensitive data.** A resource with a DS4P sensitivity label is withheld unless the permit that decides
   explicitly covers each of its sensitivity codes: a ``securityLabel`` on the deciding provision or one of
   its ancestors covers the code. The implicit policy alone never releases sensitive data, nor data whose
   confidentiality is above N (R, V): its policies are about *normal* data.
5. **Break-glass.** When the request's purposes include BTG, ETREAT or ERTREAT and the caller passes a
   ``BreakGlass`` saying the requester is eligible (with a justification when one is required), a denial
   from any of the above becomes a permit with basis ``break-glass``. Never otherwise.

Reasons are meant for audit logs and error diagnostics, so they carry no identifiers, label codes or free
text (a Consent's id, a resource's sensitivity, a justification could all disclose something); the ids of
the deciding Consents are in ``ConsentVerdict.consent_ids``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal, get_args

from consent.facts import ResourceFacts, facts_of
from consent.labels import (
    CONFIDENTIALITY_ORDER,
    DEFAULT_CONFIDENTIALITY,
    effective_confidentiality,
    is_sensitive,
    sensitivity_codes,
)
from consent.matching import AccessContext, Decision, decide_consent
from consent.model import ConsentDirective
from consent.purpose import break_glass_purposes, is_treatment

__all__ = [
    "AccessContext",
    "Basis",
    "BreakGlass",
    "Combining",
    "ConsentVerdict",
    "ImplicitPolicy",
    "ResourceFacts",
    "evaluate",
    "facts_of",
]

Combining = Literal["deny-overrides", "permit-overrides", "most-recent"]
Basis = Literal["consent", "implicit", "break-glass"]

_NOT_PRIVACY_SCOPES = frozenset({"treatment", "adr"})
_SCOPE_SYSTEMS = frozenset({"", "http://terminology.hl7.org/CodeSystem/consentscope"})
_OLDEST = datetime.min.replace(tzinfo=UTC)
_NORMAL_RANK = CONFIDENTIALITY_ORDER.index(DEFAULT_CONFIDENTIALITY)


class ImplicitPolicy(StrEnum):
    """What applies when no counted Consent applies (IHE PCF implicit policies)."""

    DENY = "deny"
    ALL_NORMAL = "all-normal"
    BASIC_NORMAL = "basic-normal"
    BREAK_GLASS_ONLY = "break-glass-only"


@dataclass(frozen=True, slots=True)
class BreakGlass:
    """The deployment's view of a break-glass request (computed by the caller from trusted configuration)."""

    eligible: bool
    justification: str | None = None
    justification_required: bool = True

    @property
    def justified(self) -> bool:
        """True when a justification is present, or none is required."""
        return not self.justification_required or bool(self.justification and self.justification.strip())


@dataclass(frozen=True, slots=True)
class ConsentVerdict:
    """The outcome for one resource, with reasons for the audit trail."""

    permitted: bool
    reasons: tuple[str, ...]
    consent_ids: tuple[str, ...]
    basis: Basis


@dataclass(frozen=True, slots=True)
class _Applied:
    directive: ConsentDirective
    decision: Decision


def evaluate(
    consents: Iterable[ConsentDirective],
    context: AccessContext,
    facts: ResourceFacts,
    *,
    implicit: ImplicitPolicy,
    combining: Combining = "deny-overrides",
    break_glass: BreakGlass | None = None,
) -> ConsentVerdict:
    """The verdict for ``facts`` (one resource) under the patient's ``consents`` (see the module doc)."""
    if combining not in get_args(Combining):
        raise ValueError(f"unknown consent combining rule {combining!r}")
    reasons: list[str] = []
    counted = [directive for directive in consents if _counts(directive, context.when, reasons)]
    applied = [
        _Applied(directive, decision)
        for directive in counted
        if (decision := decide_consent(directive, context, facts)) is not None
    ]
    if len(applied) < len(counted):
        reasons.append(f"{len(counted) - len(applied)} Consent(s) in force do not apply to this resource")
    if applied:
        verdict = _by_consents(applied, combining, facts, reasons)
    else:
        verdict = _by_implicit(implicit, context, facts, reasons)
    return _with_break_glass(verdict, context, break_glass)


# --- which Consents count -----------------------------------------------------------------------------


def _counts(directive: ConsentDirective, when: datetime, reasons: list[str]) -> bool:
    if not directive.active:
        reasons.append(
            f"a Consent was ignored: its status is {directive.status}, only active ones are enforced"
        )
        return False
    if directive.period is not None and not directive.period.contains(when):
        reasons.append("a Consent was ignored: the request falls outside its period")
        return False
    scopes = {coding.code for coding in directive.scopes if coding.system in _SCOPE_SYSTEMS}
    if scopes and scopes <= _NOT_PRIVACY_SCOPES:
        reasons.append("a Consent was ignored: its scope is not about access to information")
        return False
    return True


# --- Consents decide ----------------------------------------------------------------------------------


def _by_consents(
    applied: list[_Applied], combining: Combining, facts: ResourceFacts, reasons: list[str]
) -> ConsentVerdict:
    winners = _winners(applied, combining)
    permitted = winners[0].decision.kind == "permit"
    ids = tuple(item.directive.id for item in winners if item.directive.id is not None)
    reasons.append(
        f"{len(applied)} applicable Consent(s) combined by {combining}: "
        f"{'permit' if permitted else 'deny'} by {_where(winners)}"
    )
    if permitted and not _sensitivity_released(winners, facts):
        reasons.append("sensitive data withheld: the permitting Consent does not name its sensitivity")
        permitted = False
    return ConsentVerdict(permitted, tuple(reasons), ids, "consent")


def _winners(applied: list[_Applied], combining: Combining) -> list[_Applied]:
    """The applicable Consents whose decision stands (all with the same kind)."""
    if combining == "most-recent":
        latest = max(_recorded(item) for item in applied)
        applied = [item for item in applied if _recorded(item) == latest]
    preferred = "permit" if combining == "permit-overrides" else "deny"
    chosen = [item for item in applied if item.decision.kind == preferred]
    return chosen or applied


def _recorded(item: _Applied) -> datetime:
    return item.directive.recorded or _OLDEST


def _where(winners: Sequence[_Applied]) -> str:
    paths = [path for item in winners for path in item.decision.paths]
    return ", ".join(
        sorted({"the root rule" if not path else "exception " + ".".join(map(str, path)) for path in paths})
    )


def _sensitivity_released(winners: Sequence[_Applied], facts: ResourceFacts) -> bool:
    needed = sensitivity_codes(facts.labels)
    covered = frozenset().union(*(item.decision.covered for item in winners))
    return needed <= covered


# --- the implicit policy ------------------------------------------------------------------------------


def _by_implicit(
    implicit: ImplicitPolicy, context: AccessContext, facts: ResourceFacts, reasons: list[str]
) -> ConsentVerdict:
    reasons.append(f"no applicable Consent: the implicit policy ({implicit.value}) decides")
    permitted = implicit is ImplicitPolicy.ALL_NORMAL or (
        implicit is ImplicitPolicy.BASIC_NORMAL and is_treatment(context.purposes)
    )
    if implicit is ImplicitPolicy.BASIC_NORMAL and not permitted:
        reasons.append("the implicit policy permits treatment purposes only")
    if permitted and is_sensitive(facts.labels):
        reasons.append("sensitive data withheld: the implicit policy never releases it without a Consent")
        permitted = False
    elif permitted and CONFIDENTIALITY_ORDER.index(effective_confidentiality(facts.labels)) > _NORMAL_RANK:
        reasons.append("restricted data withheld: the implicit policy releases normal data only")
        permitted = False
    return ConsentVerdict(permitted, tuple(reasons), (), "implicit")


# --- break-glass --------------------------------------------------------------------------------------


def _with_break_glass(
    verdict: ConsentVerdict, context: AccessContext, break_glass: BreakGlass | None
) -> ConsentVerdict:
    if verdict.permitted or not break_glass_purposes(context.purposes):
        return verdict
    refusal = _break_glass_refusal(break_glass)
    if refusal is not None or break_glass is None:
        return ConsentVerdict(False, (*verdict.reasons, str(refusal)), verdict.consent_ids, verdict.basis)
    overridden = "the patient's consent" if verdict.basis == "consent" else "the implicit policy"
    given = bool(break_glass.justification and break_glass.justification.strip())
    note = (
        f"BREAK-GLASS: an eligible requester overrode a denial by {overridden} "
        f"({'justification given' if given else 'no justification required'})"
    )
    return ConsentVerdict(True, (*verdict.reasons, note), verdict.consent_ids, "break-glass")


def _break_glass_refusal(break_glass: BreakGlass | None) -> str | None:
    """Why a break-glass request cannot override the denial, or None when it can."""
    if break_glass is None:
        return "break-glass asked for but not available to this request"
    if not break_glass.eligible:
        return "break-glass asked for by a requester who is not eligible"
    if not break_glass.justified:
        return "break-glass asked for without the required justification"
    return None

"""Whether a provision matches a request for one resource, and what one Consent decides (pure; no I/O).

**Matching** (IHE PCF): the elements of a provision are AND-ed, the repetitions of one element OR-ed, and an
absent element is no constraint.

* ``period`` must contain the request time; ``dataPeriod`` must enclose the resource's data date (an
  undated resource, or one whose date is only partly inside, does not match: the constraint is not proven).
* ``actor``: one actor reference is among ``AccessContext.actors`` (the parties the requester is or acts
  for, computed by the caller). The actor's ``role`` is not compared: the context carries who is asking,
  not in which consent role, so every actor is read as a party the rule is about.
* ``action``: the request's action is listed; a rule about ``access`` also covers the read-type actions
  (``READ_ACTIONS``).
* ``securityLabel``: ``consent.labels.label_matches`` (high-water mark, sensitivity subsumption).
* ``purpose``: a rule purpose covers one of the request's purposes (``consent.purpose.purpose_covers``).
* ``class``: a resource-type class names the resource's type; another class coding is one of its codes.
  R5 ``documentType``: one of its codes. ``code``: one of its codes (see ``consent.facts``).
* ``data``: ``instance`` — the resource is the one referenced; ``related`` and ``dependents`` — the
  resource is the one referenced or holds a reference to it; ``authoredby`` — the referenced party is one
  of its authors. (FHIR defines ``related`` as the referenced resource and those *it* refers to, which
  cannot be told without reading that resource; the proxy reads it like ``dependents``.)

**Deciding**: a Consent whose root provision does not match does not apply (None). Otherwise the most
specific matching provision decides: a matching provision with no matching exception decides by its own
kind; when several sibling exceptions match, their own decisions combine with deny winning, so an
exception granted in one branch never undoes a denial stated in another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from consent.coding import Coding
from consent.facts import ResourceFacts
from consent.labels import covered_sensitivity, label_matches
from consent.model import RESOURCE_TYPES_SYSTEM, ConsentDirective, DataReference, Kind, Provision
from consent.purpose import purpose_covers

__all__ = ["READ_ACTIONS", "AccessContext", "Decision", "decide_consent", "provision_matches"]

READ_ACTIONS: frozenset[str] = frozenset({"access", "read", "vread", "search", "history"})


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessContext:
    """Who asks, why, for what action and when.

    ``actors`` are relative references (``Practitioner/1``, ``Organization/3``, ``CareTeam/9``, ...) the
    requester is or acts for; ``purposes`` are ``v3-ActReason`` codes; ``when`` must be time-zone aware.
    """

    actors: frozenset[str]
    purposes: frozenset[str]
    when: datetime
    action: str = "access"

    def __post_init__(self) -> None:
        if self.when.tzinfo is None or self.when.utcoffset() is None:
            raise ValueError("AccessContext.when must be time-zone aware")


@dataclass(frozen=True, slots=True)
class Decision:
    """What one Consent decides: ``kind``, the deciding provision (``path`` of child indexes below the
    root; several when sibling exceptions agreed) and the sensitivity codes the deciding branches' security
    labels cover (a permit releases sensitive data only for those)."""

    kind: Kind
    paths: tuple[tuple[int, ...], ...]
    covered: frozenset[str] = field(default=frozenset())


def _within_period(provision: Provision, context: AccessContext, facts: ResourceFacts) -> bool:
    return provision.period is None or provision.period.contains(context.when)


def _actor(provision: Provision, context: AccessContext, facts: ResourceFacts) -> bool:
    return not provision.actors or any(actor.reference in context.actors for actor in provision.actors)


def _action(provision: Provision, context: AccessContext, facts: ResourceFacts) -> bool:
    if not provision.actions:
        return True
    return context.action in provision.actions or (
        "access" in provision.actions and context.action in READ_ACTIONS
    )


def _security_label(provision: Provision, context: AccessContext, facts: ResourceFacts) -> bool:
    return not provision.security_labels or any(
        label_matches(label, facts.labels) for label in provision.security_labels
    )


def _purpose(provision: Provision, context: AccessContext, facts: ResourceFacts) -> bool:
    return not provision.purposes or any(
        purpose_covers(rule, asked) for rule in provision.purposes for asked in context.purposes
    )


def _class_matches(coding: Coding, facts: ResourceFacts) -> bool:
    if coding.system == RESOURCE_TYPES_SYSTEM:
        return coding.code == facts.resource_type
    return coding in facts.codes


def _class(provision: Provision, context: AccessContext, facts: ResourceFacts) -> bool:
    return not provision.classes or any(_class_matches(coding, facts) for coding in provision.classes)


def _document_type(provision: Provision, context: AccessContext, facts: ResourceFacts) -> bool:
    return not provision.document_types or not facts.codes.isdisjoint(provision.document_types)


def _code(provision: Provision, context: AccessContext, facts: ResourceFacts) -> bool:
    return not provision.codes or not facts.codes.isdisjoint(provision.codes)


def _data_period(provision: Provision, context: AccessContext, facts: ResourceFacts) -> bool:
    if provision.data_period is None:
        return True
    return facts.data_date is not None and provision.data_period.encloses(facts.data_date)


def _data_matches(data: DataReference, facts: ResourceFacts) -> bool:
    if data.meaning == "authoredby":
        return data.reference in facts.authors
    if data.reference == facts.reference:
        return True
    return data.meaning in ("related", "dependents") and data.reference in facts.references


def _data(provision: Provision, context: AccessContext, facts: ResourceFacts) -> bool:
    return not provision.data or any(_data_matches(data, facts) for data in provision.data)


_CHECKS: tuple[Callable[[Provision, AccessContext, ResourceFacts], bool], ...] = (
    _within_period,
    _actor,
    _action,
    _purpose,
    _class,
    _document_type,
    _code,
    _security_label,
    _data_period,
    _data,
)


def provision_matches(provision: Provision, context: AccessContext, facts: ResourceFacts) -> bool:
    """True when every element ``provision`` states holds for this request and resource (children aside)."""
    return all(check(provision, context, facts) for check in _CHECKS)


def decide_consent(
    directive: ConsentDirective, context: AccessContext, facts: ResourceFacts
) -> Decision | None:
    """What the Consent decides for this request and resource, or None when it does not apply to them.

    Status and ``Consent.period`` are not looked at here (see ``consent.evaluate``).
    """
    if directive.root is None:
        return None
    return _decide(directive.root, context, facts, ())


def _decide(
    provision: Provision, context: AccessContext, facts: ResourceFacts, path: tuple[int, ...]
) -> Decision | None:
    if not provision_matches(provision, context, facts):
        return None
    found = [
        decision
        for index, child in enumerate(provision.children)
        if (decision := _decide(child, context, facts, (*path, index))) is not None
    ]
    own = covered_sensitivity(provision.security_labels)
    if not found:
        return Decision(provision.kind, (path,), own)
    denials = [decision for decision in found if decision.kind == "deny"]
    winners = denials or found
    covered = frozenset().union(*(decision.covered for decision in winners))
    return Decision(winners[0].kind, tuple(p for decision in winners for p in decision.paths), own | covered)

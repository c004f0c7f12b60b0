"""Examining the audit trail: select AuditEvents, and answer "who accessed this patient's data".

Pure functions over AuditEvent dicts (FHIR R4, IHE BALP) as the proxy writes them: the user is the agent
with ``requestor: true`` (``who.reference`` such as ``Practitioner/123``, or ``who.identifier``), the client
application the agent typed DCM ``110150`` (``who.identifier.value`` is the client_id), the patients the
entities whose ``what.reference`` is ``Patient/<id>`` (the BALP patient entity, type 1 / role 1, and a
Patient resource read or written), the decision the ``audit-decision`` extension. Feed them
``proxy.audit.chain.read_events`` (streaming) or any iterable of events.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "APPLICATION_AGENT",
    "BREAK_GLASS_EXTENSION",
    "DECISION_EXTENSION",
    "REASON_EXTENSION",
    "AccessLine",
    "break_glass_of",
    "client_of",
    "decision_of",
    "interaction_of",
    "patient_access_report",
    "patients_of",
    "purpose_of",
    "reason_of",
    "recorded_of",
    "select",
    "user_of",
]

DECISION_EXTENSION = "https://fhirwall.org/fhir/StructureDefinition/audit-decision"
REASON_EXTENSION = "https://fhirwall.org/fhir/StructureDefinition/audit-reason"
BREAK_GLASS_EXTENSION = "https://fhirwall.org/fhir/StructureDefinition/audit-break-glass"
APPLICATION_AGENT = "110150"
"""DICOM DCM code of the client application agent."""

Event = Mapping[str, Any]


def _dicts(value: object) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _codes(concept: object) -> list[str]:
    """The codes of a CodeableConcept (or of a bare Coding)."""
    concept = _dict(concept)
    codings = _dicts(concept.get("coding")) or [concept]
    return [code for coding in codings if isinstance(code := coding.get("code"), str)]


def _requestors(event: Event) -> list[dict[str, Any]]:
    return [agent for agent in _dicts(event.get("agent")) if agent.get("requestor") is True]


def _who(agent: Mapping[str, Any]) -> list[str]:
    """The names an agent is known by: its reference, its identifier value and ``system|value``."""
    who = _dict(agent.get("who"))
    names = []
    if isinstance(reference := who.get("reference"), str):
        names.append(reference)
    identifier = _dict(who.get("identifier"))
    if isinstance(value := identifier.get("value"), str):
        system = identifier.get("system")
        names.append(f"{system}|{value}" if isinstance(system, str) else value)
        if isinstance(system, str):
            names.append(value)
    return names


def user_of(event: Event) -> str | None:
    """The user (first requestor agent): ``who.reference``, else ``system|value`` of ``who.identifier``."""
    for agent in _requestors(event):
        if names := _who(agent):
            return names[0]
    return None


def client_of(event: Event) -> str | None:
    """The client application's id (``who.identifier.value`` of the agent typed DCM 110150)."""
    for agent in _dicts(event.get("agent")):
        if APPLICATION_AGENT in _codes(agent.get("type")):
            value = _dict(_dict(agent.get("who")).get("identifier")).get("value")
            if isinstance(value, str):
                return value
    return None


def _patient_id(reference: str) -> str | None:
    """The id in ``Patient/<id>``, ``<base>/Patient/<id>`` or ``Patient/<id>/_history/<v>``."""
    parts = reference.split("/")
    for index in range(len(parts) - 2, -1, -1):
        if parts[index] == "Patient" and parts[index + 1]:
            return parts[index + 1]
    return None


def patients_of(event: Event) -> set[str]:
    """The ids of the patients whose data the event is about."""
    patients = set()
    for entity in _dicts(event.get("entity")):
        reference = _dict(entity.get("what")).get("reference")
        if isinstance(reference, str) and (patient := _patient_id(reference)) is not None:
            patients.add(patient)
    return patients


def recorded_of(event: Event) -> datetime | None:
    """``recorded`` as an aware datetime (None when missing or not an instant)."""
    recorded = event.get("recorded")
    if not isinstance(recorded, str):
        return None
    try:
        return _aware(datetime.fromisoformat(recorded))
    except ValueError:
        return None


def _extension(event: Event, url: str) -> dict[str, Any]:
    for extension in _dicts(event.get("extension")):
        if extension.get("url") == url:
            return extension
    return {}


def decision_of(event: Event) -> str | None:
    """The access decision: ``permit``, ``deny`` or ``not-evaluated`` (None when not recorded)."""
    value = _extension(event, DECISION_EXTENSION).get("valueCode")
    return value if isinstance(value, str) else None


def reason_of(event: Event) -> str | None:
    """Why the decision was taken, as recorded."""
    value = _extension(event, REASON_EXTENSION).get("valueString")
    return value if isinstance(value, str) else None


def break_glass_of(event: Event) -> bool:
    """Whether the access used break-glass (emergency access)."""
    return _extension(event, BREAK_GLASS_EXTENSION).get("valueBoolean") is True


def purpose_of(event: Event) -> str | None:
    """The purpose(s) of use: the requestor's ``purposeOfUse`` codes, else ``purposeOfEvent`` (joined)."""
    codes = [
        code
        for agent in _requestors(event)
        for concept in _dicts(agent.get("purposeOfUse"))
        for code in _codes(concept)
    ]
    if not codes:
        codes = [code for concept in _dicts(event.get("purposeOfEvent")) for code in _codes(concept)]
    return ",".join(sorted(set(codes))) or None


def interaction_of(event: Event) -> str | None:
    """The restful interaction (``subtype`` codes, joined), else the ``action`` code."""
    codes = [code for concept in _dicts(event.get("subtype")) for code in _codes(concept)]
    if codes:
        return ",".join(codes)
    action = event.get("action")
    return action if isinstance(action, str) else None


def _outcome(event: Event) -> str | None:
    outcome = event.get("outcome")
    if isinstance(outcome, str):
        return outcome
    codes = _codes(_dict(outcome).get("code"))  # R5 shape: outcome.code is a Coding
    return codes[0] if codes else None


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _patient_arg(patient: str) -> str:
    if "/" not in patient:
        return patient
    return _patient_id(patient) or patient


def _user_matches(event: Event, user: str) -> bool:
    for agent in _requestors(event):
        for name in _who(agent):
            if name == user or ("/" in user and name.endswith("/" + user)):
                return True
    return False


def select(
    events: Iterable[Event],
    *,
    patient: str | None = None,
    user: str | None = None,
    client: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    decision: str | None = None,
    outcome: str | None = None,
) -> Iterator[Event]:
    """The events matching every filter given (lazily, in order).

    ``patient``: a patient id or ``Patient/<id>``. ``user``: the requestor's reference (``Practitioner/1``,
    also matching an absolute reference ending so), identifier value or ``system|value``. ``client``: the
    client_id. ``since`` (inclusive) and ``until`` (exclusive) compare with ``recorded``; naive datetimes are
    UTC, and events without a readable ``recorded`` never match a time filter. ``decision``: permit, deny or
    not-evaluated. ``outcome``: the AuditEvent outcome code (0, 4, 8, 12).
    """
    patient_id = None if patient is None else _patient_arg(patient)
    start = None if since is None else _aware(since)
    end = None if until is None else _aware(until)
    for event in events:
        if patient_id is not None and patient_id not in patients_of(event):
            continue
        if user is not None and not _user_matches(event, user):
            continue
        if client is not None and client_of(event) != client:
            continue
        if decision is not None and decision_of(event) != decision:
            continue
        if outcome is not None and _outcome(event) != outcome:
            continue
        if start is not None or end is not None:
            recorded = recorded_of(event)
            if (
                recorded is None
                or (start is not None and recorded < start)
                or (end is not None and recorded >= end)
            ):
                continue
        yield event


@dataclass(frozen=True, slots=True)
class AccessLine:
    """Accesses to one patient's data by one user through one client for one purpose of use.

    ``interactions``, ``decisions`` and ``outcomes`` count the events by interaction, decision (``unknown``
    when not recorded) and outcome code; ``break_glass`` counts the emergency accesses.
    """

    user: str | None
    client: str | None
    purpose: str | None
    count: int
    first: datetime | None
    last: datetime | None
    interactions: dict[str, int] = field(default_factory=dict)
    decisions: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    break_glass: int = 0


@dataclass(slots=True)
class _Group:
    count: int = 0
    first: datetime | None = None
    last: datetime | None = None
    interactions: Counter[str] = field(default_factory=Counter)
    decisions: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    break_glass: int = 0

    def add(self, event: Event) -> None:
        self.count += 1
        recorded = recorded_of(event)
        if recorded is not None:
            self.first = recorded if self.first is None else min(self.first, recorded)
            self.last = recorded if self.last is None else max(self.last, recorded)
        self.interactions[interaction_of(event) or "unknown"] += 1
        self.decisions[decision_of(event) or "unknown"] += 1
        self.outcomes[_outcome(event) or "unknown"] += 1
        self.break_glass += break_glass_of(event)


def patient_access_report(events: Iterable[Event], patient_id: str) -> list[AccessLine]:
    """Who accessed the patient's data: one line per (user, client, purpose of use), earliest access first.

    Every event naming the patient counts, denied and failed ones included (their ``decisions`` and
    ``outcomes`` say so). Memory grows with the number of groups, not of events.
    """
    groups: dict[tuple[str | None, str | None, str | None], _Group] = {}
    for event in select(events, patient=patient_id):
        key = (user_of(event), client_of(event), purpose_of(event))
        groups.setdefault(key, _Group()).add(event)
    lines = [
        AccessLine(
            user=user,
            client=client,
            purpose=purpose,
            count=group.count,
            first=group.first,
            last=group.last,
            interactions=dict(group.interactions.most_common()),
            decisions=dict(group.decisions.most_common()),
            outcomes=dict(group.outcomes.most_common()),
            break_glass=group.break_glass,
        )
        for (user, client, purpose), group in groups.items()
    ]
    never = datetime.max.replace(tzinfo=UTC)
    lines.sort(key=lambda line: (line.first or never, line.user or "", line.client or "", line.purpose or ""))
    return lines

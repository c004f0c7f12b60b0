"""Evidence for the periodic access review (least privilege), from the audit log and the access policy (pure).

``access_review`` reads BALP AuditEvents (``proxy.audit.chain.read_events``) once, in constant memory per
account, and answers: per role, what it grants, who held it and which of its rights were used or not; per
account, its roles, requests, used and unused rights and denials; which accounts are dormant.

**Requests, not events.** A search touching several patients gives one event per patient and a break-glass
or consent denial adds a Security Alert event: only REST events count, once per request id (BALP's
``XrequestId`` entity). A request's events are written together, so a window of recent ids suffices.

**Rights.** ``rights_of`` maps a REST event back to the policy's ``(resource type, operation)`` the way
``proxy.rights.operations.operation_of`` maps requests: the interaction from ``subtype``, the operation name
from the ``urn:fhirwall:operation`` subtype, the type from the query entity's path (or its ``_type``) for
searches, histories and operations, else from the first resource entity. ``*`` is the system level, ``?`` a
type the event does not name. A permitted request uses its rights; they are credited to every role held in
that request that grants them (conditions cannot be re-evaluated from the log, so a conditional grant counts).

**Accounts.** A user is the requestor agent (``who.reference``, else the subject); a request without a user
(a backend service) belongs to its client, whose roles come from ``assignments.clients`` because AuditEvents
carry roles on the user agent only.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

from proxy.audit.query import (
    APPLICATION_AGENT,
    break_glass_of,
    client_of,
    decision_of,
    reason_of,
    recorded_of,
)
from proxy.fhir.resource_types import R4_RESOURCE_TYPES
from proxy.rights.model import AccessPolicy, Permission

__all__ = [
    "SYSTEM",
    "UNKNOWN",
    "AccessReview",
    "DormantAccount",
    "GrantedRight",
    "Right",
    "RightUse",
    "RoleReview",
    "UserReview",
    "access_review",
    "granted_rights",
    "review_json",
    "review_text",
    "rights_of",
]

Event = Mapping[str, Any]
Json = dict[str, Any]

SYSTEM = "*"
"""The resource "type" of a system-level request (``/_history``, ``/$export``, a search without ``_type``)."""
UNKNOWN = "?"
"""The resource type of a request whose event names none (a refused create, an empty page)."""

_RESTFUL = "http://hl7.org/fhir/restful-interaction"
_OWN_INTERACTION = "urn:fhirwall:interaction"
_OPERATION = "urn:fhirwall:operation"
_REQUEST_ID = "XrequestId"
_QUERY_ROLE = "24"
_RESOURCE_ROLE = "4"
_BY_INTERACTION = {
    "read": "read",
    "vread": "history",
    "search-type": "search",
    "search-system": "search",
    "search-compartment": "search",
    "page": "search",
    "history-instance": "history",
    "history-type": "history",
    "history-system": "history",
    "create": "create",
    "update": "update",
    "patch": "update",
    "delete": "delete",
}
_CONTENT_READS = frozenset({"read", "vread"})
_RENAMED_OPERATIONS = {"export": "export", "reidentify": "reidentify"}
_OUTCOME_ERROR = re.compile(r"HTTP \d+ ([A-Za-z_][A-Za-z0-9_]*)")
_RECENT_REQUESTS = 4096


# --- rights ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Right:
    """An operation performed on a resource type (``*``: system level, ``?``: not named by the event)."""

    resource: str
    operation: str

    def text(self) -> str:
        return f"{self.operation} on {self.resource}"


@dataclass(frozen=True, slots=True)
class GrantedRight:
    """One resource type (or ``*``) and one operation (or ``*``) that a role's permission grants."""

    resource: str
    operation: str
    when: str | None = None

    def covers(self, right: Right) -> bool:
        """Whether this grant allows ``right`` (a system-level right needs a ``*`` grant)."""
        type_matches = self.resource in ("*", right.resource)
        return type_matches and self.operation in ("*", right.operation)

    def text(self) -> str:
        return f"{self.operation} on {self.resource}" + (f" when: {self.when}" if self.when else "")


@dataclass(frozen=True, slots=True)
class RightUse:
    """A right and the number of permitted requests that used it."""

    right: Right
    requests: int


def granted_rights(permissions: Iterable[Permission]) -> tuple[GrantedRight, ...]:
    """The permissions expanded to one right per operation and resource type (first occurrence kept)."""
    expanded = (
        GrantedRight(resource, operation, permission.when)
        for permission in permissions
        for operation in permission.operations
        for resource in permission.resources
    )
    return tuple(dict.fromkeys(expanded))


def rights_of(event: Event) -> tuple[Right, ...]:
    """The ``(resource type, operation)`` rights a REST AuditEvent exercised; empty for what the policy does
    not govern (capabilities, batch and transaction, unclassified requests)."""
    interaction = _subtype(event, (_RESTFUL, _OWN_INTERACTION))
    operation = _operation(interaction, _subtype(event, (_OPERATION,)))
    if interaction is None or operation is None:
        return ()
    return tuple(
        Right(type_, "download" if type_ == "Binary" and interaction in _CONTENT_READS else operation)
        for type_ in _resource_types(event)
    )


def _operation(interaction: str | None, name: str | None) -> str | None:
    if interaction == "operation":
        return None if not name else _RENAMED_OPERATIONS.get(name, f"${name}")
    return _BY_INTERACTION.get(interaction or "")


def _resource_types(event: Event) -> list[str]:
    """From the query entity's path or ``_type``, else from the first resource entity."""
    query = _query_target(event)
    if query is not None:
        segments, params = query
        if (named := _path_type(segments)) is not None:
            return [named]
        listed = [item for value in params.get("_type", ()) for item in value.split(",") if item]
        if listed:
            return list(dict.fromkeys(listed))
        if segments[:1] != ["_page"]:  # a sealed page names no type: its resources may
            return [SYSTEM]
    return [_first_resource_type(event) or UNKNOWN]


def _path_type(segments: list[str]) -> str | None:
    """``Type/...`` or, in a compartment search, ``Patient/{id}/Type``."""
    if len(segments) >= 3 and segments[2] in R4_RESOURCE_TYPES:
        return segments[2]
    if segments and segments[0] in R4_RESOURCE_TYPES:
        return segments[0]
    return None


def _query_target(event: Event) -> tuple[list[str], dict[str, list[str]]] | None:
    """The path segments and parameters of the query entity (``"{method} {path}[?{query}]"`` in base64)."""
    for entity in _dicts(event.get("entity")):
        query = entity.get("query")
        if _code(entity.get("role")) != _QUERY_ROLE or not isinstance(query, str):
            continue
        try:
            raw = base64.b64decode(query, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        path, _, text = raw.partition(" ")[2].partition("?")
        return [part for part in path.split("/") if part], parse_qs(text)
    return None


def _first_resource_type(event: Event) -> str | None:
    for entity in _dicts(event.get("entity")):
        reference = _dict(entity.get("what")).get("reference")
        if _code(entity.get("role")) == _RESOURCE_ROLE and isinstance(reference, str):
            return next((part for part in reference.split("/") if part in R4_RESOURCE_TYPES), None)
    return None


# --- event fields ------------------------------------------------------------------------------------


def _dicts(value: object) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _code(coding: object) -> str | None:
    code = _dict(coding).get("code")
    return code if isinstance(code, str) else None


def _subtype(event: Event, systems: tuple[str, ...]) -> str | None:
    for coding in _dicts(event.get("subtype")):
        if coding.get("system") in systems:
            return _code(coding)
    return None


def _request_key(event: Event) -> str:
    """The request id (``XrequestId`` entity), else the event id."""
    for entity in _dicts(event.get("entity")):
        if _code(entity.get("type")) == _REQUEST_ID:
            value = _dict(_dict(entity.get("what")).get("identifier")).get("value")
            if isinstance(value, str) and value:
                return value
    return f"event:{event.get('id')}"


def _denial_reason(event: Event) -> str:
    """The recorded reason, prefixed with the error type found in ``outcomeDesc``."""
    reason = reason_of(event) or "no reason recorded"
    description = event.get("outcomeDesc")
    found = _OUTCOME_ERROR.match(description) if isinstance(description, str) else None
    return f"{found.group(1)}: {reason}" if found else reason


@dataclass(frozen=True, slots=True)
class _Actor:
    """Who asked: a user (``kind`` user) or, without one, the client application (``kind`` client)."""

    kind: str
    id: str
    aliases: frozenset[str]
    roles: tuple[str, ...]


def _actor(event: Event) -> _Actor | None:
    for agent in _dicts(event.get("agent")):
        if agent.get("requestor") is not True:
            continue
        if APPLICATION_AGENT in (_code(coding) for coding in _dicts(_dict(agent.get("type")).get("coding"))):
            client = client_of(event)
            return None if client is None else _Actor("client", client, frozenset({client}), ())
        return _user(agent)
    return None


def _user(agent: Mapping[str, Any]) -> _Actor | None:
    who = _dict(agent.get("who"))
    reference = who.get("reference")
    subject = _dict(who.get("identifier")).get("value") or agent.get("name")
    names = [name for name in (reference, subject) if isinstance(name, str) and name]
    if not names:
        return None
    roles = [_role_name(concept) for concept in _dicts(agent.get("role"))]
    return _Actor("user", names[0], frozenset(names), tuple(sorted({role for role in roles if role})))


def _role_name(concept: Mapping[str, Any]) -> str | None:
    text = concept.get("text")
    if isinstance(text, str):
        return text
    codings = _dicts(concept.get("coding"))
    return _code(codings[0]) if codings else None


# --- the review --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoleReview:
    """One role of the policy: what it grants, who held it, which rights were used and which not."""

    name: str
    description: str
    isolation: str
    permissions: tuple[str, ...]
    approves: tuple[str, ...]
    administers: tuple[str, ...]
    holders: tuple[str, ...]
    used: tuple[RightUse, ...]
    unused: tuple[GrantedRight, ...]


@dataclass(frozen=True, slots=True)
class UserReview:
    """One account active in the period (``kind`` user, or client for requests without a user)."""

    id: str
    kind: str
    aliases: tuple[str, ...]
    clients: tuple[str, ...]
    roles: tuple[str, ...]
    roles_source: str
    requests: dict[str, int]
    used: tuple[RightUse, ...]
    unused: tuple[tuple[str, GrantedRight], ...]
    used_without_grant: tuple[RightUse, ...]
    denied: dict[str, int]
    break_glass: int
    first_seen: datetime
    last_seen: datetime


@dataclass(frozen=True, slots=True)
class DormantAccount:
    """An account without a request in the ``dormant_days`` before the end (``last_activity`` None: never)."""

    id: str
    kind: str
    listed_in_policy: bool
    roles: tuple[str, ...]
    last_activity: datetime | None


@dataclass(frozen=True, slots=True)
class AccessReview:
    """The access review of one period ``[start, end)``."""

    start: datetime
    end: datetime
    dormant_days: int
    events: int
    requests: int
    unattributed: int
    roles: tuple[RoleReview, ...]
    roles_not_in_policy: dict[str, tuple[str, ...]]
    users: tuple[UserReview, ...]
    dormant: tuple[DormantAccount, ...]


@dataclass(slots=True)
class _Usage:
    """What one account did in the period."""

    kind: str
    aliases: set[str] = field(default_factory=set)
    clients: set[str] = field(default_factory=set)
    roles: set[str] = field(default_factory=set)
    decisions: Counter[str] = field(default_factory=Counter)
    used: Counter[Right] = field(default_factory=Counter)
    denied: Counter[str] = field(default_factory=Counter)
    break_glass: int = 0
    first: datetime | None = None
    last: datetime | None = None


@dataclass(slots=True)
class _Seen:
    """An account's latest request up to the end of the period (for dormancy)."""

    kind: str
    last: datetime
    aliases: set[str]
    roles: tuple[str, ...]


class _Collector:
    """Feeds on events in log order; memory grows with accounts and roles, not with requests."""

    def __init__(self, policy: AccessPolicy, start: datetime, end: datetime) -> None:
        self.policy = policy
        self.start, self.end = start, end
        self.grants = {name: granted_rights(role.permissions) for name, role in policy.roles.items()}
        self.events = self.requests = self.unattributed = 0
        self.usage: dict[str, _Usage] = {}
        self.seen: dict[str, _Seen] = {}
        self.client_last: dict[str, datetime] = {}
        self.role_holders: dict[str, set[str]] = {}
        self.role_used: dict[str, Counter[Right]] = {name: Counter() for name in policy.roles}
        self._recent: deque[str] = deque(maxlen=_RECENT_REQUESTS)
        self._recent_set: set[str] = set()

    def add(self, event: Event) -> None:
        recorded = recorded_of(event)
        if recorded is None or recorded >= self.end or _code(event.get("type")) != "rest":
            return
        in_period = recorded >= self.start
        self.events += in_period
        if self._repeated(_request_key(event)):
            return
        actor = _actor(event)
        client = client_of(event)
        if client is not None:
            self.client_last[client] = max(recorded, self.client_last.get(client, recorded))
        if actor is not None:
            self._note_seen(actor, recorded)
        if in_period:
            self.requests += 1
            if actor is None:
                self.unattributed += 1
            else:
                self._note_usage(actor, client, recorded, event)

    def _repeated(self, key: str) -> bool:
        if key in self._recent_set:
            return True
        if len(self._recent) == self._recent.maxlen:
            self._recent_set.discard(self._recent[0])
        self._recent.append(key)
        self._recent_set.add(key)
        return False

    def _note_seen(self, actor: _Actor, recorded: datetime) -> None:
        seen = self.seen.get(actor.id)
        if seen is None:
            self.seen[actor.id] = _Seen(actor.kind, recorded, set(actor.aliases), actor.roles)
            return
        seen.aliases |= actor.aliases
        if recorded >= seen.last:
            seen.last, seen.roles = recorded, actor.roles

    def _note_usage(self, actor: _Actor, client: str | None, recorded: datetime, event: Event) -> None:
        usage = self.usage.setdefault(actor.id, _Usage(actor.kind))
        roles = self._roles_of(actor)
        usage.aliases |= actor.aliases
        usage.clients |= {client} if client else set()
        usage.roles |= set(roles)
        usage.first = recorded if usage.first is None else min(usage.first, recorded)
        usage.last = recorded if usage.last is None else max(usage.last, recorded)
        decision = decision_of(event) or "unknown"
        usage.decisions[decision] += 1
        usage.break_glass += break_glass_of(event)
        for role in roles:
            self.role_holders.setdefault(role, set()).add(actor.id)
        if decision == "deny":
            usage.denied[_denial_reason(event)] += 1
        elif decision == "permit":
            self._credit(usage, roles, rights_of(event))

    def _credit(self, usage: _Usage, roles: Iterable[str], rights: Iterable[Right]) -> None:
        """A permitted request's rights: used by the account, and by each held role that grants them."""
        for right in rights:
            usage.used[right] += 1
            for role in roles:
                if any(grant.covers(right) for grant in self.grants.get(role, ())):
                    self.role_used[role][right] += 1

    def _roles_of(self, actor: _Actor) -> tuple[str, ...]:
        """A request's roles: as recorded on the user agent; for a client, its ``assignments.clients``."""
        if actor.kind == "client":
            return tuple(sorted(self.policy.assignments.clients.get(actor.id, ())))
        return actor.roles


def access_review(
    events: Iterable[Event],
    policy: AccessPolicy,
    start: datetime,
    end: datetime,
    *,
    dormant_days: int = 90,
) -> AccessReview:
    """The access review of ``[start, end)`` (naive datetimes are UTC); events before ``start`` only count
    for dormancy, events after ``end`` not at all."""
    start, end = _aware(start), _aware(end)
    collector = _Collector(policy, start, end)
    for event in events:
        collector.add(event)
    return AccessReview(
        start=start,
        end=end,
        dormant_days=dormant_days,
        events=collector.events,
        requests=collector.requests,
        unattributed=collector.unattributed,
        roles=tuple(_role_review(collector, name) for name in policy.roles),
        roles_not_in_policy={
            role: tuple(sorted(holders))
            for role, holders in sorted(collector.role_holders.items())
            if role not in policy.roles
        },
        users=tuple(_user_review(collector, key) for key in sorted(collector.usage)),
        dormant=_dormant(collector, end - timedelta(days=dormant_days)),
    )


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _uses(counts: Counter[Right]) -> tuple[RightUse, ...]:
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0].resource, item[0].operation))
    return tuple(RightUse(right, count) for right, count in ordered)


def _unused(grants: Iterable[GrantedRight], used: Iterable[Right]) -> tuple[GrantedRight, ...]:
    rights = list(used)
    return tuple(grant for grant in grants if not any(grant.covers(right) for right in rights))


def _role_review(collector: _Collector, name: str) -> RoleReview:
    role = collector.policy.roles[name]
    used = collector.role_used[name]
    return RoleReview(
        name=name,
        description=role.description,
        isolation=collector.policy.isolation_of(name),
        permissions=tuple(_permission_text(permission) for permission in role.permissions),
        approves=tuple(role.approves),
        administers=tuple(role.administers),
        holders=tuple(sorted(collector.role_holders.get(name, ()))),
        used=_uses(used),
        unused=_unused(collector.grants[name], used),
    )


def _permission_text(permission: Permission) -> str:
    text = f"{'/'.join(permission.operations)} on {', '.join(permission.resources)}"
    return text + (f" when: {permission.when}" if permission.when else "")


def _user_review(collector: _Collector, key: str) -> UserReview:
    usage = collector.usage[key]
    held = sorted(role for role in usage.roles if role in collector.grants)
    grants = [grant for role in held for grant in collector.grants[role]]
    assert usage.first is not None  # set with the first request, like last
    assert usage.last is not None
    return UserReview(
        id=key,
        kind=usage.kind,
        aliases=tuple(sorted(usage.aliases - {key})),
        clients=tuple(sorted(usage.clients)),
        roles=tuple(sorted(usage.roles)),
        roles_source="policy assignments" if usage.kind == "client" else "audit log",
        requests=_decisions(usage.decisions),
        used=_uses(usage.used),
        unused=tuple((role, grant) for role in held for grant in _unused(collector.grants[role], usage.used)),
        used_without_grant=_uses(
            Counter({right: n for right, n in usage.used.items() if not any(g.covers(right) for g in grants)})
        ),
        denied=dict(usage.denied.most_common()),
        break_glass=usage.break_glass,
        first_seen=usage.first,
        last_seen=usage.last,
    )


def _decisions(counts: Counter[str]) -> dict[str, int]:
    totals = {"total": counts.total(), "permit": counts["permit"], "deny": counts["deny"]}
    return totals | {name: count for name, count in sorted(counts.items()) if name not in totals}


def _dormant(collector: _Collector, cutoff: datetime) -> tuple[DormantAccount, ...]:
    """Listed users and clients, and accounts seen before, without a request since ``cutoff``."""
    candidates = [*_listed_accounts(collector), *_unlisted_accounts(collector)]
    return tuple(
        account for account in candidates if account.last_activity is None or account.last_activity < cutoff
    )


def _listed_accounts(collector: _Collector) -> Iterable[DormantAccount]:
    """``assignments.users`` (matched by fhirUser or subject) and ``assignments.clients``."""
    assignments = collector.policy.assignments
    for name, roles in sorted(assignments.users.items()):
        seen = (seen.last for seen in collector.seen.values() if seen.kind == "user" and name in seen.aliases)
        yield DormantAccount(name, "user", True, tuple(roles), max(seen, default=None))
    for name, roles in sorted(assignments.clients.items()):
        yield DormantAccount(name, "client", True, tuple(roles), collector.client_last.get(name))


def _unlisted_accounts(collector: _Collector) -> Iterable[DormantAccount]:
    """Accounts seen in the log that the policy does not list (with the roles of their last request)."""
    assignments = collector.policy.assignments
    for key, seen in sorted(collector.seen.items()):
        if seen.kind == "client":
            if key not in assignments.clients:
                yield DormantAccount(key, "client", False, (), collector.client_last.get(key, seen.last))
        elif not seen.aliases & set(assignments.users):
            yield DormantAccount(key, "user", False, seen.roles, seen.last)


# --- output ------------------------------------------------------------------------------------------


def _instant(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _use_json(use: RightUse) -> Json:
    return {"resource": use.right.resource, "operation": use.right.operation, "requests": use.requests}


def _grant_json(grant: GrantedRight) -> Json:
    return {"resource": grant.resource, "operation": grant.operation, "when": grant.when}


def _role_json(role: RoleReview) -> Json:
    return {
        "name": role.name,
        "description": role.description,
        "isolation": role.isolation,
        "permissions": list(role.permissions),
        "approves": list(role.approves),
        "administers": list(role.administers),
        "holders": list(role.holders),
        "used": [_use_json(use) for use in role.used],
        "unused": [_grant_json(grant) for grant in role.unused],
    }


def _user_json(user: UserReview) -> Json:
    return {
        "id": user.id,
        "kind": user.kind,
        "aliases": list(user.aliases),
        "clients": list(user.clients),
        "roles": list(user.roles),
        "roles_source": user.roles_source,
        "requests": user.requests,
        "used": [_use_json(use) for use in user.used],
        "unused": [{"role": role} | _grant_json(grant) for role, grant in user.unused],
        "used_without_grant": [_use_json(use) for use in user.used_without_grant],
        "denied": user.denied,
        "break_glass": user.break_glass,
        "first_seen": _instant(user.first_seen),
        "last_seen": _instant(user.last_seen),
    }


def _dormant_json(account: DormantAccount) -> Json:
    return {
        "id": account.id,
        "kind": account.kind,
        "listed_in_policy": account.listed_in_policy,
        "roles": list(account.roles),
        "last_activity": _instant(account.last_activity),
    }


def _denials(review: AccessReview) -> list[UserReview]:
    denied = [user for user in review.users if user.requests["deny"]]
    return sorted(denied, key=lambda user: (-user.requests["deny"], user.id))


def review_json(review: AccessReview) -> Json:
    """The review as JSON with stable keys (for evidence archives)."""
    return {
        "report": "fhirwall access review",
        "period": {"start": _instant(review.start), "end": _instant(review.end)},
        "dormant_days": review.dormant_days,
        "totals": {
            "events": review.events,
            "requests": review.requests,
            "unattributed_requests": review.unattributed,
        },
        "roles": [_role_json(role) for role in review.roles],
        "roles_not_in_policy": {role: list(holders) for role, holders in review.roles_not_in_policy.items()},
        "users": [_user_json(user) for user in review.users],
        "dormant": [_dormant_json(account) for account in review.dormant],
        "denials": [
            {"id": user.id, "kind": user.kind, "count": user.requests["deny"], "by_reason": user.denied}
            for user in _denials(review)
        ],
    }


def review_text(review: AccessReview) -> str:
    """The review as a concise report with one section per question."""
    lines = [
        f"ACCESS REVIEW {_instant(review.start)} to {_instant(review.end)}",
        f"{review.requests} request(s) in {review.events} AuditEvent(s); "
        f"{review.unattributed} without an identified user or client",
        "",
        "ROLES",
    ]
    for role in review.roles:
        lines += _role_lines(role)
    if review.roles_not_in_policy:
        lines += ["", "ROLES NOT IN THE POLICY"]
        lines += [f"  {role}: {', '.join(holders)}" for role, holders in review.roles_not_in_policy.items()]
    lines += ["", "USERS"]
    for user in review.users:
        lines += _user_lines(user)
    lines += ["", f"DORMANT ACCOUNTS (no request in the {review.dormant_days} days before the end)"]
    lines += [_dormant_line(account) for account in review.dormant] or ["  none"]
    lines += ["", "DENIED ATTEMPTS"]
    lines += [_denial_line(user) for user in _denials(review)] or ["  none"]
    return "\n".join(lines) + "\n"


def _role_lines(role: RoleReview) -> list[str]:
    lines = [f"  {role.name}" + (f": {role.description}" if role.description else "")]
    lines.append(f"    grants: {'; '.join(role.permissions) or 'no data access'}")
    lines.append(f"    isolation: {role.isolation}")
    if role.approves:
        lines.append(f"    approves: {', '.join(role.approves)}")
    if role.administers:
        lines.append(f"    administers: {', '.join(role.administers)}")
    lines.append(f"    holders ({len(role.holders)}): {', '.join(role.holders) or 'none seen'}")
    lines.append(f"    used: {_uses_text(role.used)}")
    lines.append(f"    UNUSED: {_grants_text(role.unused)}")
    return lines


def _user_lines(user: UserReview) -> list[str]:
    known_as = f"; also {', '.join(user.aliases)}" if user.aliases else ""
    clients = f" via {', '.join(user.clients)}" if user.clients else ""
    counts = ", ".join(
        f"{name} {count}" for name, count in user.requests.items() if name != "total" and count
    )
    lines = [
        f"  {user.id} ({user.kind}{known_as}){clients}",
        f"    roles ({user.roles_source}): {', '.join(user.roles) or 'none'}",
        f"    requests: {user.requests['total']} ({counts}); "
        f"first {_instant(user.first_seen)}, last {_instant(user.last_seen)}",
        f"    used: {_uses_text(user.used)}",
    ]
    by_role: dict[str, list[GrantedRight]] = {}
    for role, grant in user.unused:
        by_role.setdefault(role, []).append(grant)
    for role, grants in by_role.items():
        lines.append(f"    unused ({role}): {_grants_text(grants)}")
    if user.used_without_grant:
        lines.append(f"    used without a granting role: {_uses_text(user.used_without_grant)}")
    if user.break_glass:
        lines.append(f"    break-glass requests: {user.break_glass}")
    return lines


def _dormant_line(account: DormantAccount) -> str:
    listed = ", listed in the policy" if account.listed_in_policy else ""
    roles = f"; roles {', '.join(account.roles)}" if account.roles else ""
    last = _instant(account.last_activity) or "never"
    return f"  {account.id} ({account.kind}{listed}{roles}): last activity {last}"


def _denial_line(user: UserReview) -> str:
    reasons = ", ".join(f"{reason} ({count})" for reason, count in user.denied.items())
    return f"  {user.id}: {user.requests['deny']} ({reasons})"


def _uses_text(uses: Iterable[RightUse]) -> str:
    return ", ".join(f"{use.right.text()} ({use.requests})" for use in uses) or "nothing"


def _grants_text(grants: Iterable[GrantedRight]) -> str:
    """Grants grouped like permissions: ``create/update on Observation, Condition when: <expr>``."""
    types: dict[tuple[str, str | None], list[str]] = {}
    for grant in grants:
        types.setdefault((grant.operation, grant.when), []).append(grant.resource)
    operations: dict[tuple[tuple[str, ...], str | None], list[str]] = {}
    for (operation, when), resources in types.items():
        operations.setdefault((tuple(resources), when), []).append(operation)
    parts = [
        f"{'/'.join(ops)} on {', '.join(resources)}" + (f" when: {when}" if when else "")
        for (resources, when), ops in operations.items()
    ]
    return "; ".join(parts) or "none"

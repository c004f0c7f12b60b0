"""Two-person review: approval requests for sensitive operations, granted by a second person, used once.

A caller asks (``create``): the request waits ``minutes_to_wait`` (at most ``approvals.request_minutes``) for
an approver. An approver who is not the requester (not the same token binding, not the same subject at the
same issuer, not the same fhirUser) grants it (``approve``) for at most ``approvals.max_minutes``, or
``deny``s it. The requester then sends its id with the sensitive request; ``use`` consumes it exactly once —
atomically across replicas in Redis (a compare-and-set script: whoever writes first wins, the others re-read
and find it used).

Redis layout: ``fhirwall:approval:<id>`` -> Approval JSON, expiring ``retain_seconds`` after the request or
the approval ran out (kept that long for display and review). Reasons are shown to approvers, never logged.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Final, Literal, Protocol, get_args

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from proxy.auth.principal import Principal
from proxy.errors import ForbiddenError, NotFoundError, ProxyError
from proxy.rights.errors import ApprovalRequiredError, RightsLookupError
from proxy.rights.model import ApprovalSettings

__all__ = [
    "KEY_PREFIX",
    "Approval",
    "ApprovalStateError",
    "ApprovalStatus",
    "ApprovalStore",
    "MemoryApprovalStore",
    "RedisApprovalStore",
    "label_of",
]

ApprovalStatus = Literal["pending", "approved", "denied", "used", "expired"]
StoredStatus = Literal["pending", "approved", "denied", "used"]
KEY_PREFIX: Final = "fhirwall:approval:"
RETAIN_SECONDS: Final = 86_400.0

_ID = re.compile(r"[A-Za-z0-9_-]{22,64}")
_STORED: Final[tuple[str, ...]] = get_args(StoredStatus)
_UNKNOWN = "no approval with this id exists (or it expired and was removed)"
_UNAVAILABLE = "approvals cannot be read or written (Redis is unavailable)"


class ApprovalStateError(ProxyError):
    """The approval request cannot be decided in its current state (already decided, or expired)."""

    status_code: ClassVar[int] = 409
    issue_code: ClassVar[str] = "conflict"
    default_message: ClassVar[str] = "the approval request is no longer pending"


@dataclass(frozen=True, slots=True)
class Approval:
    """One approval request and, once decided, its decision and use (times are epoch seconds)."""

    id: str
    rule: str
    reason: str = field(repr=False)
    requester: str
    requester_label: str
    requester_issuer: str
    requester_subject: str | None
    requester_fhir_user: str | None
    status: StoredStatus
    created_at: float
    request_expires_at: float
    approver_label: str | None = None
    approver_binding: str | None = None
    approved_at: float | None = None
    denied_at: float | None = None
    expires_at: float | None = None
    used_at: float | None = None
    used_by_request: str | None = None

    def status_at(self, now: float) -> ApprovalStatus:
        """The status at ``now``: a pending request or a granted approval past its time is ``expired``."""
        if self.status == "pending" and now >= self.request_expires_at:
            return "expired"
        if self.status == "approved" and self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return self.status

    def requested_by(self, principal: Principal) -> bool:
        """Is ``principal`` the requester (same binding, same subject at the issuer, or same fhirUser)?"""
        if principal.binding == self.requester:
            return True
        if principal.subject and principal.subject == self.requester_subject:
            return principal.issuer == self.requester_issuer
        return bool(principal.fhir_user) and principal.fhir_user == self.requester_fhir_user

    def retained_until(self, retain_seconds: float) -> float:
        """When the record may be forgotten."""
        return max(self.request_expires_at, self.expires_at or 0.0) + retain_seconds

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Approval:
        """Parse a stored approval (``RightsLookupError`` when it is not one: fail closed)."""
        try:
            data = orjson.loads(raw)
            if set(data) != {item.name for item in dataclasses.fields(cls)} or data["status"] not in _STORED:
                raise ValueError("unexpected fields")
            return cls(**data)
        except (orjson.JSONDecodeError, ValueError, TypeError) as exc:
            raise RightsLookupError("a stored approval cannot be understood") from exc


def label_of(principal: Principal) -> str:
    """Who a principal is, for display and audit: fhirUser, else subject, else client."""
    return principal.fhir_user or principal.subject or principal.client_id or "unknown"


class ApprovalStore(Protocol):
    """Approval requests shared by every replica."""

    settings: ApprovalSettings

    async def create(
        self, rule: str, reason: str, requester: Principal, minutes_to_wait: int | None = None
    ) -> Approval: ...

    async def get(self, approval_id: str) -> Approval | None: ...

    async def approve(
        self, approval_id: str, approver: Principal, approver_is_allowed: bool, minutes: int | None = None
    ) -> Approval: ...

    async def deny(self, approval_id: str, approver: Principal, approver_is_allowed: bool) -> Approval: ...

    async def use(self, approval_id: str, principal: Principal, rule: str, request_id: str) -> Approval: ...


Transition = Callable[[Approval | None, float], Approval]


class _Approvals:
    """The operations, as pure transitions over a stored approval; subclasses keep the records."""

    def __init__(
        self,
        settings: ApprovalSettings,
        *,
        clock: Callable[[], float] = time.time,
        retain_seconds: float = RETAIN_SECONDS,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self.retain_seconds = retain_seconds

    async def create(
        self, rule: str, reason: str, requester: Principal, minutes_to_wait: int | None = None
    ) -> Approval:
        """A new pending request (waiting at most ``approvals.request_minutes``)."""
        now = self._clock()
        wait = _bounded(minutes_to_wait, self.settings.request_minutes, self.settings.request_minutes)
        approval = Approval(
            id=secrets.token_urlsafe(24),
            rule=rule,
            reason=reason,
            requester=requester.binding,
            requester_label=label_of(requester),
            requester_issuer=requester.issuer,
            requester_subject=requester.subject,
            requester_fhir_user=requester.fhir_user,
            status="pending",
            created_at=now,
            request_expires_at=now + wait * 60,
        )
        await self._insert(approval)
        return approval

    async def get(self, approval_id: str) -> Approval | None:
        return await self._get(approval_id) if _ID.fullmatch(approval_id) else None

    async def approve(
        self, approval_id: str, approver: Principal, approver_is_allowed: bool, minutes: int | None = None
    ) -> Approval:
        """Grant a pending request for ``minutes`` (default ``default_minutes``, at most ``max_minutes``)."""
        valid = _bounded(minutes, self.settings.default_minutes, self.settings.max_minutes)

        def grant(approval: Approval | None, now: float) -> Approval:
            decided = _decidable(approval, approver, approver_is_allowed, now)
            return dataclasses.replace(
                decided,
                status="approved",
                approved_at=now,
                expires_at=now + valid * 60,
                **_approver(approver),
            )

        return await self._change(approval_id, grant)

    async def deny(self, approval_id: str, approver: Principal, approver_is_allowed: bool) -> Approval:
        """Refuse a pending request."""

        def refuse(approval: Approval | None, now: float) -> Approval:
            decided = _decidable(approval, approver, approver_is_allowed, now)
            return dataclasses.replace(decided, status="denied", denied_at=now, **_approver(approver))

        return await self._change(approval_id, refuse)

    async def use(self, approval_id: str, principal: Principal, rule: str, request_id: str) -> Approval:
        """Consume an approval for request ``request_id`` (``ApprovalRequiredError``: it is not usable)."""

        def consume(approval: Approval | None, now: float) -> Approval:
            problem = _unusable(approval, principal, rule, now)
            if problem is not None or approval is None:
                raise ApprovalRequiredError(rule, problem or _UNKNOWN, self.settings.header)
            return dataclasses.replace(approval, status="used", used_at=now, used_by_request=request_id)

        if not _ID.fullmatch(approval_id):
            raise ApprovalRequiredError(
                rule, _unusable(None, principal, rule, 0.0) or "", self.settings.header
            )
        return await self._change(approval_id, consume)

    async def _insert(self, approval: Approval) -> None:
        raise NotImplementedError

    async def _get(self, approval_id: str) -> Approval | None:
        raise NotImplementedError

    async def _change(self, approval_id: str, transition: Transition) -> Approval:
        """Apply ``transition`` to the stored approval atomically (it raises to refuse)."""
        raise NotImplementedError


def _bounded(minutes: int | None, default: int, most: int) -> int:
    return min(max(default if minutes is None else minutes, 1), most)


def _approver(approver: Principal) -> dict[str, Any]:
    return {"approver_label": label_of(approver), "approver_binding": approver.binding}


def _decidable(approval: Approval | None, approver: Principal, allowed: bool, now: float) -> Approval:
    """The approval, if ``approver`` may decide it now."""
    if approval is None:
        raise NotFoundError("no such approval request")
    if approval.requested_by(approver):
        raise ForbiddenError("self-approval is not allowed")
    if not allowed:
        raise ForbiddenError("the caller's roles may not decide approval requests for this rule")
    status = approval.status_at(now)
    if status != "pending":
        raise ApprovalStateError(f"the approval request is {status}, no longer pending")
    return approval


def _unusable(approval: Approval | None, principal: Principal, rule: str, now: float) -> str | None:
    """Why ``principal`` cannot use the approval for ``rule`` now (None: it can)."""
    if approval is None:
        return _UNKNOWN
    if approval.requester != principal.binding:
        return "the approval was requested by someone else"
    if approval.rule != rule:
        return f"the approval is for another rule ({approval.rule})"
    status = approval.status_at(now)
    if status == "approved":
        return None
    if status == "expired":
        if approval.status == "approved":
            return "the approval has expired"
        return "the approval request expired before it was approved"
    return _PROBLEMS[status]


_PROBLEMS: Final = {
    "pending": "the approval request has not been approved yet",
    "denied": "the approval request was denied",
    "used": "the approval has already been used",
}


class MemoryApprovalStore(_Approvals):
    """Approvals of one process (a single replica, and tests)."""

    def __init__(
        self,
        settings: ApprovalSettings,
        *,
        clock: Callable[[], float] = time.time,
        retain_seconds: float = RETAIN_SECONDS,
        max_entries: int = 100_000,
    ) -> None:
        super().__init__(settings, clock=clock, retain_seconds=retain_seconds)
        self._max = max_entries
        self._records: dict[str, Approval] = {}

    async def _insert(self, approval: Approval) -> None:
        if len(self._records) >= self._max:
            now = self._clock()
            self._records = {
                key: value
                for key, value in self._records.items()
                if value.retained_until(self.retain_seconds) > now
            }
        self._records[approval.id] = approval

    async def _get(self, approval_id: str) -> Approval | None:
        return self._records.get(approval_id)

    async def _change(self, approval_id: str, transition: Transition) -> Approval:
        changed = transition(self._records.get(approval_id), self._clock())  # no await: atomic
        self._records[approval_id] = changed
        return changed


_COMPARE_AND_SET = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""


class RedisApprovalStore(_Approvals):
    """Approvals shared through Redis; every change is a compare-and-set, so ``use`` succeeds once."""

    def __init__(
        self,
        redis: aioredis.Redis,
        settings: ApprovalSettings,
        *,
        clock: Callable[[], float] = time.time,
        retain_seconds: float = RETAIN_SECONDS,
        attempts: int = 100,
    ) -> None:
        super().__init__(settings, clock=clock, retain_seconds=retain_seconds)
        self._redis = redis
        self._attempts = attempts
        self._compare_and_set = redis.register_script(_COMPARE_AND_SET)

    async def _insert(self, approval: Approval) -> None:
        try:
            await self._redis.set(
                KEY_PREFIX + approval.id, approval.to_json(), px=self._ttl_ms(approval), nx=True
            )
        except RedisError as exc:
            raise RightsLookupError(_UNAVAILABLE) from exc

    async def _get(self, approval_id: str) -> Approval | None:
        raw = await self._raw(approval_id)
        return None if raw is None else Approval.from_json(raw)

    async def _change(self, approval_id: str, transition: Transition) -> Approval:
        for _ in range(self._attempts):
            raw = await self._raw(approval_id)
            changed = transition(None if raw is None else Approval.from_json(raw), self._clock())
            assert raw is not None  # every transition refuses a missing approval
            try:
                written = await self._compare_and_set(
                    keys=[KEY_PREFIX + approval_id], args=[raw, changed.to_json(), self._ttl_ms(changed)]
                )
            except RedisError as exc:
                raise RightsLookupError(_UNAVAILABLE) from exc
            if written == 1:
                return changed
        raise RightsLookupError("the approval is being changed by many requests at once; try again")

    async def _raw(self, approval_id: str) -> bytes | None:
        try:
            raw = await self._redis.get(KEY_PREFIX + approval_id)
        except RedisError as exc:
            raise RightsLookupError(_UNAVAILABLE) from exc
        return raw.encode() if isinstance(raw, str) else raw

    def _ttl_ms(self, approval: Approval) -> int:
        return max(1000, int((approval.retained_until(self.retain_seconds) - self._clock()) * 1000))

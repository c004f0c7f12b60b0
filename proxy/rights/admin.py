"""The administrative API (mounted under ``/admin``): revocations and two-person approvals, JSON in and out.

    POST   /revocations                      {kind, value, reason, until?}  -> 201 the revocation
    GET    /revocations                                                     -> 200 {revocations: [...]}
    DELETE /revocations/{kind}/{value}                                      -> 204 (404: not revoked)
    POST   /approval-requests                {rule, reason, wait_minutes?}  -> 201 {id, status, rule, ...}
    GET    /approval-requests/{id}                                          -> 200 the approval
    POST   /approval-requests/{id}/approve   {minutes?}                     -> 200 the approval
    POST   /approval-requests/{id}/deny                                     -> 200 the approval

Callers authenticate with the bearer tokens of the FHIR API; revoked callers are refused. Revocations need a
role that ``administers: [revocations]``; an approval request may be made by anyone authenticated, seen by its
requester and the approvers of its rule, and decided by an approver who is not the requester. Errors are
OperationOutcomes. Every mutation, allowed or refused, is reported to ``audit`` as an ``AdminEvent`` (never
with the reason text). ``until`` is an ISO 8601 instant (UTC when it has no offset) or epoch seconds.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from proxy.auth.principal import Principal
from proxy.errors import (
    ForbiddenError,
    InvalidRequestError,
    MalformedJsonError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    ProxyError,
    UnsupportedMediaTypeError,
)
from proxy.responses import outcome_response
from proxy.rights.approvals import Approval, ApprovalStore, label_of
from proxy.rights.attributes import AttributeResolver
from proxy.rights.grants import CompiledPolicy
from proxy.rights.model import AccessPolicy
from proxy.rights.revocation import Revocation, RevocationKind, RevocationList, RevocationStore

__all__ = ["AdminAction", "AdminApp", "AdminEvent"]

AdminAction = Literal["revoke", "lift-revocation", "approval-request", "approval-grant", "approval-deny"]
Authenticate = Callable[[str | None, str], Awaitable[Principal]]
MAX_BODY: Final = 16_384
MAX_REASON: Final = 2_000
MAX_VALUE: Final = 512
_KINDS: Final[dict[Any, RevocationKind]] = {"user": "user", "client": "client", "token": "token"}

logger = logging.getLogger("fhirwall.rights")


@dataclass(frozen=True, slots=True)
class AdminEvent:
    """One administrative action, allowed or refused (``status`` is the HTTP status answered).

    ``target``: the approval id, or the revocation kind; ``target_value``: the revoked user, client or token;
    ``rule``: the approval's sensitive rule. Actor fields are None when the caller was not authenticated."""

    action: AdminAction
    status: int
    target: str | None = None
    target_value: str | None = None
    rule: str | None = None
    subject: str | None = None
    client_id: str | None = None
    fhir_user: str | None = None
    issuer: str | None = None
    request_id: str | None = None


@dataclass(slots=True)
class _Call:
    """One request being answered: its parameters, the caller once known, and what the audit should name."""

    request: Request
    params: tuple[str, ...]
    principal: Principal | None = None
    roles: frozenset[str] = frozenset()
    target: str | None = None
    target_value: str | None = None
    rule: str | None = None


Handler = Callable[[_Call], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class _Route:
    method: str
    path: re.Pattern[str]
    action: AdminAction | None
    handler: Handler = field(compare=False)


class AdminApp:
    """The ASGI application of the administrative API."""

    def __init__(
        self,
        *,
        authenticate: Authenticate,
        public_base: Callable[[Request], str],
        attributes: AttributeResolver,
        compiled: CompiledPolicy,
        revocations: RevocationStore,
        revocation_list: RevocationList | None,
        approvals: ApprovalStore,
        policy: AccessPolicy,
        audit: Callable[[AdminEvent], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._authenticate = authenticate
        self._public_base = public_base
        self._attributes = attributes
        self._compiled = compiled
        self._revocations = revocations
        self._revocation_list = revocation_list
        self._approvals = approvals
        self._policy = policy
        self._audit = audit
        self._clock = clock
        approval = r"/approval-requests/([A-Za-z0-9_-]{1,64})"
        revocation = r"/revocations/(user|client|token)/(.+)"
        self._routes = (
            _Route("POST", re.compile(r"/revocations"), "revoke", self._revoke),
            _Route("GET", re.compile(r"/revocations"), None, self._list_revocations),
            _Route("DELETE", re.compile(revocation), "lift-revocation", self._lift),
            _Route("POST", re.compile(r"/approval-requests"), "approval-request", self._request_approval),
            _Route("GET", re.compile(approval), None, self._show_approval),
            _Route("POST", re.compile(approval + "/approve"), "approval-grant", self._approve),
            _Route("POST", re.compile(approval + "/deny"), "approval-deny", self._deny),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        response = await self._respond(request)
        await response(scope, receive, send)

    async def _respond(self, request: Request) -> Response:
        try:
            route, params = self._route(request)
        except ProxyError as error:
            return outcome_response(error)
        call = _Call(request, params)
        try:
            response = await route.handler(call)
        except ProxyError as error:
            response = outcome_response(error)
        except Exception:
            logger.exception("administrative request failed")
            response = outcome_response(ProxyError())
        if route.action is not None:
            self._report(route.action, call, response.status_code)
        return response

    def _route(self, request: Request) -> tuple[_Route, tuple[str, ...]]:
        path = _route_path(request.scope)
        matching = [(route, match) for route in self._routes if (match := route.path.fullmatch(path))]
        for route, match in matching:
            if route.method == request.method:
                return route, match.groups()
        if matching:
            raise MethodNotAllowedError("this method is not allowed on this administrative endpoint")
        raise NotFoundError("no such administrative endpoint")

    def _report(self, action: AdminAction, call: _Call, status: int) -> None:
        if self._audit is None:
            return
        caller = call.principal
        state = call.request.scope.get("state") or {}
        self._audit(
            AdminEvent(
                action=action,
                status=status,
                target=call.target,
                target_value=call.target_value,
                rule=call.rule,
                subject=caller.subject if caller else None,
                client_id=caller.client_id if caller else None,
                fhir_user=caller.fhir_user if caller else None,
                issuer=caller.issuer if caller else None,
                request_id=state.get("request_id"),
            )
        )

    # -- who is calling --------------------------------------------------------------------------------------

    async def _caller(self, call: _Call) -> Principal:
        """Authenticate, refuse revoked callers, and look up the caller's roles."""
        request = call.request
        principal = await self._authenticate(request.headers.get("authorization"), self._public_base(request))
        call.principal = principal
        if self._revocation_list is not None:
            await self._revocation_list.refresh_if_due()
            self._revocation_list.check(principal)
        call.roles = (await self._attributes.attributes_for(principal)).roles
        return principal

    async def _administrator(self, call: _Call) -> Principal:
        principal = await self._caller(call)
        if not call.roles & self._compiled.administrators("revocations"):
            raise ForbiddenError("the caller's roles do not administer revocations")
        return principal

    def _approver(self, call: _Call, rule: str) -> bool:
        return bool(call.roles & self._compiled.approvers_of(rule))

    # -- revocations -----------------------------------------------------------------------------------------

    async def _revoke(self, call: _Call) -> Response:
        principal = await self._administrator(call)
        body = await _json_object(call.request, {"kind", "value", "reason", "until"})
        kind = _kind(body)
        call.target = kind
        value = _text(body, "value", MAX_VALUE)
        call.target_value = value
        now = self._clock()
        until = _until(body.get("until"), now)
        reason = _text(body, "reason", MAX_REASON)
        revocation = Revocation(kind, value, reason, label_of(principal), now, until)
        await self._revocations.revoke(revocation)
        await self._refresh_list()
        return _json(201, _revocation_view(revocation, now))

    async def _list_revocations(self, call: _Call) -> Response:
        await self._administrator(call)
        now = self._clock()
        entries = sorted(await self._revocations.all(), key=lambda revocation: revocation.revoked_at)
        return _json(200, {"revocations": [_revocation_view(revocation, now) for revocation in entries]})

    async def _lift(self, call: _Call) -> Response:
        kind, value = call.params
        call.target, call.target_value = kind, value
        await self._administrator(call)
        if not await self._revocations.lift(kind, value):
            raise NotFoundError("no such revocation")
        await self._refresh_list()
        return Response(status_code=204, headers={"cache-control": "no-store"})

    async def _refresh_list(self) -> None:
        if self._revocation_list is not None:
            await self._revocation_list.refresh()

    # -- approvals -------------------------------------------------------------------------------------------

    async def _request_approval(self, call: _Call) -> Response:
        principal = await self._caller(call)
        body = await _json_object(call.request, {"rule", "reason", "wait_minutes"})
        rule = _text(body, "rule", 64)
        if rule not in self._policy.sensitive:
            raise InvalidRequestError("rule is not a sensitive rule of the access policy")
        call.rule = rule
        reason = _text(body, "reason", MAX_REASON)
        wait = _minutes(body, "wait_minutes")
        approval = await self._approvals.create(rule, reason, principal, wait)
        call.target = approval.id
        view = _approval_view(approval, self._clock())
        return _json(201, {key: view[key] for key in ("id", "status", "rule", "request_expires_at")})

    async def _show_approval(self, call: _Call) -> Response:
        principal = await self._caller(call)
        approval = await self._known_approval(call)
        if not (approval.requested_by(principal) or self._approver(call, approval.rule)):
            raise ForbiddenError(
                "only the requester and the approvers of its rule may see an approval request"
            )
        return _json(200, _approval_view(approval, self._clock()))

    async def _approve(self, call: _Call) -> Response:
        call.target = call.params[0]
        principal = await self._caller(call)
        approval = await self._known_approval(call)
        body = await _json_object(call.request, {"minutes"}, optional=True)
        minutes = _minutes(body, "minutes")
        allowed = self._approver(call, approval.rule)
        granted = await self._approvals.approve(approval.id, principal, allowed, minutes)
        return _json(200, _approval_view(granted, self._clock()))

    async def _deny(self, call: _Call) -> Response:
        call.target = call.params[0]
        principal = await self._caller(call)
        approval = await self._known_approval(call)
        allowed = self._approver(call, approval.rule)
        denied = await self._approvals.deny(approval.id, principal, allowed)
        return _json(200, _approval_view(denied, self._clock()))

    async def _known_approval(self, call: _Call) -> Approval:
        approval = await self._approvals.get(call.params[0])
        if approval is None:
            raise NotFoundError("no such approval request")
        call.rule = approval.rule
        return approval


# -- JSON in and out ---------------------------------------------------------------------------------------


def _route_path(scope: Scope) -> str:
    """The path below the mount point."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


async def _json_object(request: Request, fields: set[str], *, optional: bool = False) -> dict[str, Any]:
    """The request body as a JSON object with only ``fields`` (an empty body: {} when ``optional``)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise PayloadTooLargeError(f"administrative requests are limited to {MAX_BODY} bytes")
    if not body.strip() and optional:
        return {}
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaTypeError("send application/json")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise MalformedJsonError() from None
    if not isinstance(data, dict):
        raise InvalidRequestError("the body must be a JSON object")
    unknown = sorted(set(data) - fields)
    if unknown:
        raise InvalidRequestError(f"unknown fields {unknown} (expected: {', '.join(sorted(fields))})")
    return data


def _text(body: Mapping[str, Any], name: str, longest: int) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip() or len(value) > longest:
        raise InvalidRequestError(f"{name} must be a non-empty string of at most {longest} characters")
    return value.strip()


def _kind(body: Mapping[str, Any]) -> RevocationKind:
    kind = _KINDS.get(body.get("kind"))
    if kind is None:
        raise InvalidRequestError(f"kind must be one of {', '.join(_KINDS)}")
    return kind


def _minutes(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidRequestError(f"{name} must be a positive whole number of minutes")
    return value


def _until(value: Any, now: float) -> float | None:
    """``until`` as epoch seconds: an ISO 8601 instant (UTC without an offset) or a number; in the future."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        moment = float(value)
    elif isinstance(value, str):
        moment = parse_instant(value, "until")
    else:
        raise InvalidRequestError("until must be an ISO 8601 instant or epoch seconds")
    if moment <= now:
        raise InvalidRequestError("until must be in the future")
    return moment


def parse_instant(text: str, name: str) -> float:
    """An ISO 8601 date or instant as epoch seconds (UTC when it has no offset)."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidRequestError(f"{name} is not an ISO 8601 instant") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def instant(epoch: float | None) -> str | None:
    """Epoch seconds as an ISO 8601 UTC instant (``...Z``)."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _revocation_view(revocation: Revocation, now: float) -> dict[str, Any]:
    return {
        "kind": revocation.kind,
        "value": revocation.value,
        "reason": revocation.reason,
        "revoked_by": revocation.revoked_by,
        "revoked_at": instant(revocation.revoked_at),
        "until": instant(revocation.until),
        "active": revocation.active(now),
    }


def _approval_view(approval: Approval, now: float) -> dict[str, Any]:
    view = {
        "id": approval.id,
        "rule": approval.rule,
        "status": approval.status_at(now),
        "reason": approval.reason,
        "requester": approval.requester_label,
        "created_at": instant(approval.created_at),
        "request_expires_at": instant(approval.request_expires_at),
        "approver": approval.approver_label,
        "approved_at": instant(approval.approved_at),
        "denied_at": instant(approval.denied_at),
        "expires_at": instant(approval.expires_at),
        "used_at": instant(approval.used_at),
        "used_by_request": approval.used_by_request,
    }
    return {key: value for key, value in view.items() if value is not None}


def _json(status: int, body: Mapping[str, Any]) -> Response:
    return Response(
        orjson.dumps(body),
        status_code=status,
        media_type="application/json",
        headers={"cache-control": "no-store"},
    )

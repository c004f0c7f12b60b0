"""Applying the policy to a request before it is forwarded (the PEP's request half).

The pure decision comes from ``proxy.policy.smart``; this module carries it out: narrowing the query,
narrowing a conditional create, checking every batch entry, and — for restricted principals writing — fetching
the stored resource, checking it, and pinning its version with ``If-Match`` so the checked version is the
one written.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from proxy.call import ProxyCall
from proxy.enforcement import check_patch_result, narrowed_query
from proxy.errors import ForbiddenError, InvalidUpstreamResponseError, NotFoundError
from proxy.fhir.bundle import classify_entries
from proxy.fhir.request import Interaction
from proxy.policy.access import AccessView
from proxy.policy.decision import AccessDecision, ResponseCheck
from proxy.policy.smart import check_current, decide, decide_entries
from proxy.upstream import BufferedResponse, Upstream

__all__ = ["FetchCurrent", "authorize", "pin_version", "stored_resource"]

FetchCurrent = Callable[[ProxyCall, Upstream], Awaitable[BufferedResponse]]


async def authorize(call: ProxyCall, upstream: Upstream, fetch_current: FetchCurrent) -> None:
    """Decide, and change ``call`` as the decision requires; raise when the request is denied."""
    view = call.view
    assert view is not None
    request = call.request
    if call.raw_response or call.raw_body is not None:
        permission = "r" if call.raw_response else "u"
        if view.restricted("Binary", permission):
            raise ForbiddenError("raw Binary content is only available to tokens unrestricted on Binary")
    if request.interaction in (Interaction.BATCH, Interaction.TRANSACTION):
        _authorize_entries(call, view)
        return
    decision = decide(view, request, call.document, call.headers.get("if-none-exist"))
    call.decision = decision
    _apply_narrowing(call, decision)
    if decision.needs_current:
        await _check_current(call, view, upstream, fetch_current)


def _authorize_entries(call: ProxyCall, view: AccessView) -> None:
    assert call.document is not None
    requests = classify_entries(call.document, call.public_base)
    resources = [
        entry.get("resource") if isinstance(entry, dict) else None for entry in call.document.get("entry", [])
    ]
    decide_entries(view, list(zip(requests, resources, strict=True)))
    call.decision = AccessDecision(response=ResponseCheck.BUNDLE, total_is_exact=False)


def _apply_narrowing(call: ProxyCall, decision: AccessDecision) -> None:
    if decision.if_none_exist is not None:
        call.header_overrides["if-none-exist"] = decision.if_none_exist
    if not decision.extra_params:
        return
    if call.request.method == "POST" and call.body is not None and call.document is None:
        call.body = narrowed_query(call.body.decode("latin-1"), decision.extra_params).encode("latin-1")
    else:
        call.query = narrowed_query(call.query, decision.extra_params)


async def _check_current(call: ProxyCall, view: AccessView, upstream: Upstream, fetch: FetchCurrent) -> None:
    current = await stored_resource(call, upstream, fetch)
    if current is None:
        return
    check_current(view, call.request, current)
    if call.request.interaction is Interaction.PATCH:
        check_patch_result(view, current, call.body, call.document)
    if call.request.interaction is not Interaction.OPERATION:
        pin_version(call, current)


async def stored_resource(call: ProxyCall, upstream: Upstream, fetch: FetchCurrent) -> dict[str, Any] | None:
    """The stored resource a request changes, for checks before it is forwarded; None for an update that
    creates (nothing is stored yet: the new content was checked already). 404 when it does not exist."""
    answer = await fetch(call, upstream)
    if answer.status in (404, 410):
        if call.request.interaction is Interaction.UPDATE:
            return None
        raise NotFoundError()
    if answer.status != 200:
        raise InvalidUpstreamResponseError("the stored resource could not be fetched for the access check")
    return _resource(answer.body)


def pin_version(call: ProxyCall, current: dict[str, Any]) -> None:
    """Send ``If-Match`` with the checked version, so the version checked is the one changed."""
    version = (current.get("meta") or {}).get("versionId")
    if version and "if-match" not in call.headers:
        call.header_overrides["if-match"] = f'W/"{version}"'


def _resource(body: bytes) -> dict[str, Any]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidUpstreamResponseError("the stored resource is not valid JSON") from exc
    if not isinstance(document, dict):
        raise InvalidUpstreamResponseError("the stored resource is not a FHIR resource")
    return document

"""Liveness and readiness endpoints."""

from __future__ import annotations

import asyncio

import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy.errors import ProxyError
from proxy.state import ProxyState

__all__ = ["healthz", "readyz"]

READY_TIMEOUT_SECONDS = 3.0


async def healthz(request: Request) -> Response:
    """Liveness: the process answers."""
    return _json(200, {"status": "ok"})


async def readyz(request: Request) -> Response:
    """Readiness: every upstream answers ``/metadata`` and Redis (when configured) answers PING."""
    state: ProxyState = request.app.state.proxy
    checks = await asyncio.gather(
        *(_check_upstream(state, name) for name in state.upstream_names()), _check_redis(state)
    )
    results = dict(item for item in checks if item is not None)
    if state.audit_delivery is not None:
        delivery = state.audit_delivery.status()
        results["audit-delivery"] = (
            "ok"
            if delivery.failure is None and not state.audit_delivery.full
            else (delivery.failure or "backlog full")
        )
    ready = all(value == "ok" for value in results.values())
    return _json(200 if ready else 503, {"status": "ready" if ready else "not-ready", "checks": results})


async def _check_upstream(state: ProxyState, name: str) -> tuple[str, str]:
    upstream = state.router_by_name(name)
    try:
        answer = await asyncio.wait_for(
            upstream.send(
                "GET",
                upstream.url_for("/metadata"),
                {"accept": "application/fhir+json"},
                None,
                max_bytes=state.settings.limits.max_upstream_body_bytes,
            ),
            READY_TIMEOUT_SECONDS,
        )
    except (TimeoutError, ProxyError):
        return f"upstream:{name}", "unreachable"
    return f"upstream:{name}", "ok" if answer.status == 200 else f"status {answer.status}"


async def _check_redis(state: ProxyState) -> tuple[str, str] | None:
    if state.redis is None:
        return None
    try:
        await asyncio.wait_for(state.redis.ping(), READY_TIMEOUT_SECONDS)
    except Exception:  # any Redis failure means not ready
        return "redis", "unreachable"
    return "redis", "ok"


def _json(status: int, payload: object) -> Response:
    return Response(
        orjson.dumps(payload),
        status_code=status,
        media_type="application/json",
        headers={"cache-control": "no-store"},
    )

"""The ASGI application: ``create_app(settings) -> Starlette``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from proxy.auth.authenticator import Authenticator
from proxy.auth.dev_issuer import PERSONAS
from proxy.errors import MethodNotAllowedError, NotFoundError, ProxyError
from proxy.gc_tuning import tune_gc
from proxy.health import healthz, readyz
from proxy.middleware import RequestContextMiddleware
from proxy.pipeline import FhirEndpoint
from proxy.responses import outcome_response
from proxy.rights.admin import AdminApp
from proxy.rights.admin_audit import admin_auditor
from proxy.rights.gate import RightsGate
from proxy.settings import Settings
from proxy.state import ProxyState

__all__ = ["create_app"]


def create_app(settings: Settings) -> Starlette:
    """Build the proxy application for ``settings`` (pools open in the lifespan)."""
    state = ProxyState(settings)
    endpoint = FhirEndpoint(
        settings,
        state.router,
        state.rewriter,
        state.authenticator,
        state.sealer,
        state.discovery,
        state.consent_gate,
        state.masking,
        state.reidentifier,
        state.audit,
        state.audit_delivery,
        state.rights,
        limiter=state.limiter,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await state.open()
        tune_gc()  # everything alive now lives as long as the process (see proxy.gc_tuning)
        try:
            yield
        finally:
            await state.close()

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Mount(settings.server.base_path, app=endpoint),
    ]
    if state.rights is not None and state.authenticator is not None:
        routes.append(Mount("/admin", app=admin_app(state, state.rights, state.authenticator)))
    if state.dev_issuer is not None:
        routes += [
            Route("/_dev/jwks.json", _dev_jwks, methods=["GET"]),
            Route("/_dev/token", _dev_token, methods=["POST"]),
        ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(RequestContextMiddleware, access_log=settings.server.access_log)],
        exception_handlers={HTTPException: _http_exception, Exception: _unexpected},
        lifespan=lifespan,
    )
    app.state.proxy = state
    return app


def admin_app(state: ProxyState, rights: RightsGate, authenticator: Authenticator) -> AdminApp:
    """The administrative API (revocations, approvals) of the access policy, audited like FHIR requests."""
    settings = state.settings
    revocations = rights.revocations
    assert revocations is not None
    assert rights.approvals is not None

    def public_base(request: Request) -> str:
        return (
            settings.server.public_base_url or str(request.base_url).rstrip("/") + settings.server.base_path
        )

    return AdminApp(
        authenticate=authenticator.authenticate,
        public_base=public_base,
        attributes=rights.attributes,
        compiled=rights.compiled,
        revocations=revocations.store,
        revocation_list=revocations,
        approvals=rights.approvals,
        policy=rights.policy,
        audit=admin_auditor(state.audit) if state.audit is not None else None,
    )


async def _dev_jwks(request: Request) -> Response:
    issuer = request.app.state.proxy.dev_issuer
    return Response(orjson.dumps(issuer.jwks()), media_type="application/json")


async def _dev_token(request: Request) -> Response:
    """Development-only token endpoint: ``client_credentials`` for a demo persona's client_id."""
    state = request.app.state.proxy
    form = await request.form()
    persona = next((p for p in PERSONAS.values() if p.client_id == form.get("client_id")), None)
    if form.get("grant_type") != "client_credentials" or persona is None:
        error = {"error": "invalid_client", "error_description": f"dev clients: {sorted(PERSONAS)}"}
        return Response(orjson.dumps(error), status_code=400, media_type="application/json")
    patient = str(form.get("patient") or "") or None
    if persona.patient_context and patient is None:
        error = {"error": "invalid_request", "error_description": "this dev client needs a patient field"}
        return Response(orjson.dumps(error), status_code=400, media_type="application/json")
    server = state.settings.server
    audience = server.public_base_url or str(request.base_url).rstrip("/") + server.base_path
    token = state.dev_issuer.mint_persona(persona, audience=audience, patient=patient, lifetime=3600)
    body = {"access_token": token, "token_type": "Bearer", "expires_in": 3600, "scope": persona.scope}
    if patient:
        body["patient"] = patient
    return Response(orjson.dumps(body), media_type="application/json", headers={"cache-control": "no-store"})


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return outcome_response(MethodNotAllowedError())
    if exc.status_code == 404:
        return outcome_response(NotFoundError())
    return outcome_response(ProxyError())


async def _unexpected(request: Request, exc: Exception) -> Response:
    return outcome_response(ProxyError())

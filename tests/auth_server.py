"""A small OAuth2 authorization server for tests: a JWKS, RFC 7662 introspection, and OpenID metadata.

Real HTTP on 127.0.0.1 (the proxy talks to it over the network, as it would to Keycloak or Okta); tokens
are registered and revoked by the test directly. Counts requests so caching can be observed.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import uvicorn
from joserfc.jwk import KeySet, RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.threaded_server import ThreadedServer

CLIENT_ID = "fhirwall-proxy"
CLIENT_SECRET = "introspection-secret"


class AuthorizationServer(ThreadedServer):
    """Serves ``/jwks``, ``/introspect`` and ``/.well-known/openid-configuration`` on ``port``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.issuer = f"http://127.0.0.1:{port}"
        self.key = RSAKey.generate_key(2048, parameters={"kid": "as-1", "alg": "RS256"})
        self.published: list[Any] = [self.key]
        self.active: dict[str, dict[str, Any]] = {}
        self.calls = {"jwks": 0, "introspect": 0}
        routes = [
            Route("/jwks", self._jwks),
            Route("/introspect", self._introspect, methods=["POST"]),
            Route("/.well-known/openid-configuration", self._metadata),
        ]
        config = uvicorn.Config(Starlette(routes=routes), host="127.0.0.1", port=port, log_level="warning")
        super().__init__(config)

    async def _jwks(self, request: Request) -> Response:
        self.calls["jwks"] += 1
        return JSONResponse(KeySet(self.published).as_dict(private=False))

    async def _metadata(self, request: Request) -> Response:
        return JSONResponse(
            {
                "issuer": self.issuer,
                "jwks_uri": f"{self.issuer}/jwks",
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "introspection_endpoint": f"{self.issuer}/introspect",
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"],
                "grant_types_supported": ["authorization_code", "client_credentials"],
            }
        )

    async def _introspect(self, request: Request) -> Response:
        self.calls["introspect"] += 1
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if request.headers.get("authorization") != expected:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        form = await request.form()
        answer = self.active.get(str(form.get("token", "")))
        return JSONResponse({"active": True, **answer} if answer else {"active": False})

    def register(self, token: str, **claims: Any) -> None:
        """Make an opaque token active with these introspection fields."""
        self.active[token] = {"exp": int(time.time()) + 600, **claims}

    def revoke(self, token: str) -> None:
        self.active.pop(token, None)

    def start(self) -> AuthorizationServer:
        self.start_serving()
        return self

"""Opaque access tokens, checked by RFC 7662 introspection with the proxy's own client credentials."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import httpx

from proxy.auth.claims import principal_from_claims
from proxy.auth.principal import Principal
from proxy.errors import AuthenticationError, IssuerUnavailableError
from proxy.settings import ClaimSettings, IntrospectionSettings

__all__ = ["IntrospectionClient"]


class IntrospectionClient:
    """Asks the authorization server whether a token is active, and what it grants."""

    def __init__(self, settings: IntrospectionSettings, client: httpx.AsyncClient, secret: str) -> None:
        self.settings = settings
        self._client = client
        self._auth = httpx.BasicAuth(settings.client_id, secret)

    async def introspect(
        self, token: str, *, default_audiences: Sequence[str], claim_settings: ClaimSettings
    ) -> Principal:
        """The principal for an active token; ``AuthenticationError`` for an inactive one."""
        answer = await self._ask(token)
        if answer.get("active") is not True:
            raise AuthenticationError("the token is not active")
        if "exp" not in answer:
            answer["exp"] = time.time() + self.settings.cache_seconds
        _check_audience(answer, default_audiences)
        issuer = str(answer.get("iss") or self.settings.issuer or self.settings.endpoint)
        return principal_from_claims(answer, issuer, claim_settings)

    async def _ask(self, token: str) -> dict[str, Any]:
        try:
            response = await self._client.post(
                self.settings.endpoint,
                data={"token": token, "token_type_hint": "access_token"},
                auth=self._auth,
                headers={"accept": "application/json"},
            )
            response.raise_for_status()
            answer = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise IssuerUnavailableError("the token introspection endpoint could not be reached") from exc
        if not isinstance(answer, dict):
            raise IssuerUnavailableError("the token introspection endpoint sent an invalid answer")
        return answer


def _check_audience(answer: dict[str, Any], accepted: Sequence[str]) -> None:
    audience = answer.get("aud")
    if audience is None:
        return  # RFC 7662 makes aud optional; the server vouched for the token
    values = [audience] if isinstance(audience, str) else audience if isinstance(audience, list) else []
    if not {str(v).rstrip("/") for v in values} & {a.rstrip("/") for a in accepted}:
        raise AuthenticationError("the token is not meant for this server (aud)")

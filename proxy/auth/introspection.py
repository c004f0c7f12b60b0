"""Opaque access tokens, checked by RFC 7662 introspection with the proxy's own client credentials.

With Redis, introspection answers are shared by every replica (``SharedIntrospectionCache``: keyed by the
token's SHA-256, kept at most ``cache_seconds`` and never past the token's ``exp``; inactive answers for
``negative_cache_seconds``), so a token is introspected once per deployment rather than once per replica.
Redis being unavailable only means asking the authorization server again.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import httpx
import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from proxy.auth.claims import principal_from_claims
from proxy.auth.principal import Principal
from proxy.errors import AuthenticationError, IssuerUnavailableError
from proxy.settings import ClaimSettings, IntrospectionSettings

__all__ = ["IntrospectionClient", "SharedIntrospectionCache"]

logger = logging.getLogger("fhirwall.auth")
KEY_PREFIX = "fhirwall:introspection:"
_SHARED_UNTIL = "fhirwall_shared_until"


class SharedIntrospectionCache:
    """Introspection answers shared by the replicas through Redis."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def get(self, token: str) -> dict[str, Any] | None:
        """The answer another replica received for ``token``, if still fresh."""
        try:
            raw = await self._redis.get(_key(token))
            answer = orjson.loads(raw) if raw else None
        except (RedisError, OSError, orjson.JSONDecodeError):
            logger.warning("shared introspection cache unavailable; asking the authorization server")
            return None
        if not isinstance(answer, dict) or not isinstance(answer.get(_SHARED_UNTIL), int | float):
            return None
        shared_until = answer.pop(_SHARED_UNTIL)
        if answer.get("active") is True:  # replicas reuse it no longer than the shared copy lives
            expires = answer.get("exp")
            bounded = isinstance(expires, int | float) and not isinstance(expires, bool)
            answer["exp"] = min(expires, shared_until) if bounded else shared_until
        return answer

    async def put(self, token: str, answer: dict[str, Any], seconds: float) -> None:
        """Share ``answer`` for ``seconds`` (nothing when that is under a millisecond)."""
        if seconds < 0.001:
            return
        shared = {**answer, _SHARED_UNTIL: time.time() + seconds}
        try:
            await self._redis.set(_key(token), orjson.dumps(shared), px=int(seconds * 1000))
        except (RedisError, OSError):
            logger.warning("shared introspection cache unavailable; the answer stays local")


def _key(token: str) -> str:
    return KEY_PREFIX + hashlib.sha256(token.encode()).hexdigest()


class IntrospectionClient:
    """Asks the authorization server whether a token is active, and what it grants."""

    def __init__(
        self,
        settings: IntrospectionSettings,
        client: httpx.AsyncClient,
        secret: str,
        shared: SharedIntrospectionCache | None = None,
    ) -> None:
        self.settings = settings
        self._client = client
        self._auth = httpx.BasicAuth(settings.client_id, secret)
        self._shared = shared

    async def introspect(
        self, token: str, *, default_audiences: Sequence[str], claim_settings: ClaimSettings
    ) -> Principal:
        """The principal for an active token; ``AuthenticationError`` for an inactive one."""
        answer = await self._answer(token)
        if answer.get("active") is not True:
            raise AuthenticationError("the token is not active")
        if "exp" not in answer:
            answer["exp"] = time.time() + self.settings.cache_seconds
        _check_audience(answer, default_audiences)
        issuer = str(answer.get("iss") or self.settings.issuer or self.settings.endpoint)
        return principal_from_claims(answer, issuer, claim_settings)

    async def _answer(self, token: str) -> dict[str, Any]:
        """The authorization server's answer, through the shared cache when there is one."""
        if self._shared is None:
            return await self._ask(token)
        cached = await self._shared.get(token)
        if cached is not None:
            return cached
        answer = await self._ask(token)
        await self._shared.put(token, answer, self._share_seconds(answer))
        return answer

    def _share_seconds(self, answer: dict[str, Any]) -> float:
        if answer.get("active") is not True:
            return self.settings.negative_cache_seconds
        seconds = self.settings.cache_seconds
        expires = answer.get("exp")
        if isinstance(expires, int | float) and not isinstance(expires, bool):
            seconds = min(seconds, expires - time.time())
        return seconds

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

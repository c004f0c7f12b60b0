"""From an ``Authorization`` header to a ``Principal``: bearer extraction, verification, caching.

Verification happens once per token: successful results are cached by the token's SHA-256 digest until the
token expires (introspection results at most ``cache_seconds``, so revocation takes effect within that
time); failures are cached briefly so a flood of bad tokens costs one verification each.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections import OrderedDict
from collections.abc import Mapping

import httpx
import redis.asyncio as aioredis

from proxy.auth.introspection import IntrospectionClient, SharedIntrospectionCache
from proxy.auth.jwks import JwksCache
from proxy.auth.jwt_verifier import TrustedIssuer, verify_jwt
from proxy.auth.principal import Principal
from proxy.errors import AuthenticationError, ProxyError
from proxy.settings import AuthSettings, IntrospectionSettings

__all__ = ["Authenticator", "bearer_token", "build_authenticator"]

_BEARER = re.compile(r"Bearer +([A-Za-z0-9\-._~+/]+=*) *", re.IGNORECASE)
_JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_\-]*\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+")
CACHE_SIZE = 10_000
FAILURE_CACHE_SECONDS = 5.0


def bearer_token(authorization: str | None) -> str:
    """The token of a ``Bearer`` Authorization header (401 when missing or malformed)."""
    if not authorization:
        raise AuthenticationError(missing=True)
    match = _BEARER.fullmatch(authorization)
    if match is None:
        raise AuthenticationError("the Authorization header is not a Bearer token")
    return match.group(1)


class _TokenCache:
    """Bounded LRU of verification outcomes by token digest."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[str, tuple[float, Principal | ProxyError]] = OrderedDict()

    def get(self, key: str) -> Principal | ProxyError | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if time.time() >= entry[0]:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: str, until: float, outcome: Principal | ProxyError) -> None:
        self._entries[key] = (until, outcome)
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)


class Authenticator:
    """Verifies bearer tokens against the configured issuers and/or introspection endpoint."""

    def __init__(
        self,
        settings: AuthSettings,
        issuers: Mapping[str, TrustedIssuer],
        introspection: IntrospectionClient | None,
    ) -> None:
        self.settings = settings
        self.issuers = dict(issuers)
        self.introspection = introspection
        self._cache = _TokenCache(CACHE_SIZE)

    async def authenticate(self, authorization: str | None, public_base: str) -> Principal:
        """The principal of the request's bearer token, or ``AuthenticationError``."""
        token = bearer_token(authorization)
        key = hashlib.sha256(f"{public_base}\x1f{token}".encode()).hexdigest()
        cached = self._cache.get(key)
        if isinstance(cached, ProxyError):
            raise cached
        if cached is not None:
            return cached
        try:
            principal = await self._verify(token, public_base)
        except AuthenticationError as error:
            self._cache.put(key, time.time() + self._failure_seconds(), error)
            raise
        self._cache.put(key, self._valid_until(principal), principal)
        return principal

    async def _verify(self, token: str, public_base: str) -> Principal:
        audiences = self.settings.audiences or [public_base]
        if _JWT_SHAPE.fullmatch(token) and (self.issuers or self.introspection is None):
            try:
                return await verify_jwt(
                    token,
                    self.issuers,
                    default_audiences=audiences,
                    skew=self.settings.clock_skew_seconds,
                    claim_settings=self.settings.claims,
                )
            except AuthenticationError:
                if self.introspection is None:
                    raise
        if self.introspection is None:
            raise AuthenticationError("the token is not a JWT from a trusted issuer")
        return await self.introspection.introspect(
            token, default_audiences=audiences, claim_settings=self.settings.claims
        )

    def _valid_until(self, principal: Principal) -> float:
        until = principal.expires_at + self.settings.clock_skew_seconds
        if self.introspection is not None and principal.issuer not in self.issuers:
            until = min(until, time.time() + self.introspection.settings.cache_seconds)
        return until

    def _failure_seconds(self) -> float:
        if self.introspection is not None:
            return min(FAILURE_CACHE_SECONDS, self.introspection.settings.negative_cache_seconds)
        return FAILURE_CACHE_SECONDS


def build_authenticator(
    settings: AuthSettings,
    client: httpx.AsyncClient,
    dev_issuer: TrustedIssuer | None,
    redis: aioredis.Redis | None = None,
) -> Authenticator:
    """The authenticator for ``settings`` (JWKS caches share one HTTP client; with ``redis``, introspection
    answers are shared by the replicas)."""
    issuers = {
        item.issuer: TrustedIssuer(
            item.issuer,
            JwksCache(
                item.jwks_uri,
                client,
                min_refresh=settings.jwks_min_refresh_seconds,
                max_age=settings.jwks_max_age_seconds,
            ),
            frozenset(item.algorithms),
            tuple(item.audiences or settings.audiences),
        )
        for item in settings.issuers
    }
    if dev_issuer is not None:
        issuers[dev_issuer.issuer] = dev_issuer
    introspection = None
    if settings.introspection is not None:
        shared = SharedIntrospectionCache(redis) if redis is not None else None
        secret = _secret(settings.introspection)
        introspection = IntrospectionClient(settings.introspection, client, secret, shared)
    return Authenticator(settings, issuers, introspection)


def _secret(settings: IntrospectionSettings) -> str:
    if settings.client_secret_env is not None:
        return os.environ[settings.client_secret_env]
    assert settings.client_secret_file is not None
    return settings.client_secret_file.read_text(encoding="utf-8").strip()

"""Shared test helpers of the access-rights tests: principals, a settable clock, Redis clients."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis

from proxy.auth.principal import Principal

ISSUER = "https://idp.example.org"


def principal(
    subject: str | None = "nurse-1",
    *,
    client_id: str | None = "ehr",
    fhir_user: str | None = None,
    token_id: str | None = None,
    issuer: str = ISSUER,
    roles: tuple[str, ...] = (),
) -> Principal:
    """A verified caller as the authenticator would build it."""
    return Principal(
        issuer=issuer,
        subject=subject,
        client_id=client_id,
        scope_text="user/*.rs",
        expires_at=time.time() + 3600,
        fhir_user=fhir_user,
        roles=roles,
        token_id=token_id,
    )


@asynccontextmanager
async def redis_client(url: str) -> AsyncIterator[aioredis.Redis]:
    """A Redis client for one test, closed afterwards."""
    client = aioredis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        yield client
    finally:
        await client.aclose()

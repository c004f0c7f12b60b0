"""Paging links sealed to the principal they were issued to.

Upstream paging links (``next``, ``prev``, ...) carry upstream-internal state (offsets, cursors, the
narrowed query). The proxy hands out ``<public base>/_page?token=...&rel=next`` instead: one token per Bundle
holds the upstream locations of all its links plus the principal's binding and an expiry, encrypted and
authenticated with AES-GCM (one seal per response, not per link). A link replayed with another principal's
token, edited, or expired is refused; its content is re-checked like any search result.

Replicas must share the key for a link issued by one to work on another: ``policy.paging_key_env`` names it;
without it, replicas on one Redis share a key the first of them generated (``shared_paging_key``), and a
proxy without Redis uses a key of its own.
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass

import orjson
import redis.asyncio as aioredis
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from proxy.errors import ForbiddenError, InvalidRequestError

__all__ = ["SHARED_KEY", "PageLocation", "PageSealer", "load_paging_key", "shared_paging_key"]

SHARED_KEY = "fhirwall:paging-key"
_AAD = b"fhirwall-page-v1"
PAGE_LIFETIME_SECONDS = 3600


@dataclass(frozen=True, slots=True)
class PageLocation:
    """Where the pages of one Bundle live upstream (by link relation) and who may follow them."""

    upstream: str
    paths: dict[str, str]
    resource_type: str | None
    binding: str
    total_is_exact: bool


class PageSealer:
    """Seals and opens page tokens with one AES-256-GCM key."""

    def __init__(self, key: bytes) -> None:
        self.rekey(key)

    def rekey(self, key: bytes) -> None:
        """Seal and open with ``key`` from now on (the replicas' shared key, once it is known)."""
        if len(key) != 32:
            raise ValueError("the paging key must be 32 bytes")
        self._aead = AESGCM(key)

    def seal(self, location: PageLocation, now: float | None = None) -> str:
        expires = int((now or time.time()) + PAGE_LIFETIME_SECONDS)
        payload = orjson.dumps(
            [
                location.upstream,
                location.paths,
                location.resource_type,
                location.binding,
                location.total_is_exact,
                expires,
            ]
        )
        nonce = os.urandom(12)
        return base64.urlsafe_b64encode(nonce + self._aead.encrypt(nonce, payload, _AAD)).decode().rstrip("=")

    def open(self, token: str, binding: str) -> PageLocation:
        """The location in ``token`` if it is intact, unexpired and bound to ``binding``."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            payload = orjson.loads(self._aead.decrypt(raw[:12], raw[12:], _AAD))
            upstream, paths, resource_type, bound_to, exact, expires = payload
            if not isinstance(paths, dict):
                raise TypeError("paths")
        except (ValueError, InvalidTag, TypeError) as exc:
            raise InvalidRequestError("the paging link is not valid (edited or from another server)") from exc
        if bound_to != binding:
            raise ForbiddenError("this paging link was issued to another user or app")
        if time.time() > expires:
            raise InvalidRequestError("the paging link has expired: repeat the search")
        return PageLocation(upstream, paths, resource_type, bound_to, bool(exact))


async def shared_paging_key(redis: aioredis.Redis) -> bytes:
    """The key every replica uses when none is configured: made by the first replica, kept in Redis."""
    await redis.set(SHARED_KEY, os.urandom(32), nx=True)
    key = await redis.get(SHARED_KEY)
    if not isinstance(key, bytes) or len(key) != 32:
        raise ValueError(f"{SHARED_KEY} in Redis does not hold a 32-byte key")
    return key


def load_paging_key(env: str | None) -> bytes:
    """The key from the environment variable (base64, 32 bytes), or a random per-process key."""
    if env is None:
        return os.urandom(32)
    key = base64.b64decode(os.environ[env])
    if len(key) != 32:
        raise ValueError(f"{env} must hold a base64-encoded 32-byte key")
    return key

"""Consent caches: in memory (one replica) or in Redis (several), with a bounded TTL and invalidation.

The Redis cache keeps the raw Consents under ``fhirwall:consent:<patient>`` (TTL) and a parsed copy in local
memory. A Consent written through any replica deletes the key and publishes the patient id on
``fhirwall:consent-invalidate``; every replica's subscriber drops its local copy. While that subscription is
down, local copies are not used at all (they could be stale), so a Redis outage makes lookups fail — and
access is denied — instead of serving stale decisions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Protocol

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from consent.errors import ConsentLookupError
from consent.model import ConsentDirective, ConsentParseError, parse_consent

__all__ = ["INVALIDATION_CHANNEL", "ConsentCache", "MemoryConsentCache", "RedisConsentCache"]

INVALIDATION_CHANNEL = "fhirwall:consent-invalidate"
ALL_PATIENTS = "*"
KEY_PREFIX = "fhirwall:consent:"
logger = logging.getLogger("fhirwall.consent")


class ConsentCache(Protocol):
    """Parsed Consents per patient, for a bounded time."""

    async def get(self, patient_id: str) -> tuple[ConsentDirective, ...] | None: ...

    async def put(
        self, patient_id: str, raw: list[dict[str, Any]], parsed: tuple[ConsentDirective, ...]
    ) -> None: ...

    async def invalidate(self, patient_id: str) -> None: ...

    async def invalidate_all(self) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class MemoryConsentCache:
    """One process's cache: entries expire after ``ttl`` seconds or when invalidated."""

    def __init__(self, ttl: float, max_entries: int = 100_000) -> None:
        self.ttl = ttl
        self._max = max_entries
        self._entries: dict[str, tuple[float, tuple[ConsentDirective, ...]]] = {}

    async def get(self, patient_id: str) -> tuple[ConsentDirective, ...] | None:
        return self.peek(patient_id)

    def peek(self, patient_id: str) -> tuple[ConsentDirective, ...] | None:
        entry = self._entries.get(patient_id)
        if entry is None or time.monotonic() >= entry[0]:
            self._entries.pop(patient_id, None)
            return None
        return entry[1]

    async def put(
        self, patient_id: str, raw: list[dict[str, Any]], parsed: tuple[ConsentDirective, ...]
    ) -> None:
        self.store(patient_id, parsed)

    def store(self, patient_id: str, parsed: tuple[ConsentDirective, ...]) -> None:
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[patient_id] = (time.monotonic() + self.ttl, parsed)

    def drop(self, patient_id: str | None = None) -> None:
        """Forget one patient, or everything."""
        if patient_id is None:
            self._entries.clear()
        else:
            self._entries.pop(patient_id, None)

    async def invalidate(self, patient_id: str) -> None:
        self.drop(patient_id)

    async def invalidate_all(self) -> None:
        self.drop()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


class RedisConsentCache:
    """Shared cache for several replicas; see the module docstring for the invalidation protocol."""

    def __init__(self, redis: aioredis.Redis, ttl: float) -> None:
        self._redis = redis
        self.ttl = ttl
        self._local = MemoryConsentCache(ttl)
        self._subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def get(self, patient_id: str) -> tuple[ConsentDirective, ...] | None:
        if self._subscribed.is_set():
            local = self._local.peek(patient_id)
            if local is not None:
                return local
        try:
            raw = await self._redis.get(KEY_PREFIX + patient_id)
        except RedisError as exc:
            raise ConsentLookupError(
                "the consent cache (Redis) cannot be reached, so access is denied"
            ) from exc
        if raw is None:
            return None
        parsed = _parse_cached(raw)
        if self._subscribed.is_set():
            self._local.store(patient_id, parsed)
        return parsed

    async def put(
        self, patient_id: str, raw: list[dict[str, Any]], parsed: tuple[ConsentDirective, ...]
    ) -> None:
        try:
            await self._redis.set(KEY_PREFIX + patient_id, orjson.dumps(raw), px=int(self.ttl * 1000))
        except RedisError as exc:
            raise ConsentLookupError(
                "the consent cache (Redis) cannot be reached, so access is denied"
            ) from exc
        if self._subscribed.is_set():
            self._local.store(patient_id, parsed)

    async def invalidate(self, patient_id: str) -> None:
        self._local.drop(patient_id)
        try:
            await self._redis.delete(KEY_PREFIX + patient_id)
            await self._redis.publish(INVALIDATION_CHANNEL, patient_id)
        except RedisError as exc:
            raise ConsentLookupError(
                "the consent change could not be announced to the other replicas"
            ) from exc

    async def invalidate_all(self) -> None:
        self._local.drop()
        try:
            keys = [key async for key in self._redis.scan_iter(match=KEY_PREFIX + "*", count=500)]
            if keys:
                await self._redis.delete(*keys)
            await self._redis.publish(INVALIDATION_CHANNEL, ALL_PATIENTS)
        except RedisError as exc:
            raise ConsentLookupError(
                "the consent change could not be announced to the other replicas"
            ) from exc

    async def start(self) -> None:
        """Subscribe to invalidations (in the background, resubscribing after failures)."""
        self._task = asyncio.create_task(self._listen())

    async def close(self) -> None:
        """Stop following invalidations (cancelled until it ends: a Redis read may swallow one cancel)."""
        task, self._task = self._task, None
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)

    async def _listen(self) -> None:
        while True:
            try:
                await self._follow_invalidations()
            except (RedisError, OSError) as exc:
                logger.warning(
                    "consent invalidation subscription lost (%s); local cache disabled", type(exc).__name__
                )
            self._subscribed.clear()
            self._local.drop()
            await asyncio.sleep(0.5)

    async def _follow_invalidations(self) -> None:
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(INVALIDATION_CHANNEL)
            self._local.drop()
            self._subscribed.set()
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None and message.get("type") == "message":
                    data = message["data"]
                    patient = data.decode() if isinstance(data, bytes) else str(data)
                    self._local.drop(None if patient == ALL_PATIENTS else patient)
        finally:
            self._subscribed.clear()
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]


def _parse_cached(raw: bytes | str) -> tuple[ConsentDirective, ...]:
    try:
        resources = orjson.loads(raw)
        return tuple(parse_consent(resource) for resource in resources)
    except (orjson.JSONDecodeError, ConsentParseError, TypeError) as exc:
        raise ConsentLookupError("a cached Consent could not be understood, so access is denied") from exc

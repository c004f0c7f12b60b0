"""A Redis stream as the audit delivery spool (``audit.delivery.spool: redis``), for replicas without
persistent volumes.

``RedisSpoolWriter`` appends each request's entry (``proxy.audit.entry``) to the stream ``STREAM`` (field
``entry``, its JSON; no MAXLEN: nothing is ever trimmed) after the local log has it and before the answer goes
out. The call is awaited, bounded by ``APPEND_TIMEOUT_SECONDS``; after a failure the spool is treated as down
for ``RETRY_AFTER_FAILURE_SECONDS``, so a Redis outage refuses requests at once instead of holding each one
for the timeout.

``RedisSpoolDelivery`` is ``AuditDelivery`` with the stream as its source: every replica reads it through the
consumer group ``GROUP`` (``XREADGROUP``: each entry goes to one replica), builds the entry's BALP
AuditEvents, sends them with the same sender, and only once the target confirmed them (or they were
dead-lettered locally) acknowledges and deletes the entry (``XACK`` + ``XDEL`` in one transaction). Entries a
replica read but never acknowledged (it died, or was stopped mid-delivery) are claimed by another replica
once idle for ``claim_idle_seconds`` (``XAUTOCLAIM``). AuditEvent ids are deterministic, so delivering an
entry twice leaves one resource. The backlog is the stream's length (``XLEN``), refreshed before each
admission.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import httpx
import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from proxy.audit.delivery import AuditDelivery, _AttemptFailed, _Pending, _pending_events
from proxy.settings import AuditDeliverySettings

__all__ = ["GROUP", "STREAM", "RedisSpoolDelivery", "RedisSpoolWriter", "SpoolUnavailableError"]

logger = logging.getLogger("fhirwall.audit.delivery")

STREAM: Final = "fhirwall:audit:spool"
GROUP: Final = "fhirwall-delivery"
FIELD: Final = b"entry"
APPEND_TIMEOUT_SECONDS: Final = 1.0
RETRY_AFTER_FAILURE_SECONDS: Final = 1.0

_StreamEntry = tuple[bytes | str, Mapping[bytes, bytes] | None]


class SpoolUnavailableError(Exception):
    """Redis did not take the entry."""


class RedisSpoolWriter:
    """Appends request entries to the spool stream (awaited, before the answer goes out)."""

    def __init__(self, client: aioredis.Redis, timeout: float = APPEND_TIMEOUT_SECONDS) -> None:
        self._client = client
        self._timeout = timeout
        self._down_until = 0.0

    async def append(self, entry: Mapping[str, Any]) -> None:
        """``XADD`` one entry; ``SpoolUnavailableError`` when Redis cannot take it in time."""
        if time.monotonic() < self._down_until:
            raise SpoolUnavailableError("the Redis audit spool failed moments ago")
        try:
            await asyncio.wait_for(self._client.xadd(STREAM, {FIELD: orjson.dumps(entry)}), self._timeout)
        except (RedisError, OSError, TimeoutError) as exc:
            self._down_until = time.monotonic() + RETRY_AFTER_FAILURE_SECONDS
            raise SpoolUnavailableError(f"the Redis audit spool failed: {type(exc).__name__}") from None


class RedisSpoolDelivery(AuditDelivery):
    """Delivers the spool stream's entries through the consumer group (see the module docstring)."""

    def __init__(
        self,
        log_path: Path,
        settings: AuditDeliverySettings,
        client: aioredis.Redis,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(log_path, settings, http)
        self._redis = client
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self._length = 0
        self._read_count = 0

    @property
    def backlog(self) -> int:
        """Entries in the stream not yet delivered (as of the last look)."""
        return self._length

    async def start(self) -> None:
        """Create the consumer group if needed and start the background task."""
        if self._task is not None:
            raise RuntimeError("audit delivery is already running")
        try:
            await self._ensure_group()
            await self._refresh_length()
        except (RedisError, OSError) as exc:  # the loop retries; admission fails closed meanwhile
            logger.warning("the Redis audit spool is unavailable at start (%s)", type(exc).__name__)
        self._start_task()
        logger.info(
            "audit delivery to %s from the Redis spool started as consumer %s (%d entries in the stream)",
            self._target_name(),
            self.consumer,
            self._length,
        )

    async def admit(self) -> None:
        """Refresh the backlog from ``XLEN``, then apply the usual back-pressure."""
        with contextlib.suppress(RedisError, OSError):  # the append decides (on_failure) then
            await self._refresh_length()
        await super().admit()

    # -- the source ----------------------------------------------------------------------------------

    async def _ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _refresh_length(self) -> None:
        self._length = int(await self._redis.xlen(STREAM))

    async def _read(self) -> list[_Pending]:
        """Entries idle on a dead consumer first, then new ones; ``_AttemptFailed`` when Redis fails."""
        try:
            entries = await self._claim() or await self._read_new()
            await self._refresh_length()
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise _AttemptFailed(f"Redis: {exc}") from None
            await self._recreate_group()
            return []
        except (RedisError, OSError) as exc:
            raise _AttemptFailed(f"the Redis audit spool failed: {type(exc).__name__}") from None
        return [pending for entry in entries for pending in self._events(entry)]

    async def _recreate_group(self) -> None:
        try:
            await self._ensure_group()
        except (RedisError, OSError) as exc:
            raise _AttemptFailed(f"the Redis audit spool failed: {type(exc).__name__}") from None

    def _read_failed(self) -> bool:
        return False

    def _source_name(self) -> str:
        return f"the Redis stream {STREAM} (another replica claims them)"

    async def _claim(self) -> list[_StreamEntry]:
        idle_ms = int(self.settings.claim_idle_seconds * 1000)
        answer = await self._redis.xautoclaim(
            STREAM, GROUP, self.consumer, idle_ms, start_id="0-0", count=self.settings.batch_size
        )
        entries: list[_StreamEntry] = [entry for entry in answer[1] if entry and entry[1]]
        if entries:
            logger.warning(
                "audit delivery: claimed %d spool entries another replica read but never delivered",
                len(entries),
            )
        return entries

    async def _read_new(self) -> list[_StreamEntry]:
        answer: Any = await self._redis.xreadgroup(
            GROUP, self.consumer, {STREAM: ">"}, count=self.settings.batch_size
        )
        streams: Sequence[Any] = answer or []  # RESP2: [[name, [(id, fields), ...]]]
        entries: list[_StreamEntry] = []
        for _name, items in streams:
            entries += [entry for entry in items if entry and entry[1]]
        return entries

    def _events(self, entry: _StreamEntry) -> list[_Pending]:
        """The pending events of one stream entry (its id kept in ``hash``; ``seq`` counts reads)."""
        self._read_count += 1
        raw_id, fields = entry
        entry_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
        raw = (fields or {}).get(FIELD, b"")
        try:
            content = orjson.loads(raw)
        except orjson.JSONDecodeError:
            content = None
        if not isinstance(content, dict):
            text = raw.decode("utf-8", "replace")
            return [_Pending(self._read_count, entry_id, 0, 0, {"raw": text}, unreadable="not a JSON entry")]
        return _pending_events(self._read_count, entry_id, 0, 0, "request", content)

    async def _advance(self) -> None:
        """Acknowledge and delete the leading entries whose events are all done."""
        count = self._done_count()
        if not count:
            return
        ids = list(dict.fromkeys(pending.hash for pending in self._pending[:count]))
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.xack(STREAM, GROUP, *ids)
                pipe.xdel(STREAM, *ids)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise _AttemptFailed(f"the Redis audit spool failed: {type(exc).__name__}") from None
        self._length = max(0, self._length - len(ids))
        self._progressed(count)

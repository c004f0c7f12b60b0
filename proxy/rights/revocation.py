"""Immediate revocation of a user, a client or a single token.

Revocations live in a shared store: Redis (``RedisRevocationStore``; several replicas) or a JSON-lines file
(``FileRevocationStore``; one instance, or the CLI without Redis). Each replica keeps a local copy in a
``RevocationList``, which the pipeline consults on every request with a plain set lookup. The copy is reloaded
at most every ``refresh_seconds`` (a cheap version comparison first) and, with Redis, at once when a change
is published on ``fhirwall:revocations``.

Fail closed: a store that cannot be read keeps the previous copy in use, but once that copy is older than
``stale_factor * refresh_seconds`` every check fails with ``RightsLookupError`` (503).

Redis layout::

    fhirwall:revocations          hash  "<kind>:<value>" -> Revocation JSON
    fhirwall:revocations:version  int   incremented on every change
    fhirwall:revocations          pub/sub channel; the message is the changed "<kind>:<value>"

The file is an append-only log of ``{"op": "revoke", ...revocation}`` and ``{"op": "lift", "kind", "value",
"at"}`` lines, appended under an exclusive ``flock`` and fsynced; replaying it gives the current set.
Reasons are free text that may say more than it should: they are stored and shown, never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Protocol, get_args, runtime_checkable

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from proxy.auth.principal import Principal
from proxy.rights.errors import RevokedError, RightsLookupError

__all__ = [
    "CHANNEL",
    "HASH_KEY",
    "KINDS",
    "VERSION_KEY",
    "ChangeFeed",
    "FileRevocationStore",
    "RedisRevocationStore",
    "Revocation",
    "RevocationKind",
    "RevocationList",
    "RevocationStore",
    "principal_keys",
]

RevocationKind = Literal["user", "client", "token"]
KINDS: Final[tuple[str, ...]] = get_args(RevocationKind)
HASH_KEY: Final = "fhirwall:revocations"
VERSION_KEY: Final = "fhirwall:revocations:version"
CHANNEL: Final = "fhirwall:revocations"

logger = logging.getLogger("fhirwall.rights")

_UNREADABLE = "the revocation list cannot be read, so access is denied"


@dataclass(frozen=True, slots=True)
class Revocation:
    """One revoked user (token ``sub`` or ``fhirUser``), client (``client_id``) or token (``jti``)."""

    kind: RevocationKind
    value: str
    reason: str = field(repr=False)
    revoked_by: str
    revoked_at: float
    until: float | None = None

    @property
    def key(self) -> str:
        """``<kind>:<value>``: its identity in every store."""
        return f"{self.kind}:{self.value}"

    def active(self, now: float) -> bool:
        """Does it still apply at ``now`` (epoch seconds)?"""
        return self.until is None or now < self.until

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Revocation:
        """Parse a stored revocation (``ValueError`` when it is not one)."""
        kind, value = data.get("kind"), data.get("value")
        reason, revoked_by = data.get("reason"), data.get("revoked_by")
        revoked_at, until = data.get("revoked_at"), data.get("until")
        if kind not in KINDS or not isinstance(value, str) or not value:
            raise ValueError("not a revocation: kind or value")
        if not isinstance(reason, str) or not isinstance(revoked_by, str):
            raise ValueError("not a revocation: reason or revoked_by")
        at, ends = _number(revoked_at), _number(until)
        if at is None or (until is not None and ends is None):
            raise ValueError("not a revocation: revoked_at or until")
        return cls(kind, value, reason, revoked_by, at, ends)


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def principal_keys(principal: Principal) -> tuple[str, ...]:
    """The ``<kind>:<value>`` keys under which ``principal`` could be revoked."""
    keys = [f"user:{value}" for value in (principal.subject, principal.fhir_user) if value]
    if principal.client_id:
        keys.append(f"client:{principal.client_id}")
    if principal.token_id:
        keys.append(f"token:{principal.token_id}")
    return tuple(keys)


class RevocationStore(Protocol):
    """Where revocations are kept (shared by every replica)."""

    async def revoke(self, revocation: Revocation) -> None: ...

    async def lift(self, kind: str, value: str) -> bool: ...

    async def all(self) -> list[Revocation]: ...

    async def version(self) -> str: ...


@runtime_checkable
class ChangeFeed(Protocol):
    """A store that announces changes: ``changes()`` yields once on (re)subscription and once per change."""

    def changes(self) -> AsyncGenerator[None, None]: ...


# -- Redis -------------------------------------------------------------------------------------------------


class RedisRevocationStore:
    """Revocations in a Redis hash, with a version counter and a change channel (see the module docstring)."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def revoke(self, revocation: Revocation) -> None:
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(HASH_KEY, revocation.key, orjson.dumps(revocation.to_dict()))
                pipe.incr(VERSION_KEY)
                pipe.publish(CHANNEL, revocation.key)
                await pipe.execute()
        except RedisError as exc:
            raise RightsLookupError("the revocation could not be stored (Redis is unavailable)") from exc

    async def lift(self, kind: str, value: str) -> bool:
        key = f"{kind}:{value}"
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hdel(HASH_KEY, key)
                pipe.incr(VERSION_KEY)
                pipe.publish(CHANNEL, key)
                removed, _, _ = await pipe.execute()
        except RedisError as exc:
            raise RightsLookupError("the revocation could not be lifted (Redis is unavailable)") from exc
        return bool(removed)

    async def all(self) -> list[Revocation]:
        try:
            entries = await self._redis.hgetall(HASH_KEY)
        except RedisError as exc:
            raise RightsLookupError(_UNREADABLE) from exc
        try:
            return [Revocation.from_dict(orjson.loads(raw)) for raw in entries.values()]
        except (orjson.JSONDecodeError, ValueError, AttributeError) as exc:
            raise RightsLookupError("a stored revocation cannot be understood, so access is denied") from exc

    async def version(self) -> str:
        try:
            value = await self._redis.get(VERSION_KEY)
        except RedisError as exc:
            raise RightsLookupError(_UNREADABLE) from exc
        return "0" if value is None else (value.decode() if isinstance(value, bytes) else str(value))

    async def changes(self) -> AsyncGenerator[None, None]:
        """Follow the change channel (``RightsLookupError`` when the subscription is lost).

        Reads block without a timeout: a read with one can swallow the cancellation that stops the listener.
        A connection that dies silently only delays revocations to the next ``refresh_if_due``."""
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(CHANNEL)
            yield
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                if message is not None and message.get("type") == "message":
                    yield
        except (RedisError, OSError) as exc:
            raise RightsLookupError("the revocation channel was lost") from exc
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]


# -- file --------------------------------------------------------------------------------------------------


class FileRevocationStore:
    """Revocations in an append-only JSON-lines file (see the module docstring); one host only."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def revoke(self, revocation: Revocation) -> None:
        await asyncio.to_thread(self._append, {"op": "revoke", **revocation.to_dict()}, None)

    async def lift(self, kind: str, value: str) -> bool:
        event = {"op": "lift", "kind": kind, "value": value, "at": time.time()}
        return await asyncio.to_thread(self._append, event, f"{kind}:{value}")

    async def all(self) -> list[Revocation]:
        return list((await asyncio.to_thread(self._read)).values())

    async def version(self) -> str:
        try:
            status = self.path.stat()
        except FileNotFoundError:
            return "absent"
        except OSError as exc:
            raise RightsLookupError(_UNREADABLE) from exc
        return f"{status.st_ino}:{status.st_size}:{status.st_mtime_ns}"

    def _read(self) -> dict[str, Revocation]:
        try:
            with self.path.open("rb") as handle:
                fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
                data = handle.read()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise RightsLookupError(_UNREADABLE) from exc
        return _replay(data)

    def _append(self, event: dict[str, Any], lifting: str | None) -> bool:
        """Append ``event`` (when lifting: only if ``lifting`` is revoked now); True when appended."""
        try:
            return self._locked_append(event, lifting)
        except OSError as exc:
            raise RightsLookupError("the revocation file cannot be written") from exc

    def _locked_append(self, event: dict[str, Any], lifting: str | None) -> bool:
        created = not self.path.exists()
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        with os.fdopen(descriptor, "r+b") as handle:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            data = handle.read()
            complete = data[: data.rfind(b"\n") + 1]  # a torn last line was never acknowledged
            if lifting is not None and lifting not in _replay(complete):
                return False
            handle.seek(len(complete))
            handle.truncate()
            handle.write(orjson.dumps(event) + b"\n")
            handle.flush()
            os.fsync(descriptor)
        if created:
            _fsync_directory(self.path.parent)
        return True


def _replay(data: bytes) -> dict[str, Revocation]:
    """The current revocations after the log's events (a torn last line is ignored)."""
    current: dict[str, Revocation] = {}
    lines = data.split(b"\n")
    for number, line in enumerate(lines[:-1], 1):
        if not line.strip():
            continue
        try:
            _apply(current, orjson.loads(line))
        except (orjson.JSONDecodeError, ValueError, TypeError, AttributeError) as exc:
            raise RightsLookupError(
                f"line {number} of the revocation file is damaged, so access is denied"
            ) from exc
    return current


def _apply(current: dict[str, Revocation], event: dict[str, Any]) -> None:
    operation = event.get("op")
    if operation == "revoke":
        revocation = Revocation.from_dict(event)
        current[revocation.key] = revocation
    elif operation == "lift" and event.get("kind") in KINDS and isinstance(event.get("value"), str):
        current.pop(f"{event['kind']}:{event['value']}", None)
    else:
        raise ValueError("unknown event")


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# -- the replica-local view ----------------------------------------------------------------------------------


class RevocationList:
    """This replica's copy of the revocations: ``check`` is a set lookup, refreshed from the store."""

    def __init__(
        self,
        store: RevocationStore,
        refresh_seconds: float,
        *,
        stale_factor: float = 10.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        retry_seconds: float = 0.5,
    ) -> None:
        self.store = store
        self.refresh_seconds = refresh_seconds
        self.stale_seconds = stale_factor * refresh_seconds
        self._clock = clock
        self._monotonic = monotonic
        self._retry_seconds = retry_seconds
        self._entries: dict[str, Revocation] = {}
        self._version: str | None = None
        self._confirmed_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()
        self._listener: asyncio.Task[None] | None = None

    def check(self, principal: Principal) -> None:
        """``RevokedError`` when the principal's user, client or token is revoked; ``RightsLookupError``
        when the copy was never loaded or is too old to trust."""
        if self._confirmed_at is None or self._monotonic() - self._confirmed_at > self.stale_seconds:
            raise RightsLookupError(_UNREADABLE)
        if self._entries:
            now = self._clock()
            for key in principal_keys(principal):
                revocation = self._entries.get(key)
                if revocation is not None and revocation.active(now):
                    raise RevokedError()

    def active(self) -> list[Revocation]:
        """The revocations in force now, as this replica last saw them."""
        now = self._clock()
        return [revocation for revocation in self._entries.values() if revocation.active(now)]

    async def refresh_if_due(self) -> None:
        """Reload when the last attempt is ``refresh_seconds`` old (callers do not queue behind a reload
        that is already running, unless nothing was ever loaded)."""
        if self._confirmed_at is not None and (self._lock.locked() or not self._due()):
            return
        async with self._lock:
            if self._confirmed_at is None or self._due():
                await self._reload()

    async def refresh(self) -> None:
        """Reload now (after a change made through this replica, or announced by another)."""
        async with self._lock:
            await self._reload()

    async def start(self) -> None:
        """Follow the store's change feed in the background, if it has one."""
        if isinstance(self.store, ChangeFeed) and self._listener is None:
            self._listener = asyncio.create_task(self._listen(self.store))

    async def stop(self) -> None:
        """Stop the listener (cancelling again until it has ended)."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        while not listener.done():
            listener.cancel()
            await asyncio.wait({listener}, timeout=0.5)
        with contextlib.suppress(asyncio.CancelledError):
            await listener

    def _due(self) -> bool:
        return self._attempted_at is None or self._monotonic() - self._attempted_at >= self.refresh_seconds

    async def _reload(self) -> None:
        self._attempted_at = self._monotonic()
        try:
            version = await self.store.version()
            if version != self._version:
                entries = await self.store.all()
                self._entries = _current(entries, self._clock())
                self._version = version
        except RightsLookupError as exc:
            logger.warning("revocation list not refreshed (%s); using the previous copy", exc.message)
            return
        self._confirmed_at = self._attempted_at

    async def _listen(self, feed: ChangeFeed) -> None:
        while True:
            try:
                async with contextlib.aclosing(feed.changes()) as changes:
                    async for _ in changes:
                        await self.refresh()
            except RightsLookupError as exc:
                logger.warning("%s; retrying", exc.message)
            await asyncio.sleep(self._retry_seconds)


def _current(entries: Iterable[Revocation], now: float) -> dict[str, Revocation]:
    return {revocation.key: revocation for revocation in entries if revocation.active(now)}

"""Revocation: the file and Redis stores, and each replica's ``RevocationList`` (refresh, pub/sub, expiry,
fail closed)."""

from __future__ import annotations

import asyncio
import stat
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.auth.principal import Principal
from proxy.rights.errors import RevokedError, RightsLookupError
from proxy.rights.revocation import (
    FileRevocationStore,
    RedisRevocationStore,
    Revocation,
    RevocationKind,
    RevocationList,
    RevocationStore,
)
from tests.clock import Clock
from tests.conftest import RedisServer
from tests.proxy.rights.support import principal, redis_client

StoreFactory = Callable[[], AbstractAsyncContextManager[RevocationStore]]


def revocation(
    kind: RevocationKind = "user", value: str = "nurse-1", until: float | None = None
) -> Revocation:
    return Revocation(kind, value, "left the hospital", "Practitioner/admin", time.time(), until)


@pytest.fixture(params=["file", "redis"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Opens stores sharing one backing (each call: a new client of the same file or Redis)."""
    if request.param == "file":

        @asynccontextmanager
        async def file_store() -> AsyncIterator[RevocationStore]:
            yield FileRevocationStore(tmp_path / "revocations.jsonl")

        return file_store
    server: RedisServer = request.getfixturevalue("redis_server")

    @asynccontextmanager
    async def redis_store() -> AsyncIterator[RevocationStore]:
        async with redis_client(server.url) as client:
            yield RedisRevocationStore(client)

    return redis_store


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coroutine)


# -- stores ------------------------------------------------------------------------------------------------


def test_revocation_round_trips_and_hides_its_reason() -> None:
    original = revocation("token", "jti-1", until=2_000_000_000.0)
    assert Revocation.from_dict(orjson.loads(orjson.dumps(original.to_dict()))) == original
    assert "left the hospital" not in repr(original)
    assert original.key == "token:jti-1"
    assert original.active(1_999_999_999.0)
    assert not original.active(2_000_000_000.0)
    for broken in ({}, {**original.to_dict(), "kind": "group"}, {**original.to_dict(), "until": "soon"}):
        with pytest.raises(ValueError, match="not a revocation"):
            Revocation.from_dict(broken)


def test_revoke_list_and_lift(stores: StoreFactory) -> None:
    async def scenario() -> None:
        async with stores() as store:
            start = await store.version()
            await store.revoke(revocation("user", "Practitioner/7"))
            await store.revoke(revocation("client", "rogue-app"))
            await store.revoke(revocation("token", "jti-9", until=time.time() + 60))
            after_revoke = await store.version()
            assert after_revoke != start
        async with stores() as other:
            keys = {item.key for item in await other.all()}
            assert keys == {"user:Practitioner/7", "client:rogue-app", "token:jti-9"}
            assert await other.lift("client", "rogue-app") is True
            assert await other.lift("client", "rogue-app") is False
            assert await other.version() != after_revoke
            assert {item.key for item in await other.all()} == {"user:Practitioner/7", "token:jti-9"}

    run(scenario())


def test_revoking_again_replaces_the_entry(stores: StoreFactory) -> None:
    async def scenario() -> None:
        async with stores() as store:
            await store.revoke(revocation("user", "u1", until=time.time() + 60))
            await store.revoke(revocation("user", "u1"))
            (only,) = await store.all()
            assert only.until is None

    run(scenario())


def test_file_store_is_private_and_starts_empty(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = FileRevocationStore(tmp_path / "revocations.jsonl")
        assert await store.all() == []
        assert await store.version() == "absent"
        assert await store.lift("user", "nobody") is False
        await store.revoke(revocation())
        mode = stat.S_IMODE((tmp_path / "revocations.jsonl").stat().st_mode)
        assert mode == 0o600

    run(scenario())


def test_file_store_ignores_and_replaces_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "revocations.jsonl"

    async def scenario() -> None:
        store = FileRevocationStore(path)
        await store.revoke(revocation("user", "u1"))
        with path.open("ab") as handle:
            handle.write(b'{"op":"revoke","kind":"user","val')  # a crash in the middle of a write
        assert [item.key for item in await store.all()] == ["user:u1"]
        await store.revoke(revocation("user", "u2"))
        assert sorted(item.key for item in await store.all()) == ["user:u1", "user:u2"]
        assert all(orjson.loads(line) for line in path.read_bytes().splitlines())

    run(scenario())


def test_a_damaged_file_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "revocations.jsonl"

    async def scenario() -> None:
        store = FileRevocationStore(path)
        await store.revoke(revocation("user", "u1"))
        path.write_bytes(b"not json\n" + path.read_bytes())
        with pytest.raises(RightsLookupError, match="line 1"):
            await store.all()
        await store.revoke(revocation("user", "u2"))  # revoking never waits for a repair
        with pytest.raises(RightsLookupError, match="line 1"):
            await store.lift("user", "u1")

    run(scenario())


def test_redis_store_unreachable_fails_closed(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        async with redis_client(redis_server.url) as client:
            store = RedisRevocationStore(client)
            await store.revoke(revocation())
            redis_server.stop()
            with pytest.raises(RightsLookupError):
                await store.version()
            with pytest.raises(RightsLookupError):
                await store.all()
            with pytest.raises(RightsLookupError):
                await store.revoke(revocation("client", "c"))
            with pytest.raises(RightsLookupError):
                await store.lift("user", "nurse-1")

    run(scenario())


# -- the replica-local list --------------------------------------------------------------------------------


def test_check_matches_subject_fhir_user_client_and_token(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = FileRevocationStore(tmp_path / "r.jsonl")
        entries: tuple[tuple[RevocationKind, str], ...] = (
            ("user", "sub-1"),
            ("user", "Practitioner/2"),
            ("client", "app-3"),
            ("token", "jti-4"),
        )
        for kind, value in entries:
            await store.revoke(revocation(kind, value))
        revoked = RevocationList(store, 1.0)
        await revoked.refresh_if_due()
        for caller in (
            principal("sub-1"),
            principal("sub-x", fhir_user="Practitioner/2"),
            principal("sub-x", client_id="app-3"),
            principal("sub-x", token_id="jti-4"),
        ):
            with pytest.raises(RevokedError):
                revoked.check(caller)
        revoked.check(principal("sub-x", fhir_user="Practitioner/9", token_id="jti-5"))
        revoked.check(principal(None, client_id=None))
        assert len(revoked.active()) == 4

    run(scenario())


def test_until_expiry_stops_applying(tmp_path: Path) -> None:
    clock = Clock(time.time())

    async def scenario() -> None:
        store = FileRevocationStore(tmp_path / "r.jsonl")
        await store.revoke(revocation("user", "temp", until=clock.now + 60))
        await store.revoke(revocation("user", "gone", until=clock.now - 1))
        revoked = RevocationList(store, 1.0, clock=clock)
        await revoked.refresh()
        revoked.check(principal("gone"))
        with pytest.raises(RevokedError):
            revoked.check(principal("temp"))
        clock.advance(61)
        revoked.check(principal("temp"))
        assert revoked.active() == []

    run(scenario())


def test_first_check_waits_for_a_load_in_progress(tmp_path: Path) -> None:
    class SlowStore(FlakyStore):
        async def version(self) -> str:
            await asyncio.sleep(0.1)
            return await super().version()

    async def scenario() -> None:
        revoked = RevocationList(SlowStore(FileRevocationStore(tmp_path / "r.jsonl")), 60.0)
        loading = asyncio.create_task(revoked.refresh())  # e.g. the listener's first load
        await asyncio.sleep(0.01)
        await revoked.refresh_if_due()
        revoked.check(principal())
        await loading

    run(scenario())


def test_never_loaded_fails_closed(tmp_path: Path) -> None:
    revoked = RevocationList(FileRevocationStore(tmp_path / "r.jsonl"), 1.0)
    with pytest.raises(RightsLookupError):
        revoked.check(principal())


def test_replica_sees_another_replicas_revocation_after_refresh_seconds(redis_server: RedisServer) -> None:
    ticks = Clock(0.0)

    async def scenario() -> None:
        async with redis_client(redis_server.url) as a, redis_client(redis_server.url) as b:
            replica_a = RevocationList(RedisRevocationStore(a), 2.0, monotonic=ticks)
            replica_b = RevocationList(RedisRevocationStore(b), 2.0, monotonic=ticks)
            await replica_a.refresh_if_due()
            await replica_b.refresh_if_due()
            await replica_a.store.revoke(revocation("user", "nurse-1"))
            await replica_a.refresh()
            with pytest.raises(RevokedError):
                replica_a.check(principal("nurse-1"))
            ticks.advance(1.9)
            await replica_b.refresh_if_due()
            replica_b.check(principal("nurse-1"))  # not due yet: the local copy is used
            ticks.advance(0.1)
            await replica_b.refresh_if_due()
            with pytest.raises(RevokedError):
                replica_b.check(principal("nurse-1"))

    run(scenario())


def test_replica_sees_a_revocation_in_real_time(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        async with redis_client(redis_server.url) as a, redis_client(redis_server.url) as b:
            replica_b = RevocationList(RedisRevocationStore(b), 0.2)
            await replica_b.refresh_if_due()
            revoked_at = time.monotonic()
            await RedisRevocationStore(a).revoke(revocation("client", "ehr"))
            while True:
                await replica_b.refresh_if_due()
                try:
                    replica_b.check(principal())
                except RevokedError:
                    break
                assert time.monotonic() - revoked_at < 2.0
                await asyncio.sleep(0.02)
            assert time.monotonic() - revoked_at <= 0.2 + 0.3

    run(scenario())


def test_pubsub_refreshes_at_once(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        async with redis_client(redis_server.url) as a, redis_client(redis_server.url) as b:
            replica_b = RevocationList(RedisRevocationStore(b), 60.0)
            await replica_b.start()
            try:
                await _eventually(lambda: not _revoked(replica_b, principal()))  # subscribed and loaded
                await RedisRevocationStore(a).revoke(revocation("token", "jti-7"))
                await _eventually(lambda: _revoked(replica_b, principal(token_id="jti-7")))
                await RedisRevocationStore(a).lift("token", "jti-7")
                await _eventually(lambda: not _revoked(replica_b, principal(token_id="jti-7")))
            finally:
                await replica_b.stop()

    run(scenario())


def test_listener_resubscribes_after_losing_its_connection(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        async with redis_client(redis_server.url) as a, redis_client(redis_server.url) as b:
            replica_b = RevocationList(RedisRevocationStore(b), 60.0, retry_seconds=0.05)
            await replica_b.start()
            try:
                await _eventually(lambda: not _revoked(replica_b, principal()))
                assert await a.client_kill_filter(_type="pubsub") == 1
                await RedisRevocationStore(a).revoke(revocation("user", "nurse-1"))
                await _eventually(lambda: _revoked(replica_b, principal("nurse-1")))
            finally:
                await replica_b.stop()

    run(scenario())


class FlakyStore:
    """A store that can be made unreadable, counting full reads."""

    def __init__(self, inner: RevocationStore) -> None:
        self.inner = inner
        self.failing = False
        self.reads = 0

    async def revoke(self, revocation: Revocation) -> None:
        await self.inner.revoke(revocation)

    async def lift(self, kind: str, value: str) -> bool:
        return await self.inner.lift(kind, value)

    async def all(self) -> list[Revocation]:
        self._fail()
        self.reads += 1
        return await self.inner.all()

    async def version(self) -> str:
        self._fail()
        return await self.inner.version()

    def _fail(self) -> None:
        if self.failing:
            raise RightsLookupError()


def test_unchanged_version_skips_the_full_read(tmp_path: Path) -> None:
    ticks = Clock(0.0)

    async def scenario() -> None:
        store = FlakyStore(FileRevocationStore(tmp_path / "r.jsonl"))
        await store.revoke(revocation())
        revoked = RevocationList(store, 1.0, monotonic=ticks)
        for _ in range(3):
            await revoked.refresh_if_due()
            ticks.advance(1.0)
        assert store.reads == 1
        await store.revoke(revocation("client", "c2"))
        await revoked.refresh_if_due()
        assert store.reads == 2

    run(scenario())


def test_unreadable_store_keeps_the_copy_then_fails_closed_when_stale(tmp_path: Path) -> None:
    ticks = Clock(0.0)

    async def scenario() -> None:
        store = FlakyStore(FileRevocationStore(tmp_path / "r.jsonl"))
        await store.revoke(revocation("user", "nurse-1"))
        revoked = RevocationList(store, 2.0, stale_factor=10.0, monotonic=ticks)
        await revoked.refresh_if_due()
        store.failing = True
        ticks.advance(19.0)
        await revoked.refresh_if_due()
        revoked.check(principal("doctor-2"))  # the previous copy is still trusted
        with pytest.raises(RevokedError):
            revoked.check(principal("nurse-1"))
        ticks.advance(1.5)
        await revoked.refresh_if_due()
        with pytest.raises(RightsLookupError):
            revoked.check(principal("doctor-2"))
        store.failing = False
        ticks.advance(2.0)
        await revoked.refresh_if_due()
        revoked.check(principal("doctor-2"))

    run(scenario())


def test_redis_outage_fails_closed_once_stale(redis_server: RedisServer) -> None:
    ticks = Clock(0.0)

    async def scenario() -> None:
        async with redis_client(redis_server.url) as client:
            revoked = RevocationList(RedisRevocationStore(client), 1.0, stale_factor=3.0, monotonic=ticks)
            await revoked.refresh_if_due()
            redis_server.stop()
            ticks.advance(2.0)
            await revoked.refresh_if_due()
            revoked.check(principal())
            ticks.advance(1.5)
            await revoked.refresh_if_due()
            with pytest.raises(RightsLookupError):
                revoked.check(principal())

    run(scenario())


def _revoked(revoked: RevocationList, caller: Principal) -> bool:
    try:
        revoked.check(caller)
    except RevokedError:
        return True
    return False


async def _eventually(condition: Callable[[], bool], seconds: float = 3.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if condition():
                return
        except RightsLookupError:
            pass
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)

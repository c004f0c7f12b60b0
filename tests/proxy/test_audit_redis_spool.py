"""The Redis audit spool: settings, the append before the answer, delivery from the stream (file target)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError

from proxy.audit.balp import ObserverInfo
from proxy.audit.delivery import AuditBacklogFullError, DeliverySettings
from proxy.audit.entry import request_entry
from proxy.audit.record import AuditRecord, Decision
from proxy.audit.redis_spool import GROUP, STREAM, RedisSpoolDelivery, RedisSpoolWriter, SpoolUnavailableError
from proxy.audit.trail import AuditTrail, AuditUnavailableError
from proxy.settings import AuditSettings, ConfigError
from proxy.state import ProxyState
from tests.conftest import RedisServer, free_port, make_settings

KEY_ENV = "FHIRWALL_TEST_SPOOL_KEY"
OBSERVER = ObserverInfo(name="fhirwall-test", site="ci")


def record(request_id: str) -> AuditRecord:
    return AuditRecord(
        request_id=request_id,
        method="GET",
        route="/Patient/{id}",
        interaction="read",
        started=time.time(),
        resource_type="Patient",
        resource_id="pat-1",
        status=200,
        decision=Decision.PERMIT,
        patients={"pat-1"},
    )


def test_the_redis_spool_needs_a_target() -> None:
    with pytest.raises(ValidationError, match="spool redis needs a delivery target"):
        DeliverySettings(spool="redis")
    assert DeliverySettings().spool == "log"


def test_the_redis_spool_needs_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "k" * 40)
    settings = make_settings(
        "http://127.0.0.1:9/fhir",
        **{
            "audit.log_file": str(tmp_path / "audit.jsonl"),
            "audit.log_key_env": KEY_ENV,
            "audit.delivery.target": "file",
            "audit.delivery.file": str(tmp_path / "events.jsonl"),
            "audit.delivery.spool": "redis",
        },
    )
    with pytest.raises(ConfigError, match=r"redis\.url"):
        ProxyState(settings)


def unreachable() -> aioredis.Redis:
    return aioredis.Redis.from_url(
        f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5, socket_connect_timeout=0.5
    )


def test_an_unreachable_spool_refuses_at_once() -> None:
    async def scenario() -> None:
        client = unreachable()
        writer = RedisSpoolWriter(client, timeout=0.5)
        with pytest.raises(SpoolUnavailableError):
            await writer.append({"request_id": "r1"})
        started = time.monotonic()
        with pytest.raises(SpoolUnavailableError, match="moments ago"):
            await writer.append({"request_id": "r2"})
        assert time.monotonic() - started < 0.1
        await client.aclose()

    asyncio.run(scenario())


def test_the_trail_refuses_a_request_the_spool_cannot_take(tmp_path: Path) -> None:
    async def scenario() -> None:
        settings = AuditSettings(log_file=tmp_path / "audit.jsonl", log_key_env=KEY_ENV)
        trail = AuditTrail.from_settings(settings, environ={KEY_ENV: "k" * 40})
        client = unreachable()
        trail.spool = RedisSpoolWriter(client, timeout=0.5)
        try:
            with pytest.raises(AuditUnavailableError):
                await trail.submit_spooled(record("refused"))
        finally:
            trail.close()
            await client.aclose()

    asyncio.run(scenario())


def test_the_trail_appends_each_entry_to_the_stream(tmp_path: Path, redis_server: RedisServer) -> None:
    async def scenario() -> None:
        settings = AuditSettings(log_file=tmp_path / "audit.jsonl", log_key_env=KEY_ENV)
        trail = AuditTrail.from_settings(settings, environ={KEY_ENV: "k" * 40})
        client = aioredis.Redis.from_url(redis_server.url)
        trail.spool = RedisSpoolWriter(client)
        try:
            await trail.submit_spooled(record("spooled"))
        finally:
            trail.close()
        entries: Any = await client.xrange(STREAM)
        await client.aclose()
        assert len(entries) == 1
        assert orjson.loads(entries[0][1][b"entry"])["request_id"] == "spooled"

    asyncio.run(scenario())


async def _spool_entries(url: str, prefix: str, count: int, *, garbage: bool = False) -> None:
    client = aioredis.Redis.from_url(url)
    writer = RedisSpoolWriter(client)
    for n in range(count):
        await writer.append(request_entry(record(f"{prefix}-{n}"), OBSERVER))
    if garbage:
        await client.xadd(STREAM, {"entry": b"not json"})
    await client.aclose()


def test_delivery_from_the_stream_to_a_file(tmp_path: Path, redis_server: RedisServer) -> None:
    asyncio.run(_spool_entries(redis_server.url, "file", 5, garbage=True))
    target = tmp_path / "events.jsonl"
    settings = DeliverySettings(target="file", file=target, batch_size=2)
    asyncio.run(_deliver(tmp_path / "audit.jsonl", settings, redis_server.url))
    delivered = [orjson.loads(line) for line in target.read_bytes().splitlines()]
    events = [event for event in delivered if event.get("resourceType") == "AuditEvent"]
    assert len({event["id"] for event in events}) == len(events) == 5
    assert delivered[-1] == {"raw": "not json"}  # an unreadable entry does not stop the stream


async def _deliver(log: Path, settings: DeliverySettings, url: str) -> None:
    client = aioredis.Redis.from_url(url)
    delivery = RedisSpoolDelivery(log, settings, client)
    await delivery.start()
    try:
        await delivery.admit()
        for _ in range(200):
            if not await client.xlen(STREAM):
                break
            await asyncio.sleep(0.05)
        assert await client.xlen(STREAM) == 0
        assert (await client.xpending(STREAM, GROUP))["pending"] == 0
        await delivery.admit()
        assert delivery.backlog == 0
    finally:
        await delivery.stop()
        await client.aclose()


def test_a_full_stream_refuses_admission(tmp_path: Path, redis_server: RedisServer) -> None:
    asyncio.run(_spool_entries(redis_server.url, "full", 3))
    settings = DeliverySettings(target="file", file=tmp_path / "events.jsonl", max_backlog=3)
    asyncio.run(_admit_when_full(tmp_path / "audit.jsonl", settings, redis_server.url))


async def _admit_when_full(log: Path, settings: DeliverySettings, url: str) -> None:
    client = aioredis.Redis.from_url(url)
    delivery = RedisSpoolDelivery(log, settings, client)  # not started: nothing drains the stream
    try:
        with pytest.raises(AuditBacklogFullError):
            await delivery.admit()
        assert delivery.backlog == 3
    finally:
        await client.aclose()

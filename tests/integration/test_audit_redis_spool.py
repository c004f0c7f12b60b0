"""Audit delivery from a shared Redis spool (``audit.delivery.spool: redis``): replicas without persistent
volumes, one real Redis, one real audit server (sekmet). Every request's AuditEvents arrive once, through
an audit-server outage and a replica that stopped with entries it had read but not delivered; with Redis
down, requests are refused."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from proxy.audit.redis_spool import GROUP, STREAM
from proxy.embedded_upstream import EmbeddedUpstream
from tests.conftest import RedisServer, RunningProxy, SeededUpstream, free_port, make_settings
from tests.integration.test_audit_delivery import request_id

KEY_ENV = "FHIRWALL_TEST_SPOOL_KEY"


@pytest.fixture
def audit_server(tmp_path: Path) -> Iterator[EmbeddedUpstream]:
    data_dir = tmp_path / "audit-server"
    data_dir.mkdir()
    server = EmbeddedUpstream(free_port(), data_dir=data_dir)
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _log_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "spool-test-key-0123456789abcdef")


def spool_settings(
    upstream: SeededUpstream, redis_url: str, audit_url: str, folder: Path, **overrides: Any
) -> Any:
    folder.mkdir(parents=True, exist_ok=True)
    return make_settings(
        upstream.base_url,
        **{
            "redis.url": redis_url,
            "audit.log_file": str(folder / "audit.jsonl"),
            "audit.log_key_env": KEY_ENV,
            "audit.delivery.target": "fhir",
            "audit.delivery.url": audit_url,
            "audit.delivery.spool": "redis",
            "audit.delivery.batch_size": 10,
            "audit.delivery.retry_initial_seconds": 0.1,
            "audit.delivery.retry_max_seconds": 0.5,
            **overrides,
        },
    )


def send(proxy: RunningProxy, patient: str, request_ids: list[str]) -> None:
    with proxy.client() as http:
        for request_id in request_ids:
            response = http.get(f"/Patient/{patient}", headers={"x-request-id": request_id})
            assert response.status_code == 200, response.text


def stored(server: EmbeddedUpstream) -> tuple[list[dict[str, Any]], int]:
    """The AuditEvents the audit server holds, and how many versions its history shows."""
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        search = http.get("/AuditEvent", params={"_count": 1000}).json()
        history = http.get("/AuditEvent/_history", params={"_count": 1000}).json()
    return [entry["resource"] for entry in search.get("entry", [])], int(history["total"])


def wait_for(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {within} s: {what}")
        time.sleep(0.1)


def delivered_ids(server: EmbeddedUpstream) -> set[str]:
    return {request_id(event) for event in stored(server)[0]}


def assert_exactly(server: EmbeddedUpstream, expected: list[str]) -> None:
    wait_for(lambda: delivered_ids(server) >= set(expected), 30, "every request's AuditEvents delivered")
    events, versions = stored(server)
    ids = [request_id(event) for event in events]
    assert sorted(ids) == sorted(expected)  # one read, one AuditEvent: none missing, none extra
    assert versions == len(events)  # never sent twice (the server versions every PUT)


def spool(redis_server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url)


def test_two_replicas_deliver_each_entry_once(
    upstream: SeededUpstream,
    redis_server: RedisServer,
    audit_server: EmbeddedUpstream,
    run_proxy: Callable[..., RunningProxy],
    tmp_path: Path,
) -> None:
    replicas = [
        run_proxy(spool_settings(upstream, redis_server.url, audit_server.base_url, tmp_path / f"r{n}"))
        for n in range(2)
    ]
    patient = upstream.first("Patient")
    expected = [f"two-{n:03d}" for n in range(30)]
    for n, request in enumerate(expected):
        send(replicas[n % 2], patient, [request])
    assert_exactly(audit_server, expected)
    client = spool(redis_server)
    wait_for(lambda: client.xlen(STREAM) == 0, 10, "the spool emptied")
    assert client.xpending(STREAM, GROUP)["pending"] == 0


def test_an_audit_server_outage_loses_nothing(
    upstream: SeededUpstream,
    redis_server: RedisServer,
    audit_server: EmbeddedUpstream,
    run_proxy: Callable[..., RunningProxy],
    tmp_path: Path,
) -> None:
    proxy = run_proxy(spool_settings(upstream, redis_server.url, audit_server.base_url, tmp_path / "r"))
    patient = upstream.first("Patient")
    client = spool(redis_server)
    before = [f"before-{n:03d}" for n in range(10)]
    send(proxy, patient, before)
    wait_for(lambda: client.xlen(STREAM) == 0, 20, "the first burst delivered")

    audit_server.stop()
    during = [f"outage-{n:03d}" for n in range(20)]
    send(proxy, patient, during)
    time.sleep(1.0)
    assert client.xlen(STREAM) == len(during)  # waiting in Redis, not dropped

    audit_server.start()
    wait_for(lambda: client.xlen(STREAM) == 0, 30, "the outage backlog drained")
    assert_exactly(audit_server, before + during)


def test_a_stopped_replica_entries_are_claimed_by_another(
    upstream: SeededUpstream,
    redis_server: RedisServer,
    audit_server: EmbeddedUpstream,
    run_proxy: Callable[..., RunningProxy],
    tmp_path: Path,
) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}/fhir"
    first = RunningProxy(
        spool_settings(
            upstream,
            redis_server.url,
            unreachable,
            tmp_path / "a",
            **{"audit.delivery.drain_timeout_seconds": 0.2},
        )
    ).start()
    client = spool(redis_server)
    expected = [f"claimed-{n:03d}" for n in range(12)]
    try:
        send(first, upstream.first("Patient"), expected)
        wait_for(lambda: client.xpending(STREAM, GROUP)["pending"] > 0, 10, "entries read by the first")
    finally:
        first.stop()
    assert client.xpending(STREAM, GROUP)["pending"] > 0  # read by the stopped replica, never acknowledged
    assert client.xlen(STREAM) == len(expected)

    run_proxy(
        spool_settings(
            upstream,
            redis_server.url,
            audit_server.base_url,
            tmp_path / "b",
            **{"audit.delivery.claim_idle_seconds": 0.5},
        )
    )
    wait_for(lambda: client.xlen(STREAM) == 0, 30, "the second replica delivered the claimed entries")
    assert_exactly(audit_server, expected)


def test_redis_down_refuses_requests(
    upstream: SeededUpstream,
    redis_server: RedisServer,
    audit_server: EmbeddedUpstream,
    run_proxy: Callable[..., RunningProxy],
    tmp_path: Path,
) -> None:
    proxy = run_proxy(spool_settings(upstream, redis_server.url, audit_server.base_url, tmp_path / "r"))
    patient = upstream.first("Patient")
    send(proxy, patient, ["up-001"])
    redis_server.stop()
    with proxy.client() as http:
        response = http.get(f"/Patient/{patient}")
    assert response.status_code == 503
    assert response.json()["issue"][0]["code"] == "transient"

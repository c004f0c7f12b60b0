"""Rate limits on two replicas sharing one real Redis in front of the real upstream: a client's burst is
shared by both replicas, a refusal is a 429 with Retry-After and an OperationOutcome (audited, never
forwarded), other clients and other users have their own buckets, and the rate achieved under load is the
configured one."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from proxy.audit.chain import read_events
from proxy.auth.dev_issuer import DevIssuer, load_or_create_key
from proxy.settings import Settings
from tests.conftest import (
    RedisServer,
    RunningProxy,
    SeededUpstream,
    free_port,
    make_settings,
    upstream_traffic,
)

AUDIENCE = "https://fhir.example.test/fhir"
AUDIT_KEY_ENV = "FHIRWALL_TEST_RATE_LIMIT_AUDIT_KEY"
MEASURED_RATE, MEASURED_BURST, MEASURED_SECONDS = 5.0, 5, 3.0
RULES: list[dict[str, Any]] = [
    # a slow refill keeps the sequential checks exact: one token every 2 s
    {"name": "apps", "per": "client", "client_id": ["limited-app", "other-app"], "rate": 0.5, "burst": 5},
    {
        "name": "measured",
        "per": "client",
        "client_id": ["measured-app"],
        "rate": MEASURED_RATE,
        "burst": MEASURED_BURST,
    },
    {"name": "users", "per": "user", "client_id": ["shared-app"], "rate": 0.2, "burst": 3},
]


@dataclass
class Replicas:
    a: RunningProxy
    b: RunningProxy
    issuer: DevIssuer
    audit_log: Path
    patient: str

    def client(self, replica: RunningProxy, client_id: str, user: str = "svc") -> httpx.Client:
        claims = {"sub": user, "client_id": client_id, "scope": "system/*.rs"}
        token = self.issuer.mint(claims, audience=AUDIENCE)
        return replica.client(headers={"authorization": f"Bearer {token}"})

    def pair(self, client_id: str, user: str = "svc") -> tuple[httpx.Client, httpx.Client]:
        return self.client(self.a, client_id, user), self.client(self.b, client_id, user)


def replica_settings(upstream: SeededUpstream, redis_url: str, key_file: Path, **more: Any) -> Any:
    return make_settings(
        upstream.base_url,
        **{
            "server.port": free_port(),
            "auth.dev_issuer": {
                "enabled": True,
                "key_file": str(key_file),
                "issuer": "https://dev.example.test",
            },
            "auth.audiences": [AUDIENCE],
            "redis.url": redis_url,
            "rate_limits": {"enabled": True, "rules": RULES},
            **more,
        },
    )


@pytest.fixture(scope="module")
def replicas(upstream: SeededUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    folder = tmp_path_factory.mktemp("rate-limits")
    key_file = folder / "issuer.pem"
    issuer = DevIssuer(load_or_create_key(key_file), "https://dev.example.test")
    audit_log = folder / "audit.jsonl"
    patch = pytest.MonkeyPatch()
    patch.setenv(AUDIT_KEY_ENV, "rate-limit-audit-key")
    redis_server = RedisServer().start()
    started: list[RunningProxy] = []
    try:
        audited = {"audit.log_file": str(audit_log), "audit.log_key_env": AUDIT_KEY_ENV}
        started.append(
            RunningProxy(replica_settings(upstream, redis_server.url, key_file, **audited)).start()
        )
        started.append(RunningProxy(replica_settings(upstream, redis_server.url, key_file)).start())
        yield Replicas(started[0], started[1], issuer, audit_log, upstream.first("Patient"))
    finally:
        for proxy in started:
            proxy.stop()
        redis_server.stop()
        patch.undo()


def exhaust(client: httpx.Client, path: str, *, headers: dict[str, str] | None = None) -> None:
    """Spend the caller's tokens: ask until refused."""
    for _ in range(50):
        if client.get(path, headers=headers).status_code == 429:
            return
    raise AssertionError("never refused")


def test_the_burst_is_shared_by_both_replicas_and_a_refusal_says_when_to_retry(
    replicas: Replicas, upstream: SeededUpstream
) -> None:
    path = f"/Patient/{replicas.patient}"
    client_a, client_b = replicas.pair("limited-app")
    with client_a, client_b:
        statuses = [(client_a if i % 2 == 0 else client_b).get(path).status_code for i in range(5)]
        assert statuses == [200] * 5
        request_id = f"rl-{uuid.uuid4().hex}"
        refused = client_b.get(path, headers={"x-request-id": request_id})
        assert refused.status_code == 429
        assert refused.headers["content-type"].startswith("application/fhir+json")
        retry_after = int(refused.headers["retry-after"])
        assert 1 <= retry_after <= 2
        assert refused.headers["ratelimit-limit"] == "5"
        assert refused.headers["ratelimit-remaining"] == "0"
        issue = refused.json()["issue"][0]
        assert (refused.json()["resourceType"], issue["code"]) == ("OperationOutcome", "throttled")
        assert "'apps'" in issue["diagnostics"]
        assert upstream_traffic(upstream.server, request_id, expect_at_least=0) == []  # never forwarded
        assert client_a.get(path).status_code == 429

        other_a, other_b = replicas.pair("other-app")
        with other_a, other_b:
            assert [other.get(path).status_code for other in (other_a, other_b)] == [200, 200]

        time.sleep(retry_after)
        assert client_b.get(path).status_code == 200
        assert client_a.get(path).status_code == 429  # one token came back, and it is spent


def test_a_refused_write_is_not_read_or_forwarded(replicas: Replicas, upstream: SeededUpstream) -> None:
    client_a, client_b = replicas.pair("limited-app", user="writer")
    with client_a, client_b:
        exhaust(client_a, "/Patient?_count=1")
        request_id = f"rl-{uuid.uuid4().hex}"
        body = orjson.dumps({"resourceType": "Basic", "code": {"text": "x"}})
        answer = client_b.post(
            "/Basic",
            content=body,
            headers={"content-type": "application/fhir+json", "x-request-id": request_id},
        )
        assert answer.status_code == 429
        assert upstream_traffic(upstream.server, request_id, expect_at_least=0) == []


def test_users_of_one_client_have_their_own_buckets(replicas: Replicas) -> None:
    path = f"/Patient/{replicas.patient}"
    first_a, first_b = replicas.pair("shared-app", user="user-1")
    second_a, second_b = replicas.pair("shared-app", user="user-2")
    with first_a, first_b, second_a, second_b:
        assert [client.get(path).status_code for client in (first_a, first_b, first_a, first_b)] == [
            200
        ] * 3 + [429]
        assert [client.get(path).status_code for client in (second_b, second_a, second_b, second_a)] == [
            200
        ] * 3 + [429]


def test_refusals_are_audited(replicas: Replicas) -> None:
    client_a, _ = replicas.pair("limited-app", user="audited")
    with client_a:
        exhaust(client_a, f"/Patient/{replicas.patient}")
    logged = b"\n".join(orjson.dumps(event) for event in read_events(replicas.audit_log))
    assert b"TooManyRequestsError" in logged
    assert b"rate-limit:apps" in logged
    refusals = [
        event for event in read_events(replicas.audit_log) if "HTTP 429" in event.get("outcomeDesc", "")
    ]
    assert refusals
    assert all(event["outcome"] == "4" for event in refusals)


def test_the_achieved_rate_is_the_configured_rate(replicas: Replicas) -> None:
    """Four threads send as fast as they can for 3 s, two per replica: the 200s stay within
    rate x duration + burst."""
    path = f"/Patient/{replicas.patient}"
    statuses: list[int] = []
    lock = threading.Lock()
    start = time.monotonic()
    deadline = start + MEASURED_SECONDS

    def drive(replica: RunningProxy) -> None:
        with replicas.client(replica, "measured-app") as client:
            while time.monotonic() < deadline:
                status = client.get(path).status_code
                with lock:
                    statuses.append(status)

    threads = [threading.Thread(target=drive, args=(replica,)) for replica in (replicas.a, replicas.b) * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - start
    served, refused = statuses.count(200), statuses.count(429)
    ceiling = MEASURED_BURST + MEASURED_RATE * elapsed
    print(
        f"\nrate limit {MEASURED_RATE:g}/s, burst {MEASURED_BURST}, two replicas on one Redis, 4 threads: "
        f"{len(statuses)} requests in {elapsed:.2f} s ({len(statuses) / elapsed:.0f} req/s); "
        f"{served} served (200), {refused} refused (429); ceiling burst + rate x time = {ceiling:.1f}; "
        f"achieved rate after the burst {(served - MEASURED_BURST) / elapsed:.2f}/s"
    )
    assert served + refused == len(statuses)
    assert served <= ceiling + 1
    assert served >= 0.8 * ceiling
    assert refused > served  # the clients really did ask faster than the limit


def test_without_authentication_the_address_counts(
    upstream: SeededUpstream, run_proxy: Callable[[Settings], RunningProxy]
) -> None:
    """No token, no Redis: per-address buckets in the proxy's memory; X-Forwarded-For counts only from a
    trusted proxy."""
    rules = [{"name": "by-address", "per": "address", "rate": 0.1, "burst": 2}]
    path = f"/Patient/{upstream.first('Patient')}"
    direct = run_proxy(make_settings(upstream.base_url, rate_limits={"enabled": True, "rules": rules}))
    behind = run_proxy(
        make_settings(
            upstream.base_url,
            rate_limits={"enabled": True, "rules": rules},
            **{"server.trusted_proxies": ["127.0.0.1/32"]},
        )
    )
    with direct.client() as client:
        first = {"x-forwarded-for": "203.0.113.1"}
        assert [client.get(path, headers=first).status_code for _ in range(3)] == [200, 200, 429]
        assert client.get(path, headers={"x-forwarded-for": "203.0.113.2"}).status_code == 429  # ignored
    with behind.client() as client:
        first = {"x-forwarded-for": "203.0.113.1"}
        assert [client.get(path, headers=first).status_code for _ in range(3)] == [200, 200, 429]
        refused = client.get(path, headers=first)
        assert 8 <= int(refused.headers["retry-after"]) <= 10  # 1 token at 0.1 per second
        assert client.get(path, headers={"x-forwarded-for": "203.0.113.2"}).status_code == 200

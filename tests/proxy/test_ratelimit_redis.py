"""The shared rate-limit backend against a real redis-server: atomic under concurrency, shared by replicas,
keys that expire and name nobody, and Redis failures refusing (or, when configured, allowing) requests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as aioredis

from proxy.auth.principal import Principal
from proxy.errors import TooManyRequestsError
from proxy.fhir.request import classify
from proxy.limits import Limit, LimiterUnavailableError, MemoryBackend, RateLimiter, RedisBackend, Verdict
from proxy.limits.rules import KEY_PREFIX
from proxy.settings import RateLimitQuota, RateLimitSettings
from tests.conftest import RedisServer

READ = classify("GET", "/Patient/p1", "")


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coroutine)


@asynccontextmanager
async def clients(url: str, count: int) -> AsyncIterator[list[aioredis.Redis]]:
    """``count`` independent clients (each its own connection pool), like replicas."""
    async with AsyncExitStack() as stack:
        made = []
        for _ in range(count):
            client = aioredis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
            stack.push_async_callback(client.aclose)
            made.append(client)
        yield made


def bucket(name: str = "r", rate: float = 0.01, burst: int = 10, cost: int = 1, **more: Any) -> Limit:
    return Limit(name, f"{KEY_PREFIX}{name}:0123456789abcdef0123456789abcdef", rate, burst, cost, **more)


def caller(subject: str, client_id: str = "app") -> Principal:
    return Principal("https://idp.example.org", subject, client_id, "user/*.rs", time.time() + 3600)


def test_concurrent_takes_never_exceed_the_burst(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        async with clients(redis_server.url, 4) as replicas:
            backends = [RedisBackend(client) for client in replicas]
            limit = bucket(burst=10, rate=0.01)
            verdicts = await asyncio.gather(*(backends[i % 4].take([limit]) for i in range(200)))
            assert sum(verdict.allowed for verdict in verdicts) == 10
            refused = [verdict for verdict in verdicts if not verdict.allowed]
            assert all(verdict.limit == limit and verdict.remaining == 0 for verdict in refused)
            assert all(90 < verdict.wait <= 100 for verdict in refused)  # one token at 0.01 per second

    run(scenario())


def test_concurrent_costly_takes_share_the_tokens_exactly(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        async with clients(redis_server.url, 3) as replicas:
            backends = [RedisBackend(client) for client in replicas]
            search = bucket("searches", burst=20, cost=3)
            verdicts = await asyncio.gather(*(backends[i % 3].take([search]) for i in range(60)))
            assert sum(verdict.allowed for verdict in verdicts) == 6  # 18 of 20 tokens; 2 are too few
            assert {verdict.remaining for verdict in verdicts if not verdict.allowed} == {2}

    run(scenario())


def test_two_limiters_on_one_redis_share_the_buckets(redis_server: RedisServer) -> None:
    settings = RateLimitSettings.model_validate(
        {"enabled": True, "rules": [{"name": "per-app", "per": "client", "rate": 0.05, "burst": 4}]}
    )

    async def scenario() -> None:
        async with clients(redis_server.url, 2) as (first, second):
            replica_a = RateLimiter(settings, RedisBackend(first))
            replica_b = RateLimiter(settings, RedisBackend(second))
            for replica in (replica_a, replica_b, replica_a, replica_b):
                await replica.admit(READ, caller("u1"), "10.0.0.1")
            for replica in (replica_a, replica_b):
                with pytest.raises(TooManyRequestsError) as refused:
                    await replica.admit(READ, caller("u2"), "10.0.0.2")  # same client, other user
                assert refused.value.headers["Retry-After"] == "20"
            await replica_b.admit(READ, caller("u1", client_id="other-app"), "10.0.0.1")

    run(scenario())


def test_tokens_come_back_at_the_rate(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        async with clients(redis_server.url, 1) as (client,):
            backend = RedisBackend(client)
            limit = bucket(rate=20.0, burst=2)
            assert [(await backend.take([limit])).allowed for _ in range(3)] == [True, True, False]
            await asyncio.sleep(0.06)
            assert (await backend.take([limit])).allowed
            refused = await backend.take([limit])
            assert not refused.allowed
            assert 0 < refused.wait <= 0.05

    run(scenario())


def test_all_or_nothing_and_quota_windows_in_redis(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        async with clients(redis_server.url, 1) as (client,):
            backend = RedisBackend(client)
            wide = bucket("wide", burst=10)
            daily = bucket(
                "daily", rate=100.0, burst=100, quota=RateLimitQuota(requests=3, per_seconds=86_400)
            )
            assert [(await backend.take([wide, daily])).allowed for _ in range(4)] == [True] * 3 + [False]
            refused = await backend.take([wide, daily])
            assert (refused.limit, refused.by_quota, refused.remaining) == (daily, True, 0)
            seconds_to_midnight = 86_400 - time.time() % 86_400
            assert refused.wait == pytest.approx(seconds_to_midnight, abs=2)
            assert [(await backend.take([wide])).allowed for _ in range(8)] == [True] * 7 + [False]

    run(scenario())


def test_keys_expire_and_name_nobody(redis_server: RedisServer) -> None:
    settings = RateLimitSettings.model_validate(
        {
            "enabled": True,
            "rules": [
                {"name": "per-user", "per": "user", "rate": 0.5, "burst": 10},
                {
                    "name": "hourly",
                    "per": "client",
                    "rate": 10,
                    "burst": 10,
                    "quota": {"requests": 9, "per_seconds": 3600},
                },
            ],
        }
    )

    async def scenario() -> None:
        async with clients(redis_server.url, 1) as (client,):
            limiter = RateLimiter(settings, RedisBackend(client))
            await limiter.admit(READ, caller("Practitioner-secret-42", "scraper-app"), "10.9.8.7")
            keys = sorted(key.decode() if isinstance(key, bytes) else key for key in await client.keys("*"))
            assert [key.split(":")[2] for key in keys] == ["hourly", "hourly", "per-user"]
            assert keys[1].endswith(":quota")
            assert not any(word in key for key in keys for word in ("secret", "scraper", "10.9", "idp"))
            user_ttl = await client.pttl(keys[2])
            assert 19_000 < user_ttl <= 21_000  # 10 tokens at 0.5 per second, and a second to spare
            assert 0 < await client.pttl(keys[0]) <= 2_000
            quota_ttl = await client.pttl(keys[1])
            to_next_hour = (3600 - time.time() % 3600) * 1000
            assert to_next_hour - 1_000 < quota_ttl <= to_next_hour + 1_500  # the window end, and a second

    run(scenario())


def test_the_redis_and_memory_backends_agree(redis_server: RedisServer) -> None:
    async def outcomes(backend: RedisBackend | MemoryBackend) -> list[tuple[bool, int]]:
        limits = [bucket("a", burst=5, cost=2), bucket("b", burst=3)]
        verdicts: list[Verdict] = [await backend.take(limits) for _ in range(5)]
        return [(verdict.allowed, verdict.remaining) for verdict in verdicts]

    async def scenario() -> None:
        async with clients(redis_server.url, 1) as (client,):
            assert await outcomes(RedisBackend(client)) == await outcomes(MemoryBackend())

    run(scenario())


def limiter_on(client: aioredis.Redis, on_failure: str) -> RateLimiter:
    settings = RateLimitSettings.model_validate(
        {
            "enabled": True,
            "rules": [{"name": "per-app", "per": "client", "rate": 1, "burst": 100}],
            "on_backend_failure": on_failure,
        }
    )
    return RateLimiter(settings, RedisBackend(client))


def test_redis_going_away_refuses_requests() -> None:
    server = RedisServer().start()

    async def scenario() -> None:
        async with clients(server.url, 1) as (client,):
            limiter = limiter_on(client, "refuse")
            await limiter.admit(READ, caller("u1"), "10.0.0.1")
            server.stop()
            for _ in range(2):
                with pytest.raises(LimiterUnavailableError) as refused:
                    await limiter.admit(READ, caller("u1"), "10.0.0.1")
                assert refused.value.status_code == 503

    try:
        run(scenario())
    finally:
        server.stop()


def test_redis_going_away_may_be_allowed() -> None:
    server = RedisServer().start()

    async def scenario() -> None:
        async with clients(server.url, 1) as (client,):
            limiter = limiter_on(client, "allow")
            await limiter.admit(READ, caller("u1"), "10.0.0.1")
            server.stop()
            for _ in range(3):
                await limiter.admit(READ, caller("u1"), "10.0.0.1")

    try:
        run(scenario())
    finally:
        server.stop()

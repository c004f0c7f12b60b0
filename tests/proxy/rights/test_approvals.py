"""Two-person review: approval requests, decisions and single use, in memory and in Redis (atomic use across
replicas)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest

from proxy.auth.principal import Principal
from proxy.errors import ForbiddenError, NotFoundError
from proxy.rights.approvals import (
    KEY_PREFIX,
    Approval,
    ApprovalStateError,
    ApprovalStore,
    MemoryApprovalStore,
    RedisApprovalStore,
)
from proxy.rights.errors import ApprovalRequiredError, RightsLookupError
from proxy.rights.model import ApprovalSettings
from tests.clock import Clock
from tests.conftest import RedisServer
from tests.proxy.rights.support import principal, redis_client

SETTINGS = ApprovalSettings(default_minutes=30, max_minutes=120, request_minutes=600)
REQUESTER = principal("analyst-1", client_id="research-app", fhir_user="Practitioner/analyst")
APPROVER = principal("chief-2", client_id="ehr", fhir_user="Practitioner/chief")
StoreFactory = Callable[[], AbstractAsyncContextManager[ApprovalStore]]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", "redis"])
def stores(request: pytest.FixtureRequest, clock: Clock) -> StoreFactory:
    """Opens stores sharing one backing (with Redis: a new client per store, like replicas)."""
    if request.param == "memory":
        shared = MemoryApprovalStore(SETTINGS, clock=clock)

        @asynccontextmanager
        async def memory_store() -> AsyncIterator[ApprovalStore]:
            yield shared

        return memory_store
    server: RedisServer = request.getfixturevalue("redis_server")

    @asynccontextmanager
    async def redis_store() -> AsyncIterator[ApprovalStore]:
        async with redis_client(server.url) as client:
            yield RedisApprovalStore(client, SETTINGS, clock=clock)

    return redis_store


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coroutine)


async def approved(store: ApprovalStore, rule: str = "bulk-export", minutes: int | None = None) -> Approval:
    request = await store.create(rule, "quarterly registry submission", REQUESTER)
    return await store.approve(request.id, APPROVER, True, minutes)


def test_create_approve_use_once(stores: StoreFactory, clock: Clock) -> None:
    async def scenario() -> None:
        async with stores() as requester_side, stores() as approver_side:
            request = await requester_side.create("bulk-export", "quarterly registry submission", REQUESTER)
            assert len(request.id) >= 22
            assert request.status_at(clock.now) == "pending"
            assert request.request_expires_at == clock.now + 600 * 60
            assert request.requester == REQUESTER.binding
            assert request.requester_label == "Practitioner/analyst"
            assert "quarterly" not in repr(request)
            assert await approver_side.get(request.id) == request

            clock.advance(60)
            granted = await approver_side.approve(request.id, APPROVER, True)
            assert granted.status_at(clock.now) == "approved"
            assert granted.approver_label == "Practitioner/chief"
            assert granted.approver_binding == APPROVER.binding
            assert granted.approved_at == clock.now
            assert granted.expires_at == clock.now + 30 * 60

            used = await requester_side.use(request.id, REQUESTER, "bulk-export", "req-1")
            assert used.status == "used"
            assert used.used_by_request == "req-1"
            assert used.used_at == clock.now
            with pytest.raises(ApprovalRequiredError, match="already been used") as refused:
                await approver_side.use(request.id, REQUESTER, "bulk-export", "req-2")
            assert refused.value.rule == "bulk-export"
            assert "x-fhirwall-approval" in refused.value.message
            assert (await requester_side.get(request.id)) == used

    run(scenario())


def test_minutes_are_bounded(stores: StoreFactory, clock: Clock) -> None:
    async def scenario() -> None:
        async with stores() as store:
            waiting = await store.create("bulk-export", "why", REQUESTER, minutes_to_wait=5)
            assert waiting.request_expires_at == clock.now + 5 * 60
            long = await store.create("bulk-export", "why", REQUESTER, minutes_to_wait=100_000)
            assert long.request_expires_at == clock.now + 600 * 60
            capped = await store.approve(long.id, APPROVER, True, minutes=100_000)
            assert capped.expires_at == clock.now + 120 * 60
            shortest = await approved(store, minutes=0)
            assert shortest.expires_at == clock.now + 60

    run(scenario())


@pytest.mark.parametrize(
    "same_person",
    [
        REQUESTER,
        principal("analyst-1", client_id="another-app"),  # same subject at the same issuer
        principal("someone-else", client_id="ehr", fhir_user="Practitioner/analyst"),  # same fhirUser
    ],
    ids=["same-binding", "same-subject", "same-fhir-user"],
)
def test_self_approval_is_refused(stores: StoreFactory, same_person: Principal) -> None:
    async def scenario() -> None:
        async with stores() as store:
            request = await store.create("bulk-export", "why", REQUESTER)
            with pytest.raises(ForbiddenError, match="self-approval is not allowed"):
                await store.approve(request.id, same_person, True)
            with pytest.raises(ForbiddenError, match="self-approval is not allowed"):
                await store.deny(request.id, same_person, True)
            assert (await store.get(request.id)) == request

    run(scenario())


def test_same_subject_at_another_issuer_is_another_person(stores: StoreFactory) -> None:
    async def scenario() -> None:
        async with stores() as store:
            request = await store.create("bulk-export", "why", REQUESTER)
            other = principal("analyst-1", client_id="ehr", issuer="https://other-idp.example.org")
            assert (await store.approve(request.id, other, True)).status == "approved"

    run(scenario())


def test_non_approver_cannot_decide(stores: StoreFactory) -> None:
    async def scenario() -> None:
        async with stores() as store:
            request = await store.create("bulk-export", "why", REQUESTER)
            with pytest.raises(ForbiddenError, match="may not decide"):
                await store.approve(request.id, APPROVER, False)
            with pytest.raises(ForbiddenError, match="may not decide"):
                await store.deny(request.id, APPROVER, False)
            with pytest.raises(NotFoundError):
                await store.approve("x" * 32, APPROVER, True)

    run(scenario())


def test_decisions_need_a_pending_request(stores: StoreFactory, clock: Clock) -> None:
    async def scenario() -> None:
        async with stores() as store:
            granted = await approved(store)
            with pytest.raises(ApprovalStateError, match="approved, no longer pending") as conflict:
                await store.approve(granted.id, APPROVER, True)
            assert conflict.value.status_code == 409
            with pytest.raises(ApprovalStateError):
                await store.deny(granted.id, APPROVER, True)
            late = await store.create("bulk-export", "why", REQUESTER, minutes_to_wait=10)
            clock.advance(10 * 60)
            with pytest.raises(ApprovalStateError, match="expired"):
                await store.approve(late.id, APPROVER, True)

    run(scenario())


def test_denied_request_cannot_be_used(stores: StoreFactory, clock: Clock) -> None:
    async def scenario() -> None:
        async with stores() as store:
            request = await store.create("bulk-export", "why", REQUESTER)
            denied = await store.deny(request.id, APPROVER, True)
            assert denied.status_at(clock.now) == "denied"
            assert denied.denied_at == clock.now
            assert denied.approver_label == "Practitioner/chief"
            with pytest.raises(ApprovalRequiredError, match="was denied"):
                await store.use(request.id, REQUESTER, "bulk-export", "req-1")

    run(scenario())


def test_expired_approval_is_refused(stores: StoreFactory, clock: Clock) -> None:
    async def scenario() -> None:
        async with stores() as store:
            granted = await approved(store, minutes=1)
            clock.advance(59)
            assert granted.status_at(clock.now) == "approved"
            clock.advance(1)
            assert granted.status_at(clock.now) == "expired"
            with pytest.raises(ApprovalRequiredError, match="the approval has expired"):
                await store.use(granted.id, REQUESTER, "bulk-export", "req-1")

    run(scenario())


def test_every_refusal_says_why(stores: StoreFactory, clock: Clock) -> None:
    async def scenario() -> None:
        async with stores() as store:
            granted = await approved(store)
            pending = await store.create("bulk-export", "why", REQUESTER)
            lapsed = await store.create("bulk-export", "why", REQUESTER, minutes_to_wait=1)
            used = await approved(store)
            await store.use(used.id, REQUESTER, "bulk-export", "req-0")
            other_client = principal("analyst-1", client_id="another-app", fhir_user="Practitioner/analyst")
            attempts = {
                "unknown": (granted.id[::-1], REQUESTER, "bulk-export"),
                "malformed": ("../../etc", REQUESTER, "bulk-export"),
                "wrong requester": (granted.id, APPROVER, "bulk-export"),
                "another token binding": (granted.id, other_client, "bulk-export"),
                "wrong rule": (granted.id, REQUESTER, "reidentify"),
                "pending": (pending.id, REQUESTER, "bulk-export"),
                "used": (used.id, REQUESTER, "bulk-export"),
            }
            problems: dict[str, str] = {}
            for name, (approval_id, caller, rule) in attempts.items():
                with pytest.raises(ApprovalRequiredError) as refused:
                    await store.use(approval_id, caller, rule, "req-1")
                assert refused.value.rule == rule
                problems[name] = refused.value.message
            clock.advance(61)
            with pytest.raises(ApprovalRequiredError) as refused:
                await store.use(lapsed.id, REQUESTER, "bulk-export", "req-1")
            problems["request lapsed"] = refused.value.message
            assert "someone else" in problems["wrong requester"]
            assert problems["another token binding"] == problems["wrong requester"]
            assert problems["unknown"] == problems["malformed"]
            assert "another rule (bulk-export)" in problems["wrong rule"]
            assert "not been approved yet" in problems["pending"]
            assert "expired before it was approved" in problems["request lapsed"]
            distinct = set(problems.values())
            assert len(distinct) == len(problems) - 2
            assert (await store.get(granted.id)) == granted  # refusals change nothing

    run(scenario())


def test_get_of_an_unknown_or_malformed_id(stores: StoreFactory) -> None:
    async def scenario() -> None:
        async with stores() as store:
            assert await store.get("A" * 32) is None
            assert await store.get("no such id!") is None

    run(scenario())


def test_concurrent_use_across_replicas_succeeds_once(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        async with redis_client(redis_server.url) as a, redis_client(redis_server.url) as b:
            replica_a = RedisApprovalStore(a, SETTINGS)
            replica_b = RedisApprovalStore(b, SETTINGS)
            for round_number in range(5):
                granted = await approved(replica_a)
                attempts = [
                    (replica_a if n % 2 else replica_b).use(
                        granted.id, REQUESTER, "bulk-export", f"req-{round_number}-{n}"
                    )
                    for n in range(40)
                ]
                outcomes = await asyncio.gather(*attempts, return_exceptions=True)
                successes = [outcome for outcome in outcomes if isinstance(outcome, Approval)]
                refusals = [outcome for outcome in outcomes if isinstance(outcome, ApprovalRequiredError)]
                assert len(successes) == 1
                assert len(refusals) == 39
                assert all("already been used" in refusal.message for refusal in refusals)
                stored = await replica_b.get(granted.id)
                assert stored is not None
                assert stored.used_by_request == successes[0].used_by_request

    run(scenario())


def test_redis_records_expire_after_retention(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        async with redis_client(redis_server.url) as client:
            store = RedisApprovalStore(client, SETTINGS, retain_seconds=3600)
            request = await store.create("bulk-export", "why", REQUESTER, minutes_to_wait=10)
            ttl = await client.pttl(KEY_PREFIX + request.id)
            assert 10 * 60_000 + 3_590_000 < ttl <= 10 * 60_000 + 3_600_000
            granted = await store.approve(request.id, APPROVER, True, minutes=120)
            assert await client.pttl(KEY_PREFIX + granted.id) > 120 * 60_000 + 3_590_000

    run(scenario())


def test_redis_damage_and_outage_fail_closed(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        async with redis_client(redis_server.url) as client:
            store = RedisApprovalStore(client, SETTINGS)
            granted = await approved(store)
            await client.set(KEY_PREFIX + granted.id, b'{"id": "forged", "status": "approved"}')
            with pytest.raises(RightsLookupError):
                await store.use(granted.id, REQUESTER, "bulk-export", "req-1")
            redis_server.stop()
            for attempt in (
                store.create("bulk-export", "why", REQUESTER),
                store.get(granted.id),
                store.approve(granted.id, APPROVER, True),
                store.use(granted.id, REQUESTER, "bulk-export", "req-1"),
            ):
                with pytest.raises(RightsLookupError):
                    await attempt

    run(scenario())

"""Rate limits in one process: token-bucket arithmetic with an injected clock, quota windows, rule matching,
key derivation, the 429 a refusal becomes, backend failures, and the settings."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.audit.context import current_record
from proxy.audit.record import AuditRecord
from proxy.auth.principal import Principal
from proxy.errors import TooManyRequestsError, outcome_body
from proxy.fhir.request import FhirRequest, classify
from proxy.limits import (
    Limit,
    LimiterUnavailableError,
    MemoryBackend,
    RateLimiter,
    Verdict,
    build_limiter,
    client_address,
    limits_for,
)
from proxy.limits.bucket import (
    BucketState,
    WindowState,
    bucket_tokens,
    bucket_wait,
    retry_after_seconds,
    window_count,
    window_end,
    window_index,
)
from proxy.limits.rules import KEY_PREFIX, identity_of, interaction_name, matches
from proxy.settings import ConfigError, RateLimitQuota, RateLimitRule, RateLimitSettings, load_settings
from tests.clock import Clock

ISSUER = "https://idp.example.org"
UPSTREAM = [{"name": "default", "url": "http://127.0.0.1:8090/fhir"}]
DEV_AUTH = {"dev_issuer": {"enabled": True}}


def principal(
    subject: str | None = "user-1",
    *,
    client_id: str | None = "app",
    fhir_user: str | None = None,
    issuer: str = ISSUER,
) -> Principal:
    return Principal(
        issuer=issuer,
        subject=subject,
        client_id=client_id,
        scope_text="user/*.rs",
        expires_at=time.time() + 3600,
        fhir_user=fhir_user,
    )


def rule(
    name: str = "r", per: str = "client", rate: float = 5.0, burst: int = 5, **extra: Any
) -> RateLimitRule:
    return RateLimitRule.model_validate({"name": name, "per": per, "rate": rate, "burst": burst, **extra})


def limit(rate: float = 5.0, burst: int = 5, cost: int = 1, quota: RateLimitQuota | None = None) -> Limit:
    return Limit("r", f"{KEY_PREFIX}r:abc", rate, burst, cost, quota)


def read(path: str = "/Patient/p1", method: str = "GET", query: str = "") -> FhirRequest:
    return classify(method, path, query)


def take(backend: MemoryBackend, *limits: Limit) -> Verdict:
    return asyncio.run(backend.take(limits))


def admitted(backend: MemoryBackend, count: int, *limits: Limit) -> int:
    return sum(take(backend, *limits).allowed for _ in range(count))


# -- arithmetic ---------------------------------------------------------------------------------------------


def test_a_bucket_starts_full_refills_at_the_rate_and_never_beyond_burst() -> None:
    assert bucket_tokens(None, 100.0, rate=2.0, burst=5) == 5.0
    empty = BucketState(tokens=0.0, updated=100.0)
    assert bucket_tokens(empty, 100.0, 2.0, 5) == 0.0
    assert bucket_tokens(empty, 101.25, 2.0, 5) == pytest.approx(2.5)
    assert bucket_tokens(empty, 200.0, 2.0, 5) == 5.0
    assert bucket_tokens(BucketState(1.0, 100.0), 99.0, 2.0, 5) == 1.0  # a clock going back adds nothing


def test_the_wait_is_what_the_missing_tokens_take_and_retry_after_rounds_it_up() -> None:
    assert bucket_wait(3.0, 1, rate=5.0) == 0.0
    assert bucket_wait(0.0, 1, rate=5.0) == pytest.approx(0.2)
    assert bucket_wait(0.5, 3, rate=0.5) == pytest.approx(5.0)
    assert retry_after_seconds(0.2) == 1
    assert retry_after_seconds(5.0) == 5
    assert retry_after_seconds(5.0000000001) == 5  # float noise does not add a second
    assert retry_after_seconds(5.01) == 6
    assert retry_after_seconds(0.0) == 1


def test_quota_windows_are_aligned_to_the_epoch() -> None:
    now = 86_400 * 19_000 + 3_600.5  # 01:00:00.5 UTC
    assert window_index(now, 86_400) == 19_000
    assert window_end(19_000, 86_400) == 86_400 * 19_001
    assert window_index(now, 3_600) == 19_000 * 24 + 1
    assert window_count(WindowState(19_000, 7), 19_000) == 7
    assert window_count(WindowState(18_999, 7), 19_000) == 0
    assert window_count(None, 19_000) == 0


# -- the memory backend with an injected clock --------------------------------------------------------------


def test_burst_then_refusal_with_the_wait_then_refill() -> None:
    clock = Clock()
    backend = MemoryBackend(clock)
    assert admitted(backend, 5, limit()) == 5
    refused = take(backend, limit())
    assert not refused.allowed
    assert refused.wait == pytest.approx(0.2)
    assert refused.remaining == 0
    assert not refused.by_quota
    clock.advance(0.2)
    assert take(backend, limit()).allowed
    assert not take(backend, limit()).allowed
    clock.advance(1.0)  # five tokens back, but never more than burst
    assert admitted(backend, 10, limit()) == 5


def test_the_sustained_rate_over_a_minute_is_rate_times_time_plus_burst() -> None:
    clock = Clock()
    backend = MemoryBackend(clock)
    served = 0
    for _ in range(6000):  # a request every 10 ms for 60 s, at rate 5: 1 in 20 after the burst
        served += take(backend, limit()).allowed
        clock.advance(0.01)
    assert served == 5 + 5 * 60 - 1  # the last token is due exactly at 60 s


def test_a_cost_takes_several_tokens_and_waits_for_all_of_them() -> None:
    clock = Clock()
    backend = MemoryBackend(clock)
    search = limit(rate=2.0, burst=5, cost=3)
    assert take(backend, search).allowed
    refused = take(backend, search)
    assert not refused.allowed
    assert refused.remaining == 2
    assert refused.wait == pytest.approx(0.5)  # one token missing at 2 per second
    assert retry_after_seconds(refused.wait) == 1
    clock.advance(0.5)
    assert take(backend, search).allowed


def test_a_request_is_charged_to_every_limit_or_to_none() -> None:
    clock = Clock()
    backend = MemoryBackend(clock)
    wide = Limit("wide", f"{KEY_PREFIX}wide:1", 1.0, 10, 1)
    narrow = Limit("narrow", f"{KEY_PREFIX}narrow:1", 0.5, 2, 1)
    assert admitted(backend, 2, wide, narrow) == 2
    refused = take(backend, wide, narrow)
    assert not refused.allowed
    assert refused.limit == narrow
    assert refused.wait == pytest.approx(2.0)
    assert admitted(backend, 8, wide) == 8  # the refused request took nothing from the wide bucket
    assert not take(backend, wide).allowed


def test_the_limit_with_the_longest_wait_is_reported() -> None:
    backend = MemoryBackend(Clock())
    slow = Limit("slow", f"{KEY_PREFIX}slow:1", 0.1, 1, 1)
    fast = Limit("fast", f"{KEY_PREFIX}fast:1", 10.0, 1, 1)
    assert take(backend, fast, slow).allowed
    refused = take(backend, fast, slow)
    assert refused.limit == slow
    assert refused.wait == pytest.approx(10.0)


def test_a_quota_counts_requests_per_window_and_resets_with_the_next_one() -> None:
    clock = Clock(86_400 * 19_000 + 86_000.0)  # 400 s before midnight UTC
    backend = MemoryBackend(clock)
    daily = limit(rate=100.0, burst=100, cost=5, quota=RateLimitQuota(requests=3, per_seconds=86_400))
    assert admitted(backend, 3, daily) == 3
    refused = take(backend, daily)
    assert not refused.allowed
    assert refused.by_quota
    assert refused.remaining == 0
    assert refused.wait == pytest.approx(400.0)
    clock.advance(400.0)
    assert admitted(backend, 4, daily) == 3


def test_a_full_bucket_refuses_for_the_quota_and_a_quota_with_room_for_the_bucket() -> None:
    backend = MemoryBackend(Clock())
    hourly = limit(rate=1.0, burst=2, quota=RateLimitQuota(requests=100, per_seconds=3600))
    assert admitted(backend, 3, hourly) == 2
    refused = take(backend, hourly)
    assert not refused.by_quota
    assert refused.wait == pytest.approx(1.0)


def test_idle_buckets_and_past_windows_are_forgotten() -> None:
    clock = Clock()
    backend = MemoryBackend(clock, purge_at=4)
    hourly = RateLimitQuota(requests=10, per_seconds=3600)
    for index in range(3):
        take(backend, Limit("r", f"{KEY_PREFIX}r:{index}", 1.0, 2, 1, hourly))
    assert len(backend) == 6
    clock.advance(3600.0)  # the buckets are full again and the window is over
    take(backend, Limit("r", f"{KEY_PREFIX}r:new-1", 1.0, 2, 1))
    take(backend, Limit("r", f"{KEY_PREFIX}r:new-2", 1.0, 2, 1))  # the table doubled since the last purge
    assert len(backend) == 2


# -- rules and keys -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "query", "name"),
    [
        ("GET", "/Patient/p1", "", "read"),
        ("GET", "/Patient/p1/_history/2", "", "vread"),
        ("GET", "/Observation", "code=x", "search"),
        ("POST", "/Observation/_search", "", "search"),
        ("GET", "/Patient/p1/Observation", "", "search"),
        ("GET", "/_page", "token=t&rel=next", "search"),
        ("GET", "/Patient/p1/_history", "", "history"),
        ("GET", "/_history", "", "history"),
        ("POST", "/Observation", "", "create"),
        ("PUT", "/Observation/o1", "", "update"),
        ("PATCH", "/Observation/o1", "", "patch"),
        ("DELETE", "/Observation/o1", "", "delete"),
        ("POST", "/", "", "batch"),
        ("GET", "/Patient/p1/$everything", "", "operation"),
        ("GET", "/metadata", "", None),
    ],
)
def test_interaction_names(method: str, path: str, query: str, name: str | None) -> None:
    assert interaction_name(classify(method, path, query)) == name


def test_rule_conditions() -> None:
    searches = rule(interaction=["search"], resource_type=["Observation"], client_id=["app"])
    assert matches(searches, read("/Observation", query="code=x"), principal())
    assert not matches(searches, read("/Observation/o1"), principal())
    assert not matches(searches, read("/Patient", query="name=x"), principal())
    assert not matches(searches, read("/Observation", query="code=x"), principal(client_id="other"))
    assert not matches(searches, read("/Observation", query="code=x"), None)
    # a type the URL does not name could be any type: pages and system searches match
    assert matches(searches, read("/_page", query="token=t"), principal())
    assert matches(searches, read("/", query="_type=Observation"), principal())
    assert matches(rule(), read("/Patient/p1"), None)


def test_every_matching_rule_is_charged_in_order_and_capabilities_never() -> None:
    rules = [
        rule("everything", burst=100),
        rule("searches", interaction=["search"], cost=5, burst=10),
        rule("writes", interaction=["create"]),
        rule("daily", per="user", quota={"requests": 1000, "per_seconds": 86_400}),
    ]
    found = limits_for(rules, read("/Observation", query="code=x"), principal(), "10.0.0.1")
    assert [(item.rule, item.cost, item.burst) for item in found] == [
        ("everything", 1, 100),
        ("searches", 5, 10),
        ("daily", 1, 5),
    ]
    assert found[2].quota == RateLimitQuota(requests=1000, per_seconds=86_400)
    assert limits_for(rules, read("/metadata"), principal(), "10.0.0.1") == []


def test_keys_are_digests_per_rule_and_identity_and_name_nobody() -> None:
    rules = [
        rule("by-client"),
        rule("by-user", per="user"),
        rule("both", per="client+user"),
        rule("ip", per="address"),
    ]
    caller = principal("user-1", client_id="app-1", fhir_user="Practitioner/pr-1")
    keys = [item.key for item in limits_for(rules, read(), caller, "192.0.2.7")]
    assert len(set(keys)) == 4
    for key in keys:
        prefix, rule_name, digest = key.rsplit(":", 2)
        assert prefix == "fhirwall:rl"
        assert rule_name in {"by-client", "by-user", "both", "ip"}
        assert len(digest) == 32
        assert all(secret not in key for secret in ("user-1", "app-1", "pr-1", "192.0.2.7", "idp"))

    def key_of(rule_index: int, who: Principal | None, address: str = "192.0.2.7") -> str:
        return limits_for(rules[rule_index : rule_index + 1], read(), who, address)[0].key

    assert key_of(0, principal("someone-else", client_id="app-1")) == key_of(0, caller)
    assert key_of(0, principal(client_id="app-2")) != key_of(0, caller)
    assert key_of(0, principal(client_id="app-1", issuer="https://other.example.org")) != key_of(0, caller)
    assert key_of(1, principal("other-sub", client_id="app-9", fhir_user="Practitioner/pr-1")) == key_of(
        1, caller
    )
    assert key_of(2, principal("x", client_id="app-9", fhir_user="Practitioner/pr-1")) != key_of(2, caller)
    assert key_of(3, None) == key_of(3, caller)
    assert key_of(3, caller, "192.0.2.8") != key_of(3, caller)


def test_identities() -> None:
    assert identity_of(rule(per="user"), principal("sub-1"), "a") == f"{ISSUER}\x1fsub-1"
    assert (
        identity_of(rule(per="user"), principal("sub-1", fhir_user="Patient/x"), "a")
        == f"{ISSUER}\x1fPatient/x"
    )
    assert identity_of(rule(per="client+user"), principal("s", client_id="c"), "a") == f"{ISSUER}\x1fc\x1fs"
    assert (
        identity_of(rule(per="client"), principal(client_id=None), "a") == f"{ISSUER}\x1f"
    )  # shared, not free
    assert identity_of(rule(per="client"), None, "a") is None
    assert identity_of(rule(per="address"), None, "a") == "a"


def test_the_client_address_is_forwarded_only_by_trusted_proxies() -> None:
    scope: dict[str, Any] = {"client": ("10.1.2.3", 5555), "scheme": "http"}
    headers = {"host": "fhir.example.org", "x-forwarded-for": "203.0.113.9"}
    assert client_address(scope, headers, [ip_network("10.0.0.0/8")]) == "203.0.113.9"
    assert client_address(scope, headers, []) == "10.1.2.3"
    assert client_address({"scheme": "http"}, {"host": "h"}, []) == ""


# -- the limiter: refusals, audit, backend failures ---------------------------------------------------------


def limiter(*rules: RateLimitRule, on_failure: str = "refuse", clock: Clock | None = None) -> RateLimiter:
    settings = RateLimitSettings.model_validate(
        {"enabled": True, "rules": [item.model_dump() for item in rules], "on_backend_failure": on_failure}
    )
    return RateLimiter(settings, MemoryBackend(clock or Clock()))


def admit(
    target: RateLimiter, request: FhirRequest, who: Principal | None, address: str = "192.0.2.1"
) -> None:
    asyncio.run(target.admit(request, who, address))


def test_a_refusal_is_a_429_with_retry_after_and_an_operation_outcome() -> None:
    target = limiter(rule("five-a-second", rate=0.4, burst=2))
    for _ in range(2):
        admit(target, read(), principal())
    with pytest.raises(TooManyRequestsError) as refused:
        admit(target, read(), principal())
    error = refused.value
    assert error.status_code == 429
    assert error.headers == {
        "Retry-After": "3",
        "RateLimit-Limit": "2",
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": "3",
    }
    outcome = orjson.loads(outcome_body(error))
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "throttled"
    assert "five-a-second" in outcome["issue"][0]["diagnostics"]
    admit(target, read(), principal(client_id="another-app"))  # other clients have their own buckets


def test_a_spent_quota_says_so_and_waits_for_the_next_window() -> None:
    clock = Clock(3600.0 * 1000 + 3000.0)  # 600 s before the hour
    target = limiter(rule("hourly", burst=50, quota={"requests": 2, "per_seconds": 3600}), clock=clock)
    admit(target, read(), principal())
    admit(target, read(), principal())
    with pytest.raises(TooManyRequestsError) as refused:
        admit(target, read(), principal())
    assert refused.value.headers["Retry-After"] == "600"
    assert refused.value.headers["RateLimit-Limit"] == "2"
    assert "quota 'hourly'" in refused.value.message


def test_a_refusal_names_the_rule_in_the_audit_record() -> None:
    target = limiter(rule("tiny", rate=0.1, burst=1))
    record = AuditRecord(request_id="r1", method="GET", route="/Patient/{id}", interaction="read")
    token = current_record.set(record)
    try:
        admit(target, read(), principal())
        with pytest.raises(TooManyRequestsError):
            admit(target, read(), principal())
    finally:
        current_record.reset(token)
    assert record.reasons == ["rate-limit:tiny"]


def test_requests_no_rule_matches_are_not_limited() -> None:
    target = limiter(rule("writes", rate=0.1, burst=1, interaction=["create"]))
    for _ in range(20):
        admit(target, read(), principal())


class BrokenBackend:
    """A backend whose shared state is unreachable."""

    def __init__(self) -> None:
        self.calls = 0

    async def take(self, limits: Sequence[Limit]) -> Verdict:
        self.calls += 1
        raise LimiterUnavailableError()


def test_an_unreachable_backend_refuses_by_default() -> None:
    backend = BrokenBackend()
    target = RateLimiter(RateLimitSettings(enabled=True, rules=[rule()]), backend)
    with pytest.raises(LimiterUnavailableError) as refused:
        admit(target, read(), principal())
    assert refused.value.status_code == 503
    assert orjson.loads(outcome_body(refused.value))["issue"][0]["code"] == "transient"
    admit(target, read("/metadata"), principal())  # nothing to charge: the backend is not asked
    assert backend.calls == 1


def test_an_unreachable_backend_may_be_allowed_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    settings = RateLimitSettings(enabled=True, rules=[rule()], on_backend_failure="allow")
    target = RateLimiter(settings, BrokenBackend())
    with caplog.at_level(logging.WARNING, logger="fhirwall.ratelimit"):
        for _ in range(3):
            admit(target, read(), principal())
    assert [record.getMessage() for record in caplog.records] == [
        "rate limits cannot be checked (Redis unreachable): serving requests unlimited"
    ]


def test_without_redis_the_buckets_are_per_process(caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings(
        None,
        environ={},
        overrides={
            "upstreams": UPSTREAM,
            "auth": DEV_AUTH,
            "server.workers": 2,
            "rate_limits": {"enabled": True, "rules": [rule().model_dump()]},
        },
    )
    with caplog.at_level(logging.WARNING, logger="fhirwall.ratelimit"):
        built = build_limiter(settings, None)
    assert isinstance(built.backend, MemoryBackend)
    assert "each of the 2 workers has its own buckets" in caplog.text


# -- settings -----------------------------------------------------------------------------------------------


def configured(rate_limits: dict[str, Any], auth: dict[str, Any] | None = DEV_AUTH, **more: Any) -> Any:
    overrides: dict[str, Any] = {"upstreams": UPSTREAM, "rate_limits": rate_limits, **more}
    if auth is not None:
        overrides["auth"] = auth
    return load_settings(None, environ={}, overrides=overrides)


def problems(rate_limits: dict[str, Any], auth: dict[str, Any] | None = DEV_AUTH) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as error:
        configured(rate_limits, auth)
    return error.value.problems


def test_rate_limits_are_off_by_default() -> None:
    settings = configured({}, auth=None)
    assert not settings.rate_limits.enabled
    assert settings.rate_limits.rules == []
    assert settings.rate_limits.on_backend_failure == "refuse"


def test_a_full_rule_loads() -> None:
    settings = configured(
        {
            "enabled": True,
            "rules": [
                {
                    "name": "searches",
                    "per": "client+user",
                    "rate": 0.5,
                    "burst": 10,
                    "cost": 5,
                    "client_id": ["portal"],
                    "interaction": ["search", "history"],
                    "resource_type": ["Observation"],
                    "quota": {"requests": 5000, "per_seconds": 86_400},
                }
            ],
            "on_backend_failure": "allow",
        }
    )
    loaded = settings.rate_limits.rules[0]
    assert (loaded.per, loaded.rate, loaded.cost, loaded.quota) == (
        "client+user",
        0.5,
        5,
        RateLimitQuota(requests=5000, per_seconds=86_400),
    )


@pytest.mark.parametrize(
    ("rule_data", "path", "message"),
    [
        ({"rate": 0}, "rate_limits.rules.0.rate", "greater than 0"),
        ({"burst": 0}, "rate_limits.rules.0.burst", "greater than or equal to 1"),
        ({"cost": 6}, "rate_limits.rules.0", "cost must not exceed burst"),
        ({"per": "tenant"}, "rate_limits.rules.0.per", "'client', 'user', 'client+user' or 'address'"),
        ({"name": "Bad Name"}, "rate_limits.rules.0.name", "pattern"),
        ({"interaction": ["scrape"]}, "rate_limits.rules.0.interaction.0", "'read'"),
        ({"resource_type": ["Patients"]}, "rate_limits.rules.0.resource_type", "unknown R4 resource types"),
        ({"quota": {"requests": 0, "per_seconds": 60}}, "rate_limits.rules.0.quota.requests", "greater"),
        ({"quota": {"requests": 5}}, "rate_limits.rules.0.quota.per_seconds", "Field required"),
        ({"bogus": 1}, "rate_limits.rules.0.bogus", "Extra inputs"),
    ],
)
def test_bad_rules_are_reported_with_their_key_path(
    rule_data: dict[str, Any], path: str, message: str
) -> None:
    base = {"name": "r", "per": "client", "rate": 5, "burst": 5}
    found = problems({"enabled": True, "rules": [{**base, **rule_data}]})
    assert any(where == path and message in text for where, text in found), found


def test_whole_section_problems() -> None:
    base = {"per": "client", "rate": 5, "burst": 5}
    twice = problems({"enabled": True, "rules": [{"name": "a", **base}, {"name": "a", **base}]})
    assert twice == [("rate_limits", "rule names must be unique: a")]
    assert problems({"enabled": True}) == [("rate_limits", "rate_limits.enabled needs at least one rule")]
    assert problems({"on_backend_failure": "maybe"})[0][0] == "rate_limits.on_backend_failure"


def test_identity_rules_need_authentication() -> None:
    rule_data = {"name": "r", "per": "user", "rate": 5, "burst": 5}
    [(_, message)] = problems({"enabled": True, "rules": [rule_data]}, auth=None)
    assert message.startswith("rate_limits.rules.0: per: user needs authentication")
    by_client = {**rule_data, "per": "address", "client_id": ["x"]}
    [(_, message)] = problems({"enabled": True, "rules": [by_client]}, auth=None)
    assert "a client_id condition needs authentication" in message
    by_address = {**rule_data, "per": "address"}
    assert configured({"enabled": True, "rules": [by_address]}, auth=None).rate_limits.enabled


def test_rate_limits_from_the_environment() -> None:
    settings = load_settings(
        None,
        environ={
            "FHIRWALL_RATE_LIMITS__ENABLED": "true",
            "FHIRWALL_RATE_LIMITS__RULES": '[{"name": "ip", "per": "address", "rate": 2, "burst": 4}]',
        },
        overrides={"upstreams": UPSTREAM},
    )
    assert settings.rate_limits.enabled
    assert settings.rate_limits.rules[0].burst == 4


def test_the_full_example_configures_rate_limits() -> None:
    import yaml

    document = yaml.safe_load((Path(__file__).parents[2] / "examples/config/full.yaml").read_text())
    section = RateLimitSettings.model_validate(document["rate_limits"])
    assert section.enabled
    assert {rule.per for rule in section.rules} == {"client", "client+user"}

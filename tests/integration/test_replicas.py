"""Several replicas behind one load balancer, sharing one real Redis: a paging link issued by one replica is
followed on another, and an opaque token is introspected once for the whole deployment."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from proxy.auth.dev_issuer import DevIssuer, load_or_create_key
from tests.auth_server import CLIENT_ID, CLIENT_SECRET, AuthorizationServer
from tests.conftest import RedisServer, RunningProxy, SeededUpstream, free_port, make_settings

PUBLIC_BASE = "https://fhir.hospital.test/fhir"  # what clients see: the load balancer


def replicas(
    upstream: SeededUpstream, run_proxy: Callable[..., RunningProxy], count: int, **overrides: Any
) -> list[RunningProxy]:
    return [
        run_proxy(make_settings(upstream.base_url, **{"server.public_base_url": PUBLIC_BASE, **overrides}))
        for _ in range(count)
    ]


def on(replica: RunningProxy, public_url: str) -> str:
    """``public_url`` as the load balancer would send it to ``replica``."""
    parts = urlsplit(public_url)
    return replica.root + parts.path + (f"?{parts.query}" if parts.query else "")


def first_page(
    upstream: SeededUpstream, deployment: list[RunningProxy], issuer: DevIssuer
) -> tuple[dict[str, str], set[str], str]:
    """A patient app's first page of Observations from the first replica: headers, ids, the next link."""
    patient = list(upstream.by_patient)[-1]
    claims = {"sub": "u", "client_id": "app", "scope": "patient/*.rs", "patient": patient}
    headers = {"authorization": f"Bearer {issuer.mint(claims, audience=PUBLIC_BASE)}"}
    page = httpx.get(
        on(deployment[0], f"{PUBLIC_BASE}/Observation?_count=2"), headers=headers, timeout=30
    ).json()
    next_link = next(link["url"] for link in page["link"] if link["relation"] == "next")
    assert next_link.startswith(f"{PUBLIC_BASE}/_page?token=")
    return headers, {entry["resource"]["id"] for entry in page["entry"]}, next_link


def secured_replicas(
    upstream: SeededUpstream, run_proxy: Callable[..., RunningProxy], folder: Path, **overrides: Any
) -> tuple[list[RunningProxy], DevIssuer]:
    key_file = folder / "issuer.pem"
    issuer_url = "https://fhir.hospital.test/_dev"
    dev = {"enabled": True, "key_file": str(key_file), "issuer": issuer_url}
    deployment = replicas(upstream, run_proxy, 2, **{"auth.dev_issuer": dev, **overrides})
    return deployment, DevIssuer(load_or_create_key(key_file), issuer_url)


def test_paging_links_work_on_every_replica(
    upstream: SeededUpstream,
    run_proxy: Callable[..., RunningProxy],
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    deployment, issuer = secured_replicas(upstream, run_proxy, tmp_path, **{"redis.url": redis_server.url})
    headers, seen, next_link = first_page(upstream, deployment, issuer)
    following = httpx.get(on(deployment[1], next_link), headers=headers, timeout=30)
    assert following.status_code == 200, following.text
    more = {entry["resource"]["id"] for entry in following.json()["entry"]}
    assert more
    assert not more & seen
    other = issuer.mint({"sub": "v", "client_id": "app", "scope": "patient/*.rs"}, audience=PUBLIC_BASE)
    stolen = httpx.get(on(deployment[1], next_link), headers={"authorization": f"Bearer {other}"}, timeout=30)
    assert stolen.status_code == 403  # still sealed to the principal it was issued to


def test_without_shared_state_a_link_only_works_where_it_was_issued(
    upstream: SeededUpstream, run_proxy: Callable[..., RunningProxy], tmp_path: Path
) -> None:
    deployment, issuer = secured_replicas(upstream, run_proxy, tmp_path)
    headers, _, next_link = first_page(upstream, deployment, issuer)
    assert httpx.get(on(deployment[0], next_link), headers=headers, timeout=30).status_code == 200
    elsewhere = httpx.get(on(deployment[1], next_link), headers=headers, timeout=30)
    assert elsewhere.status_code == 400  # another key: not a valid link there


def test_an_opaque_token_is_introspected_once_per_deployment(
    upstream: SeededUpstream,
    run_proxy: Callable[..., RunningProxy],
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = AuthorizationServer(free_port()).start()
    try:
        monkeypatch.setenv("FHIRWALL_TEST_INTROSPECTION_SECRET", CLIENT_SECRET)
        introspection = {
            "endpoint": f"{server.issuer}/introspect",
            "client_id": CLIENT_ID,
            "client_secret_env": "FHIRWALL_TEST_INTROSPECTION_SECRET",
            "cache_seconds": 60,
        }
        overrides = {"redis.url": redis_server.url, "auth.introspection": introspection}
        deployment = replicas(upstream, run_proxy, 3, **overrides)
        token = "opaque-" + uuid.uuid4().hex
        server.register(token, scope="system/*.rs", client_id="c1", sub="u1")
        for replica in deployment * 2:
            answer = httpx.get(
                on(replica, f"{PUBLIC_BASE}/Patient?_count=1"), headers={"authorization": f"Bearer {token}"}
            )
            assert answer.status_code == 200
        assert server.calls["introspect"] == 1
        unknown = "opaque-" + uuid.uuid4().hex
        for replica in deployment:
            answer = httpx.get(
                on(replica, f"{PUBLIC_BASE}/Patient"), headers={"authorization": f"Bearer {unknown}"}
            )
            assert answer.status_code == 401
    finally:
        server.stop()

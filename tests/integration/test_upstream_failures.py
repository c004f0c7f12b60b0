"""Upstream failures map to 503 / 504 / 502 OperationOutcomes; nothing unchecked reaches the client."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.conftest import RedisServer, RunningProxy, SeededUpstream, free_port, make_settings
from tests.misbehaving import MisbehavingServer


def outcome(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    assert response.json()["issue"][0]["code"] == code


def test_refused_connection_is_503(run_proxy: Callable[..., RunningProxy]) -> None:
    proxy = run_proxy(make_settings(f"http://127.0.0.1:{free_port()}/fhir"))
    with proxy.client() as client:
        outcome(client.get("/Patient/1"), 503, "transient")


def test_silent_upstream_is_504(run_proxy: Callable[..., RunningProxy]) -> None:
    with MisbehavingServer(reply=None) as silent:
        proxy = run_proxy(
            make_settings(silent.url, upstreams=[{"name": "default", "url": silent.url, "read_timeout": 0.5}])
        )
        with proxy.client() as client:
            outcome(client.get("/Patient/1"), 504, "timeout")


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 13\r\n\r\n<html></html>",
        b'HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: 9\r\n\r\n{"broken',
        b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: 7\r\n\r\n[1,2,3]",
        b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: 100\r\n\r\n"
        b'{"resourceType"',
        b"HTTP/1.1 500 Oops\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nerror",
        b"this is not HTTP at all\r\n\r\n",
    ],
    ids=["html", "malformed-json", "not-a-resource", "truncated", "plain-500", "not-http"],
)
def test_invalid_upstream_response_is_502(reply: bytes, run_proxy: Callable[..., RunningProxy]) -> None:
    with MisbehavingServer(reply=reply) as broken:
        proxy = run_proxy(make_settings(broken.url))
        with proxy.client() as client:
            response = client.get("/Patient/1")
            outcome(response, 502, "exception")
            assert b"<html>" not in response.content


def test_oversized_upstream_response_is_502(
    upstream: SeededUpstream, run_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = run_proxy(make_settings(upstream.base_url, **{"limits.max_upstream_body_bytes": 4096}))
    with proxy.client() as client:
        outcome(client.get("/Observation", params={"_count": 50}), 502, "exception")


def test_healthz_and_readyz(proxy: RunningProxy) -> None:
    assert httpx.get(proxy.root + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(proxy.root + "/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"upstream:default": "ok"}


def test_readyz_reports_a_down_upstream(run_proxy: Callable[..., RunningProxy]) -> None:
    proxy = run_proxy(make_settings(f"http://127.0.0.1:{free_port()}/fhir"))
    assert httpx.get(proxy.root + "/healthz").status_code == 200
    ready = httpx.get(proxy.root + "/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["upstream:default"] == "unreachable"


def test_readyz_checks_redis(
    upstream: SeededUpstream, redis_server: RedisServer, run_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = run_proxy(make_settings(upstream.base_url, **{"redis.url": redis_server.url}))
    ready = httpx.get(proxy.root + "/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["redis"] == "ok"
    redis_server.stop()
    ready = httpx.get(proxy.root + "/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["redis"] == "unreachable"

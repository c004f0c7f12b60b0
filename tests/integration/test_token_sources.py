"""Token verification against a real authorization server: JWKS rotation, introspection, discovery."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.auth_server import CLIENT_ID, CLIENT_SECRET, AuthorizationServer
from tests.conftest import RunningProxy, SeededUpstream, free_port, make_settings


@pytest.fixture
def auth_server() -> Iterator[AuthorizationServer]:
    server = AuthorizationServer(free_port()).start()
    yield server
    server.stop()


def jwt_proxy(
    upstream: SeededUpstream,
    server: AuthorizationServer,
    run_proxy: Callable[..., RunningProxy],
    **extra: Any,
) -> RunningProxy:
    return run_proxy(
        make_settings(
            upstream.base_url,
            **{
                "auth.issuers": [{"issuer": server.issuer, "jwks_uri": f"{server.issuer}/jwks"}],
                "auth.jwks_min_refresh_seconds": 1,
                "auth.authorization_server.metadata_url": f"{server.issuer}/.well-known/openid-configuration",
                **extra,
            },
        )
    )


def introspecting_proxy(
    upstream: SeededUpstream,
    endpoint: str,
    run_proxy: Callable[..., RunningProxy],
    monkeypatch: pytest.MonkeyPatch,
    **options: Any,
) -> RunningProxy:
    """A proxy verifying opaque tokens at ``endpoint`` with the test client's credentials."""
    monkeypatch.setenv("FHIRWALL_TEST_INTROSPECTION_SECRET", CLIENT_SECRET)
    introspection = {
        "endpoint": endpoint,
        "client_id": CLIENT_ID,
        "client_secret_env": "FHIRWALL_TEST_INTROSPECTION_SECRET",
        **options,
    }
    return run_proxy(make_settings(upstream.base_url, **{"auth.introspection": introspection}))


def signed(server: AuthorizationServer, proxy: RunningProxy, key: RSAKey | None = None, **claims: Any) -> str:
    key = key or server.key
    now = int(time.time())
    payload = {
        "iss": server.issuer,
        "aud": proxy.base_url,
        "sub": "u1",
        "client_id": "c1",
        "iat": now,
        "exp": now + 300,
        "scope": "system/*.rs",
        **claims,
    }
    return jwt.encode({"alg": "RS256", "kid": key.kid}, payload, key)


def get(proxy: RunningProxy, token: str, path: str = "/Patient") -> httpx.Response:
    with proxy.client(headers={"authorization": f"Bearer {token}"}) as client:
        return client.get(path, params={"_count": "1"})


def test_jwks_is_fetched_once_and_refreshed_for_a_new_key(
    upstream: SeededUpstream, auth_server: AuthorizationServer, run_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = jwt_proxy(upstream, auth_server, run_proxy)
    for _ in range(3):
        assert get(proxy, signed(auth_server, proxy, jti=uuid.uuid4().hex)).status_code == 200
    assert auth_server.calls["jwks"] == 1
    rotated = RSAKey.generate_key(2048, parameters={"kid": "as-2"})
    auth_server.published = [auth_server.key, rotated]
    time.sleep(1.1)
    assert get(proxy, signed(auth_server, proxy, key=rotated)).status_code == 200
    assert auth_server.calls["jwks"] == 2


def test_unknown_kid_refreshes_at_most_once_per_interval(
    upstream: SeededUpstream, auth_server: AuthorizationServer, run_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = jwt_proxy(upstream, auth_server, run_proxy, **{"auth.jwks_min_refresh_seconds": 30})
    assert get(proxy, signed(auth_server, proxy)).status_code == 200
    stranger = RSAKey.generate_key(2048, parameters={"kid": "unknown"})
    for _ in range(5):
        response = get(proxy, signed(auth_server, proxy, key=stranger, jti=uuid.uuid4().hex))
        assert response.status_code == 401
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert (
        auth_server.calls["jwks"] == 1
    )  # the first refresh is within the 30 s interval of the initial fetch


def test_revoked_opaque_token_stops_working_within_the_cache_ttl(
    upstream: SeededUpstream,
    auth_server: AuthorizationServer,
    run_proxy: Callable[..., RunningProxy],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = introspecting_proxy(
        upstream,
        f"{auth_server.issuer}/introspect",
        run_proxy,
        monkeypatch,
        cache_seconds=1,
        negative_cache_seconds=0,
    )
    token = "opaque-" + uuid.uuid4().hex
    auth_server.register(token, scope="system/*.rs", client_id="c1", sub="u1")
    assert get(proxy, token).status_code == 200
    assert get(proxy, token).status_code == 200
    assert auth_server.calls["introspect"] == 1  # cached
    auth_server.revoke(token)
    time.sleep(1.2)
    response = get(proxy, token)
    assert response.status_code == 401
    assert auth_server.calls["introspect"] == 2
    assert get(proxy, "opaque-never-issued").status_code == 401


def test_introspection_with_patient_context(
    upstream: SeededUpstream,
    auth_server: AuthorizationServer,
    run_proxy: Callable[..., RunningProxy],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = introspecting_proxy(upstream, f"{auth_server.issuer}/introspect", run_proxy, monkeypatch)
    patient_a, patient_b = list(upstream.by_patient)[:2]
    token = "opaque-" + uuid.uuid4().hex
    auth_server.register(token, scope="patient/*.rs", patient=patient_a, client_id="app")
    assert get(proxy, token, f"/Patient/{patient_a}").status_code == 200
    assert get(proxy, token, f"/Patient/{patient_b}").status_code == 404


def test_unreachable_introspection_denies(
    upstream: SeededUpstream, run_proxy: Callable[..., RunningProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}/introspect"
    proxy = introspecting_proxy(upstream, endpoint, run_proxy, monkeypatch)
    response = get(proxy, "opaque-token")
    assert response.status_code == 503
    assert response.json()["resourceType"] == "OperationOutcome"


def test_smart_discovery_and_capability_security(
    upstream: SeededUpstream, auth_server: AuthorizationServer, run_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = jwt_proxy(upstream, auth_server, run_proxy)
    configuration = httpx.get(
        proxy.base_url + "/.well-known/smart-configuration", headers={"accept": "text/html"}
    )
    assert configuration.status_code == 200
    assert configuration.headers["content-type"].startswith("application/json")
    document = configuration.json()
    assert document["token_endpoint"] == f"{auth_server.issuer}/token"
    assert document["authorization_endpoint"] == f"{auth_server.issuer}/authorize"
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert "permission-v2" in document["capabilities"]
    assert "patient/*.rs" in document["scopes_supported"]
    assert all(document[key].startswith("http") for key in document if key.endswith("_endpoint"))
    statement = httpx.get(proxy.base_url + "/metadata").json()
    security = statement["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    uris = {item["url"]: item["valueUri"] for item in security["extension"][0]["extension"]}
    assert uris["token"] == f"{auth_server.issuer}/token"
    assert uris["authorize"] == f"{auth_server.issuer}/authorize"
    assert httpx.get(proxy.base_url + "/Patient").status_code == 401
    assert httpx.get(proxy.root + "/healthz").status_code == 200


def test_serve_flags_protect_an_upstream_for_one_issuer(
    upstream: SeededUpstream, auth_server: AuthorizationServer
) -> None:
    import signal
    import subprocess
    import sys

    port = free_port()
    audience = f"http://127.0.0.1:{port}/fhir"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "proxy.cli",
            "serve",
            "--upstream",
            upstream.base_url,
            "--port",
            str(port),
            "--issuer",
            auth_server.issuer,
            "--jwks-uri",
            f"{auth_server.issuer}/jwks",
            "--audience",
            audience,
            "--log-level",
            "warning",
        ]
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert httpx.get(f"{audience}/Patient").status_code == 401
        now = int(time.time())
        token = jwt.encode(
            {"alg": "RS256", "kid": "as-1"},
            {"iss": auth_server.issuer, "aud": audience, "exp": now + 60, "scope": "system/Patient.rs"},
            auth_server.key,
        )
        ok = httpx.get(
            f"{audience}/Patient", params={"_count": "1"}, headers={"authorization": f"Bearer {token}"}
        )
        assert ok.status_code == 200
        refused = httpx.get(f"{audience}/Observation", headers={"authorization": f"Bearer {token}"})
        assert refused.status_code == 403
        assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)

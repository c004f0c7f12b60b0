"""The proxy's own upstream credentials: static bearer, OAuth2 client credentials, mTLS — real servers."""

from __future__ import annotations

import os
import ssl
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from proxy.embedded_upstream import EmbeddedUpstream
from tests.conftest import RunningProxy, free_port, make_settings, upstream_traffic
from tests.tls_material import TlsFiles, make_tls_files

UPSTREAM_TOKEN = "upstream-static-token-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def bearer_upstream() -> Iterator[EmbeddedUpstream]:
    server = EmbeddedUpstream(free_port(), static_tokens=[UPSTREAM_TOKEN], log_inbound=True)
    server.start()
    yield server
    server.stop()


def test_static_bearer_from_environment(
    bearer_upstream: EmbeddedUpstream, run_proxy: Callable[..., RunningProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FHIRWALL_TEST_UPSTREAM_TOKEN", UPSTREAM_TOKEN)
    proxy = run_proxy(
        make_settings(
            bearer_upstream.base_url,
            **{
                "upstreams": [
                    {
                        "name": "default",
                        "url": bearer_upstream.base_url,
                        "auth": {"type": "bearer", "token_env": "FHIRWALL_TEST_UPSTREAM_TOKEN"},
                    }
                ]
            },
        )
    )
    with proxy.client() as client:
        assert client.get("/Patient").status_code == 200


def test_static_bearer_from_file(
    bearer_upstream: EmbeddedUpstream, run_proxy: Callable[..., RunningProxy], tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(UPSTREAM_TOKEN + "\n")
    proxy = run_proxy(
        make_settings(
            bearer_upstream.base_url,
            **{
                "upstreams": [
                    {
                        "name": "default",
                        "url": bearer_upstream.base_url,
                        "auth": {"type": "bearer", "token_file": str(token_file)},
                    }
                ]
            },
        )
    )
    with proxy.client() as client:
        assert client.get("/Patient").status_code == 200
        token_file.write_text("rotated-but-wrong")
        os.utime(token_file, (1, 1))  # make the change visible even within the same mtime tick
        assert client.get("/Patient").status_code == 502


def test_client_token_is_never_forwarded(
    bearer_upstream: EmbeddedUpstream, run_proxy: Callable[..., RunningProxy]
) -> None:
    """A client holding the upstream's own token gets nothing: the proxy does not pass it on."""
    proxy = run_proxy(make_settings(bearer_upstream.base_url))
    request_id = "tok-" + uuid.uuid4().hex
    with proxy.client() as client:
        response = client.get(
            "/Patient", headers={"Authorization": f"Bearer {UPSTREAM_TOKEN}", "X-Request-Id": request_id}
        )
    assert response.status_code == 502
    assert "credentials" in response.json()["issue"][0]["diagnostics"]
    [seen] = upstream_traffic(bearer_upstream, request_id)
    assert "authorization" not in seen["headers"]


SMART_UPSTREAM = {
    "server_auth": {
        "types": ["smart"],
        "token_lifetime": 300,
        "smart_clients": [{"client_id": "fhirwall", "client_secret": "cc-secret", "scopes": "system/*.*"}],
    }
}


@pytest.fixture(scope="module")
def smart_upstream() -> Iterator[EmbeddedUpstream]:
    """An upstream that only accepts tokens from its own client-credentials token endpoint."""
    with EmbeddedUpstream(free_port(), log_inbound=True, extra_settings=SMART_UPSTREAM) as server:
        yield server


def client_credentials_proxy(
    server: EmbeddedUpstream,
    secret: str,
    run_proxy: Callable[..., RunningProxy],
    monkeypatch: pytest.MonkeyPatch,
) -> RunningProxy:
    monkeypatch.setenv("FHIRWALL_TEST_CC_SECRET", secret)
    auth = {
        "type": "client_credentials",
        "token_url": server.base_url.removesuffix("/fhir") + "/auth/token",
        "client_id": "fhirwall",
        "client_secret_env": "FHIRWALL_TEST_CC_SECRET",
        "scope": "system/*.*",
    }
    upstreams = [{"name": "default", "url": server.base_url, "auth": auth}]
    return run_proxy(make_settings(server.base_url, upstreams=upstreams))


def token_calls(server: EmbeddedUpstream) -> int:
    import sqlite3

    with sqlite3.connect(server.database) as db:
        [(count,)] = db.execute("SELECT count(*) FROM traffic WHERE url LIKE '/auth/token%'").fetchall()
    return int(count)


def test_oauth2_client_credentials_token_is_fetched_once(
    smart_upstream: EmbeddedUpstream, run_proxy: Callable[..., RunningProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = token_calls(smart_upstream)
    proxy = client_credentials_proxy(smart_upstream, "cc-secret", run_proxy, monkeypatch)
    with proxy.client() as client:
        for _ in range(3):
            assert client.get("/Patient").status_code == 200
    assert token_calls(smart_upstream) == before + 1


def test_client_credentials_failure_is_503(
    smart_upstream: EmbeddedUpstream, run_proxy: Callable[..., RunningProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = client_credentials_proxy(smart_upstream, "wrong", run_proxy, monkeypatch)
    with proxy.client() as client:
        response = client.get("/Patient")
    assert response.status_code == 503
    assert "access token" in response.json()["issue"][0]["diagnostics"]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("pki"))


def test_mtls_client_certificate(tls_files: TlsFiles, run_proxy: Callable[..., RunningProxy]) -> None:
    tls_args = [
        "--ssl-certfile",
        str(tls_files.server_cert),
        "--ssl-keyfile",
        str(tls_files.server_key),
        "--ssl-ca-certs",
        str(tls_files.ca_cert),
        "--ssl-cert-reqs",
        "2",
    ]
    server = EmbeddedUpstream(free_port(), uvicorn_args=tls_args, scheme="https")
    context = ssl.create_default_context(cafile=str(tls_files.ca_cert))
    context.load_cert_chain(str(tls_files.client_cert), str(tls_files.client_key))
    server.start(verify=context)
    try:
        with_cert = {
            "ca_file": str(tls_files.ca_cert),
            "cert_file": str(tls_files.client_cert),
            "key_file": str(tls_files.client_key),
        }
        good = run_proxy(
            make_settings(
                server.base_url, upstreams=[{"name": "default", "url": server.base_url, "tls": with_cert}]
            )
        )
        without_cert = run_proxy(
            make_settings(
                server.base_url,
                upstreams=[
                    {"name": "default", "url": server.base_url, "tls": {"ca_file": str(tls_files.ca_cert)}}
                ],
            )
        )
        untrusted = run_proxy(make_settings(server.base_url))
        with good.client() as client:
            response = client.get("/Patient")
            assert response.status_code == 200
            assert all(
                entry["fullUrl"].startswith(good.base_url) for entry in response.json().get("entry", [])
            )
        with without_cert.client() as client:
            assert client.get("/Patient").status_code in (502, 503)
        with untrusted.client() as client:
            assert client.get("/Patient").status_code in (502, 503)
    finally:
        server.stop()

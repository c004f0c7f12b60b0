"""Shared fixtures: a real upstream FHIR server, real Redis, and the real proxy served over HTTP."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.auth.dev_issuer import DevIssuer, load_or_create_key
from proxy.embedded_upstream import CAREBUNDLE_DATA, EXAMPLE_DATA, EmbeddedUpstream, synthea_bundles
from proxy.serve import uvicorn_config
from proxy.settings import Settings, load_settings
from tests.threaded_server import ThreadedServer


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class SeededUpstream:
    """The shared upstream and the ids of what was loaded into it."""

    server: EmbeddedUpstream
    ids: dict[str, list[str]] = field(default_factory=dict)
    by_patient: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def first(self, resource_type: str) -> str:
        return self.ids[resource_type][0]


def _collect_ids(responses: list[dict[str, Any]]) -> dict[str, list[str]]:
    ids: dict[str, list[str]] = {}
    for bundle in responses:
        for entry in bundle.get("entry", []):
            resource = entry.get("resource") or {}
            if "resourceType" in resource:
                ids.setdefault(resource["resourceType"], []).append(resource["id"])
    return ids


@pytest.fixture(scope="session")
def upstream() -> Iterator[SeededUpstream]:
    """A sekmet FHIR server with the hospital, practitioners and two Synthea patients."""
    server = EmbeddedUpstream(free_port(), log_inbound=True)
    server.start()
    try:
        carebundle = sorted(CAREBUNDLE_DATA.glob("*.json.gz"))
        responses = server.seed([*synthea_bundles(EXAMPLE_DATA, patients=2), *carebundle])
        by_patient = {}
        for bundle in responses[2:]:
            ids = _collect_ids([bundle])
            by_patient[ids["Patient"][0]] = ids
        yield SeededUpstream(server, _collect_ids(responses), by_patient)
    finally:
        server.stop()


def make_settings(upstream_url: str, **overrides: Any) -> Settings:
    """Settings for a proxy on a free port in front of ``upstream_url``; ``overrides`` use dotted keys."""
    base: dict[str, Any] = {
        "server.port": free_port(),
        "server.log_level": "warning",
        "upstreams": [{"name": "default", "url": upstream_url}],
    }
    base.update(overrides)
    return load_settings(None, environ={}, overrides=base)


class RunningProxy(ThreadedServer):
    """The proxy app served by uvicorn in a background thread (real HTTP on 127.0.0.1)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        scheme = "https" if settings.server.tls is not None else "http"
        self.root = f"{scheme}://127.0.0.1:{settings.server.port}"
        self.base_url = self.root + settings.server.base_path
        super().__init__(uvicorn_config(settings))

    def start(self) -> RunningProxy:
        self.start_serving()
        return self

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=30.0, **kwargs)


@pytest.fixture
def run_proxy() -> Iterator[Callable[[Settings], RunningProxy]]:
    """Factory: start a proxy for given settings; all are stopped after the test."""
    started: list[RunningProxy] = []

    def start(settings: Settings) -> RunningProxy:
        proxy = RunningProxy(settings).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture(scope="session")
def proxy(upstream: SeededUpstream) -> Iterator[RunningProxy]:
    """One proxy with default settings in front of the shared upstream."""
    running = RunningProxy(make_settings(upstream.base_url)).start()
    yield running
    running.stop()


@pytest.fixture
def client(proxy: RunningProxy) -> Iterator[httpx.Client]:
    with proxy.client() as http:
        yield http


class RedisServer:
    """A real ``redis-server`` process on 127.0.0.1, without persistence."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.mkdtemp(prefix="fhirwall-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        command = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self._dir,
        ]
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None
        shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


REPO_ROOT = Path(__file__).resolve().parent.parent


def upstream_traffic(
    server: EmbeddedUpstream, request_id: str, expect_at_least: int = 1
) -> list[dict[str, Any]]:
    """What the upstream logged for requests carrying ``request_id`` (method, url, headers it received)."""
    import sqlite3

    import orjson

    rows: list[tuple[str, str, str]] = []
    for _ in range(40 if expect_at_least else 1):
        with sqlite3.connect(server.database) as db:
            rows = db.execute(
                "SELECT method, url, req_headers FROM traffic WHERE direction='inbound' AND "
                "correlation_id=? ORDER BY id",
                (request_id,),
            ).fetchall()
        if len(rows) >= expect_at_least:
            break
        time.sleep(0.05)
    return [
        {"method": m, "url": u, "headers": {k.lower(): v for k, v in orjson.loads(h or "{}").items()}}
        for m, u, h in rows
    ]


@dataclass
class SmartSetup:
    """A proxy that requires SMART tokens (dev issuer), and a way to mint them."""

    proxy: RunningProxy
    issuer: DevIssuer
    patient_a: str
    patient_b: str

    def token(self, scope: str, patient: str | None = None, **claims: Any) -> str:
        payload: dict[str, Any] = {"sub": "test-user", "client_id": "test-app", "scope": scope, **claims}
        if patient is not None:
            payload["patient"] = patient
        return self.issuer.mint(payload, audience=self.proxy.base_url)

    def client(self, token: str | None) -> httpx.Client:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return self.proxy.client(headers=headers)

    def patient_client(self, patient: str | None = None, scope: str = "patient/*.cruds") -> httpx.Client:
        return self.client(self.token(scope, patient or self.patient_a))


@pytest.fixture(scope="session")
def smart(upstream: SeededUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmartSetup]:
    """The shared upstream behind a proxy enforcing SMART scopes, with tokens from a dev issuer."""
    key_file = tmp_path_factory.mktemp("dev-issuer") / "key.pem"
    port = free_port()
    issuer_url = f"http://127.0.0.1:{port}/_dev"
    settings = make_settings(
        upstream.base_url,
        **{
            "server.port": port,
            "auth.dev_issuer.enabled": True,
            "auth.dev_issuer.key_file": str(key_file),
            "auth.dev_issuer.issuer": issuer_url,
        },
    )
    running = RunningProxy(settings).start()
    issuer = DevIssuer(load_or_create_key(key_file), issuer_url)
    patient_a, patient_b = list(upstream.by_patient)[-2:]  # the two with MedicationRequests
    yield SmartSetup(running, issuer, patient_a, patient_b)
    running.stop()

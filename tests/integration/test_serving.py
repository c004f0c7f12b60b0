"""``fhirwall serve`` as a real process: flags only, workers, TLS, streaming memory, graceful drain."""

from __future__ import annotations

import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.binary_store import BinaryStore
from tests.conftest import SeededUpstream, free_port
from tests.tls_material import TlsFiles, make_tls_files

MiB = 1024 * 1024
# uvicorn finishes its graceful shutdown, then re-raises the signal it caught
CLEAN_EXIT = (0, -signal.SIGTERM)


class ServedProxy:
    """``fhirwall serve`` in a subprocess."""

    def __init__(
        self, args: list[str], port: int, scheme: str = "http", verify: ssl.SSLContext | bool = True
    ) -> None:
        self.port = port
        self.root = f"{scheme}://127.0.0.1:{port}"
        self.base_url = self.root + "/fhir"
        self.verify = verify
        self.process = subprocess.Popen([sys.executable, "-m", "proxy.cli", "serve", *args])
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("fhirwall serve exited")
            try:
                if httpx.get(self.root + "/healthz", verify=self.verify, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("fhirwall serve did not start")

    def peak_rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


def write_config(tmp_path: Path, document: dict[str, object]) -> Path:
    path = tmp_path / "fhirwall.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def binary_store() -> Iterator[BinaryStore]:
    store = BinaryStore(free_port()).start()
    yield store
    store.stop()


def test_serve_without_a_file(upstream: SeededUpstream) -> None:
    port = free_port()
    served = ServedProxy(
        ["--upstream", upstream.base_url, "--port", str(port), "--log-level", "warning"], port
    )
    try:
        response = httpx.get(f"{served.base_url}/Patient/{upstream.first('Patient')}")
        assert response.status_code == 200
        assert "server" not in response.headers
    finally:
        assert served.stop() in CLEAN_EXIT


def test_serve_with_two_workers(upstream: SeededUpstream, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(
        tmp_path,
        {
            "server": {"port": port, "workers": 2, "log_level": "warning"},
            "upstreams": [{"name": "default", "url": upstream.base_url}],
        },
    )
    served = ServedProxy(["--config", str(config)], port)
    try:
        with httpx.Client(timeout=30) as client:
            statuses = {
                client.get(f"{served.base_url}/Patient", params={"_count": 1}).status_code for _ in range(20)
            }
        assert statuses == {200}
    finally:
        served.stop()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("pki"))


def client_context(tls_files: TlsFiles, maximum: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(tls_files.ca_cert))
    context.maximum_version = maximum
    return context


@pytest.mark.parametrize(
    ("min_version", "client_max", "accepted"),
    [
        ("1.2", ssl.TLSVersion.TLSv1_2, True),
        ("1.2", ssl.TLSVersion.TLSv1_3, True),
        ("1.3", ssl.TLSVersion.TLSv1_2, False),
    ],
)
def test_tls_minimum_version(
    upstream: SeededUpstream,
    tls_files: TlsFiles,
    tmp_path: Path,
    min_version: str,
    client_max: ssl.TLSVersion,
    accepted: bool,
) -> None:
    port = free_port()
    config = write_config(
        tmp_path,
        {
            "server": {
                "port": port,
                "log_level": "warning",
                "tls": {
                    "cert_file": str(tls_files.server_cert),
                    "key_file": str(tls_files.server_key),
                    "min_version": min_version,
                },
            },
            "upstreams": [{"name": "default", "url": upstream.base_url}],
        },
    )
    served = ServedProxy(
        ["--config", str(config)],
        port,
        scheme="https",
        verify=client_context(tls_files, ssl.TLSVersion.TLSv1_3),
    )
    try:
        context = client_context(tls_files, client_max)
        if accepted:
            response = httpx.get(f"{served.base_url}/metadata", verify=context)
            assert response.status_code == 200
            assert response.json()["implementation"]["url"] == served.base_url
        else:
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"{served.base_url}/metadata", verify=context)
    finally:
        served.stop()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_1_1_is_never_offered(upstream: SeededUpstream, tls_files: TlsFiles, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(
        tmp_path,
        {
            "server": {
                "port": port,
                "log_level": "warning",
                "tls": {"cert_file": str(tls_files.server_cert), "key_file": str(tls_files.server_key)},
            },
            "upstreams": [{"name": "default", "url": upstream.base_url}],
        },
    )
    served = ServedProxy(
        ["--config", str(config)],
        port,
        scheme="https",
        verify=client_context(tls_files, ssl.TLSVersion.TLSv1_3),
    )
    try:
        import socket

        legacy = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        legacy.load_verify_locations(str(tls_files.ca_cert))
        legacy.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        legacy.maximum_version = ssl.TLSVersion.TLSv1_1
        legacy.set_ciphers("ALL:@SECLEVEL=0")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, pytest.raises(ssl.SSLError):
            legacy.wrap_socket(raw, server_hostname="127.0.0.1")
    finally:
        served.stop()


def routed_config(
    tmp_path: Path, port: int, upstream: SeededUpstream, store: BinaryStore, max_binary: int = 512 * MiB
) -> Path:
    return write_config(
        tmp_path,
        {
            "server": {"port": port, "log_level": "warning", "graceful_shutdown_seconds": 20},
            "limits": {"max_binary_bytes": max_binary},
            "upstreams": [
                {"name": "default", "url": upstream.base_url},
                {"name": "documents", "url": store.base_url, "resource_types": ["Binary"]},
            ],
        },
    )


def test_binary_streams_with_bounded_memory(
    upstream: SeededUpstream, binary_store: BinaryStore, tmp_path: Path
) -> None:
    port = free_port()
    served = ServedProxy(["--config", str(routed_config(tmp_path, port, upstream, binary_store))], port)
    size = 160 * MiB
    block = bytes(range(256)) * 4096  # 1 MiB

    def body() -> Iterator[bytes]:
        for _ in range(size // len(block)):
            yield block

    try:
        baseline = served.peak_rss_bytes()
        with httpx.Client(timeout=120) as client:
            created = client.post(
                f"{served.base_url}/Binary",
                content=body(),
                headers={"content-type": "application/octet-stream"},
            )
            assert created.status_code == 201
            location = created.headers["location"]
            assert location.startswith(served.base_url + "/Binary/")
            binary_id = location.split("/Binary/")[1].split("/")[0]
            received = 0
            with client.stream(
                "GET", f"{served.base_url}/Binary/{binary_id}", headers={"accept": "application/octet-stream"}
            ) as download:
                assert download.status_code == 200
                assert download.headers["content-type"] == "application/octet-stream"
                assert int(download.headers["content-length"]) == size
                for chunk in download.iter_bytes():
                    received += len(chunk)
            assert received == size
        growth = served.peak_rss_bytes() - baseline
        assert growth < 48 * MiB, (
            f"peak RSS grew by {growth / MiB:.0f} MiB for a {size / MiB:.0f} MiB round trip"
        )
    finally:
        served.stop()


def test_binary_over_limit_is_413_and_not_stored(
    upstream: SeededUpstream, binary_store: BinaryStore, tmp_path: Path
) -> None:
    port = free_port()
    served = ServedProxy(
        ["--config", str(routed_config(tmp_path, port, upstream, binary_store, 2 * MiB))], port
    )
    before = binary_store.completed_uploads

    def body() -> Iterator[bytes]:
        for _ in range(8):
            yield b"x" * MiB

    try:
        with httpx.Client(timeout=60) as client:
            declared = client.post(
                f"{served.base_url}/Binary",
                content=b"x" * (3 * MiB),
                headers={"content-type": "application/pdf"},
            )
            assert declared.status_code == 413
            streamed = client.post(
                f"{served.base_url}/Binary", content=body(), headers={"content-type": "application/pdf"}
            )
            assert streamed.status_code == 413
            assert streamed.json()["resourceType"] == "OperationOutcome"
        time.sleep(0.3)
        assert binary_store.completed_uploads == before
    finally:
        served.stop()


def test_graceful_shutdown_drains_in_flight_requests(
    upstream: SeededUpstream, binary_store: BinaryStore, tmp_path: Path
) -> None:
    port = free_port()
    served = ServedProxy(["--config", str(routed_config(tmp_path, port, upstream, binary_store))], port)
    created = httpx.post(
        f"{served.base_url}/Binary", content=b"slow document", headers={"content-type": "text/plain"}
    )
    binary_id = created.headers["location"].split("/Binary/")[1].split("/")[0]
    result: dict[str, httpx.Response] = {}

    def slow_read() -> None:
        result["response"] = httpx.get(
            f"{served.base_url}/Binary/{binary_id}",
            params={"delay": "1.5"},
            headers={"accept": "text/plain"},
            timeout=30,
        )

    reader = threading.Thread(target=slow_read)
    reader.start()
    time.sleep(0.5)
    exit_code = served.stop()
    reader.join(timeout=30)
    assert result["response"].status_code == 200
    assert result["response"].content == b"slow document"
    assert exit_code in CLEAN_EXIT
    with pytest.raises(httpx.ConnectError):
        httpx.get(served.root + "/healthz", timeout=2)

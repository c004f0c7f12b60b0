"""Certificates replaced on disk while the proxy serves: inbound TLS and the client certificate towards an
upstream change for new connections, without a restart; a broken pair is logged and the old one kept."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.conftest import RunningProxy, SeededUpstream, free_port, make_settings
from tests.integration.test_serving import ServedProxy, write_config
from tests.tls_material import CertificateAuthority, make_authority

RELOAD_SECONDS = 0.2
WAIT_SECONDS = 5.0


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def cert_fingerprint(certificate: x509.Certificate) -> str:
    return fingerprint(certificate.public_bytes(serialization.Encoding.DER))


def served_fingerprint(port: int, context: ssl.SSLContext) -> str:
    """The certificate a brand-new TLS connection to ``port`` is shown."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return fingerprint(der)


def held_open_fingerprints(port: int, context: ssl.SSLContext, count: int) -> set[str]:
    """Certificates shown to ``count`` connections held open together (so several workers accept them)."""
    with contextlib.ExitStack() as stack:
        connections = [
            stack.enter_context(
                context.wrap_socket(
                    stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5)),
                    server_hostname="127.0.0.1",
                )
            )
            for _ in range(count)
        ]
        return {fingerprint(tls.getpeercert(binary_form=True) or b"") for tls in connections}


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT_SECONDS}s: {what}")
        time.sleep(0.05)


def errors_from_reload(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "fhirwall.tls" and r.levelno == logging.ERROR]


def test_inbound_certificate_reloads_without_restart(
    upstream: SeededUpstream,
    run_proxy: Callable[..., RunningProxy],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="fhirwall.tls")
    ca = make_authority(tmp_path)
    cert, key = tmp_path / "server.pem", tmp_path / "server-key.pem"
    first = ca.issue(cert, key, "127.0.0.1", server=True)
    tls = {"cert_file": str(cert), "key_file": str(key), "reload_seconds": RELOAD_SECONDS}
    proxy = run_proxy(make_settings(upstream.base_url, **{"server.tls": tls}))
    port = proxy.settings.server.port
    context = ssl.create_default_context(cafile=str(ca.cert_file))
    assert served_fingerprint(port, context) == cert_fingerprint(first)

    opened_before = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        opened_before.request("GET", "/healthz")
        response = opened_before.getresponse()
        assert response.status == 200
        assert response.read()
        assert opened_before.sock is not None
        socket_before = opened_before.sock

        second = ca.issue(cert, key, "127.0.0.1", server=True)
        wait_until(lambda: served_fingerprint(port, context) == cert_fingerprint(second), "cert B served")

        opened_before.request("GET", "/healthz")
        assert opened_before.getresponse().status == 200
        assert opened_before.sock is socket_before, "the request went over the connection opened before"
        assert fingerprint(socket_before.getpeercert(binary_form=True) or b"") == cert_fingerprint(first)
    finally:
        opened_before.close()

    caplog.clear()
    ca.issue(cert, tmp_path / "unrelated-key.pem", "127.0.0.1", server=True)  # cert C with key B
    wait_until(lambda: bool(errors_from_reload(caplog)), "an error about the mismatched pair")
    assert "inbound TLS" in errors_from_reload(caplog)[0]
    assert key.read_text().splitlines()[1] not in caplog.text
    assert served_fingerprint(port, context) == cert_fingerprint(second)
    with proxy.client(verify=context) as client:
        assert client.get(f"/Patient/{upstream.first('Patient')}").status_code == 200


def test_every_worker_process_reloads(upstream: SeededUpstream, tmp_path: Path) -> None:
    ca = make_authority(tmp_path)
    cert, key = tmp_path / "server.pem", tmp_path / "server-key.pem"
    ca.issue(cert, key, "127.0.0.1", server=True)
    port = free_port()
    tls = {"cert_file": str(cert), "key_file": str(key), "reload_seconds": RELOAD_SECONDS}
    document: dict[str, object] = {
        "server": {"port": port, "workers": 2, "log_level": "warning", "tls": tls},
        "upstreams": [{"name": "default", "url": upstream.base_url}],
    }
    context = ssl.create_default_context(cafile=str(ca.cert_file))
    served = ServedProxy(["--config", str(write_config(tmp_path, document))], port, "https", context)
    try:
        second = ca.issue(cert, key, "127.0.0.1", server=True)
        expected = cert_fingerprint(second)
        wait_until(lambda: served_fingerprint(port, context) == expected, "cert B served")
        time.sleep(RELOAD_SECONDS * 3)  # every worker has had several checks by now
        assert held_open_fingerprints(port, context, 40) == {expected}
    finally:
        served.stop()


class RecordingUpstream:
    """A real HTTPS FHIR endpoint that requires client certificates and records each request's client
    certificate (serial) and the client port of the connection it came over."""

    def __init__(self, ca: CertificateAuthority, directory: Path) -> None:
        cert, key = directory / "upstream.pem", directory / "upstream-key.pem"
        ca.issue(cert, key, "127.0.0.1", server=True)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca.cert_file))
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_cert_chain(cert, key)
        self.seen: list[tuple[int, int]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self._server.server_address[1]}/fhir"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        seen = self.seen

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 10

            def do_GET(self) -> None:
                assert isinstance(self.connection, ssl.SSLSocket)
                peer = self.connection.getpeercert(binary_form=True) or b""
                seen.append((x509.load_der_x509_certificate(peer).serial_number, self.client_address[1]))
                body = orjson.dumps({"resourceType": "Patient", "id": self.path.rsplit("/", 1)[-1]})
                self.send_response(200)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        return Handler

    def __enter__(self) -> RecordingUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def pki(tmp_path: Path) -> Iterator[tuple[CertificateAuthority, RecordingUpstream]]:
    ca = make_authority(tmp_path / "pki")
    with RecordingUpstream(ca, tmp_path / "pki") as server:
        yield ca, server


def test_upstream_client_certificate_reloads_without_restart(
    pki: tuple[CertificateAuthority, RecordingUpstream],
    run_proxy: Callable[..., RunningProxy],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="fhirwall.tls")
    ca, server = pki
    cert, key = tmp_path / "proxy.pem", tmp_path / "proxy-key.pem"
    first = ca.issue(cert, key, "fhirwall-proxy", server=False)
    tls = {"ca_file": str(ca.cert_file), "cert_file": str(cert), "key_file": str(key)}
    upstreams = [{"name": "default", "url": server.url, "tls": {**tls, "reload_seconds": RELOAD_SECONDS}}]
    proxy = run_proxy(make_settings(server.url, upstreams=upstreams))

    with proxy.client() as client:

        def presented() -> int:
            assert client.get("/Patient/p1").status_code == 200
            return server.seen[-1][0]

        assert presented() == first.serial_number
        old_port = server.seen[-1][1]
        second = ca.issue(cert, key, "fhirwall-proxy", server=False)
        wait_until(lambda: presented() == second.serial_number, "the new client certificate presented")
        assert [presented() for _ in range(3)] == [second.serial_number] * 3
        assert old_port not in {port for serial, port in server.seen if serial == second.serial_number}

        caplog.clear()
        ca.issue(cert, tmp_path / "unrelated-key.pem", "fhirwall-proxy", server=False)
        wait_until(lambda: bool(errors_from_reload(caplog)), "an error about the mismatched pair")
        assert "upstream default TLS" in errors_from_reload(caplog)[0]
        assert presented() == second.serial_number

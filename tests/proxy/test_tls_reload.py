"""Certificate reload: real files, real TLS handshakes over socket pairs, no restart."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from proxy.settings import UpstreamTlsSettings
from proxy.tls_reload import ReloadingContext, serving_context, start_watching, stop_watching
from proxy.upstream.tls import reloading_client_context
from tests.tls_material import CertificateAuthority, make_authority


class Link:
    """One TLS connection over a socket pair; the server end echoes in a thread."""

    def __init__(self, server: ssl.SSLContext, client: ssl.SSLContext) -> None:
        server_end, client_end = socket.socketpair()
        self.client_certificate: bytes | None = None
        self._thread = threading.Thread(target=self._echo, args=(server, server_end), daemon=True)
        self._thread.start()
        client_end.settimeout(5)
        self.tls = client.wrap_socket(client_end, server_hostname="localhost")

    def _echo(self, context: ssl.SSLContext, sock: socket.socket) -> None:
        sock.settimeout(5)
        try:
            with context.wrap_socket(sock, server_side=True) as tls:
                self.client_certificate = tls.getpeercert(binary_form=True)
                while data := tls.recv(64):
                    tls.sendall(data)
        except OSError:
            sock.close()

    def answers(self) -> bool:
        try:
            self.tls.sendall(b"ping")
            return self.tls.recv(64) == b"ping"
        except OSError:
            return False

    def certificate(self) -> bytes:
        der = self.tls.getpeercert(binary_form=True)
        assert der is not None
        return der

    def close(self) -> None:
        self.tls.close()
        self._thread.join(timeout=5)


def der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def server_builder(cert: Path, key: Path, client_ca: Path | None = None) -> Callable[[], ssl.SSLContext]:
    def build() -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        if client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(client_ca)
        return context

    return build


def client_context(ca: CertificateAuthority) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca.cert_file))


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return make_authority(tmp_path)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "server.pem", tmp_path / "server-key.pem"


def served_by(live: ssl.SSLContext, ca: CertificateAuthority) -> bytes:
    """The certificate a new handshake with the served context ``live`` is shown."""
    link = Link(live, client_context(ca))
    try:
        assert link.answers()
        return link.certificate()
    finally:
        link.close()


def test_unchanged_files_keep_the_context(ca: CertificateAuthority, pair: tuple[Path, Path]) -> None:
    ca.issue(*pair, "127.0.0.1", server=True)
    reloading = ReloadingContext("test", server_builder(*pair), pair)
    first = reloading.current
    assert reloading.check() is False
    assert reloading.current is first


def test_new_handshakes_get_the_new_certificate_and_old_connections_continue(
    ca: CertificateAuthority, pair: tuple[Path, Path]
) -> None:
    old = ca.issue(*pair, "127.0.0.1", server=True)
    reloading = ReloadingContext("test", server_builder(*pair), pair)
    live = serving_context(reloading)
    before = Link(live, client_context(ca))
    try:
        assert before.certificate() == der(old)
        new = ca.issue(*pair, "127.0.0.1", server=True)
        assert reloading.check() is True
        assert served_by(live, ca) == der(new)
        assert before.answers()
        assert before.certificate() == der(old)
    finally:
        before.close()


def test_mismatched_pair_keeps_the_previous_certificate(
    ca: CertificateAuthority, pair: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = ca.issue(*pair, "127.0.0.1", server=True)
    reloading = ReloadingContext("inbound", server_builder(*pair), pair)
    live = serving_context(reloading)
    ca.issue(pair[0], tmp_path / "other-key.pem", "127.0.0.1", server=True)
    with caplog.at_level(logging.DEBUG, logger="fhirwall.tls"):
        assert reloading.check() is False
        assert reloading.check() is False
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1, "one error per broken state, not one per check"
    assert "inbound" in errors[0].getMessage()
    key_body = pair[1].read_text().splitlines()[1]
    assert key_body not in caplog.text
    assert served_by(live, ca) == der(good)


@pytest.mark.parametrize("damage", ["truncated", "missing", "garbage"])
def test_unreadable_files_keep_the_previous_certificate_until_repaired(
    ca: CertificateAuthority, pair: tuple[Path, Path], damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    good = ca.issue(*pair, "127.0.0.1", server=True)
    reloading = ReloadingContext("inbound", server_builder(*pair), pair)
    live = serving_context(reloading)
    cert, key = pair
    if damage == "truncated":
        cert.write_bytes(cert.read_bytes()[:100])
    elif damage == "missing":
        key.unlink()
    else:
        key.write_bytes(b"not a key")
    with caplog.at_level(logging.ERROR, logger="fhirwall.tls"):
        assert reloading.check() is False
    assert "previous ones stay in use" in caplog.text
    assert served_by(live, ca) == der(good)
    repaired = ca.issue(*pair, "127.0.0.1", server=True)
    assert reloading.check() is True
    assert served_by(live, ca) == der(repaired)


def test_a_client_ca_removed_from_the_bundle_is_no_longer_trusted(
    ca: CertificateAuthority, pair: tuple[Path, Path], tmp_path: Path
) -> None:
    ca.issue(*pair, "127.0.0.1", server=True)
    bundle = tmp_path / "clients.pem"
    old_clients = make_authority(tmp_path / "old")
    new_clients = make_authority(tmp_path / "new")
    bundle.write_bytes(old_clients.cert_file.read_bytes())
    reloading = ReloadingContext("inbound", server_builder(*pair, bundle), [*pair, bundle])
    live = serving_context(reloading)

    def client(authority: CertificateAuthority, name: str) -> ssl.SSLContext:
        context = client_context(ca)
        cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}-key.pem"
        authority.issue(cert, key, name, server=False)
        context.load_cert_chain(cert, key)
        return context

    def accepted(context: ssl.SSLContext) -> bool:
        link = Link(live, context)
        try:
            return link.answers()
        finally:
            link.close()

    old_client, new_client = client(old_clients, "old"), client(new_clients, "new")
    assert accepted(old_client)
    assert not accepted(new_client)
    bundle.write_bytes(new_clients.cert_file.read_bytes())
    assert reloading.check() is True
    assert not accepted(old_client)
    assert accepted(new_client)


def test_upstream_client_certificate_and_ca_reload(ca: CertificateAuthority, tmp_path: Path) -> None:
    server_pair = tmp_path / "upstream.pem", tmp_path / "upstream-key.pem"
    ca.issue(*server_pair, "127.0.0.1", server=True)
    upstream = server_builder(*server_pair, ca.cert_file)()
    cert, key = tmp_path / "proxy.pem", tmp_path / "proxy-key.pem"
    first = ca.issue(cert, key, "fhirwall-proxy", server=False)
    trusted = tmp_path / "upstream-ca.pem"
    trusted.write_bytes(ca.cert_file.read_bytes())
    settings = UpstreamTlsSettings(ca_file=trusted, cert_file=cert, key_file=key)
    reloading = reloading_client_context(settings, "default")

    def presented() -> bytes | None:
        link = Link(upstream, reloading.current)
        try:
            assert link.answers()
            return link.client_certificate
        finally:
            link.close()

    assert presented() == der(first)
    second = ca.issue(cert, key, "fhirwall-proxy", server=False)
    assert reloading.check() is True
    assert presented() == der(second)
    other = make_authority(tmp_path / "other")
    trusted.write_bytes(other.cert_file.read_bytes())
    assert reloading.check() is True
    with pytest.raises(ssl.SSLCertVerificationError):
        Link(upstream, reloading.current)  # the replaced upstream CA is no longer trusted


def test_the_watcher_reloads_by_itself(ca: CertificateAuthority, pair: tuple[Path, Path]) -> None:
    ca.issue(*pair, "127.0.0.1", server=True)
    reloading = ReloadingContext("inbound", server_builder(*pair), pair)
    first = reloading.current

    async def scenario() -> None:
        assert start_watching(reloading, 0) is None
        watcher = start_watching(reloading, 0.05)
        assert watcher is not None
        ca.issue(*pair, "127.0.0.1", server=True)
        for _ in range(100):
            if reloading.current is not first:
                break
            await asyncio.sleep(0.02)
        await stop_watching(watcher)
        assert watcher.cancelled()

    asyncio.run(scenario())
    assert reloading.current is not first

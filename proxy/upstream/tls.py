"""TLS towards servers the proxy calls (upstreams, the audit server, their token endpoints)."""

from __future__ import annotations

import ssl

from proxy.settings import UpstreamTlsSettings
from proxy.tls_reload import ReloadingContext

__all__ = ["client_ssl_context", "reloading_client_context", "token_endpoint_verify"]


def client_ssl_context(tls: UpstreamTlsSettings) -> ssl.SSLContext:
    """A TLS 1.2+ client context: the configured CA bundle, optional client certificate (mTLS), and
    verification switched off only when the settings say so."""
    context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.cert_file and tls.key_file:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return context


def reloading_client_context(tls: UpstreamTlsSettings, name: str) -> ReloadingContext:
    """``client_ssl_context`` rebuilt whenever the CA bundle, certificate or key file changes."""
    files = [path for path in (tls.ca_file, tls.cert_file, tls.key_file) if path is not None]
    return ReloadingContext(f"upstream {name} TLS", lambda: client_ssl_context(tls), files)


def token_endpoint_verify(tls: UpstreamTlsSettings) -> ssl.SSLContext | bool:
    """httpx ``verify`` for an OAuth token endpoint: the server's CA bundle when one is configured."""
    if not tls.verify:
        return False
    return ssl.create_default_context(cafile=str(tls.ca_file)) if tls.ca_file else True

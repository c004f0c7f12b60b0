"""Serving the proxy with uvicorn (uvloop + httptools), optional TLS 1.2+, several workers, graceful drain.

uvicorn was chosen by measurement over granian for this workload (see the README's performance section).
Worker processes rebuild the application from the validated settings passed in ``FHIRWALL__SETTINGS_JSON``.
"""

from __future__ import annotations

import logging
import os
import ssl
from typing import Any

import uvicorn
from starlette.applications import Starlette

from proxy.app import create_app
from proxy.settings import Settings

__all__ = ["SETTINGS_ENV", "app_from_environment", "run_server", "uvicorn_config"]

SETTINGS_ENV = "FHIRWALL__SETTINGS_JSON"
_TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
# Forward-secret AEAD suites only (TLS 1.3 suites are always enabled by OpenSSL).
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


class TlsConfig(uvicorn.Config):
    """uvicorn configuration that pins the lowest TLS version after uvicorn builds its SSL context."""

    min_tls_version: str = "1.2"

    def load(self) -> None:
        super().load()
        if self.ssl is not None:
            self.ssl.minimum_version = _TLS_VERSIONS[self.min_tls_version]


def app_from_environment() -> Starlette:
    """Application factory for worker processes."""
    return create_app(Settings.model_validate_json(os.environ[SETTINGS_ENV]))


def uvicorn_config(settings: Settings, app: Any | None = None) -> uvicorn.Config:
    """The uvicorn configuration for ``settings`` (an import-string factory when several workers run)."""
    server = settings.server
    options: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "loop": "uvloop",
        "http": "httptools",
        "log_level": server.log_level,
        "access_log": False,
        "proxy_headers": False,
        "server_header": False,
        "timeout_graceful_shutdown": server.graceful_shutdown_seconds,
        "lifespan": "on",
    }
    if server.tls is not None:
        options.update(
            ssl_certfile=str(server.tls.cert_file),
            ssl_keyfile=str(server.tls.key_file),
            ssl_ciphers=TLS12_CIPHERS,
        )
        if server.tls.client_ca_file is not None:
            options.update(ssl_ca_certs=str(server.tls.client_ca_file), ssl_cert_reqs=ssl.CERT_REQUIRED)
    if server.workers > 1:
        os.environ[SETTINGS_ENV] = settings.model_dump_json()
        config = TlsConfig(
            "proxy.serve:app_from_environment", factory=True, workers=server.workers, **options
        )
    else:
        config = TlsConfig(app if app is not None else create_app(settings), **options)
    config.min_tls_version = server.tls.min_version if server.tls is not None else "1.2"
    return config


def run_server(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests drain for ``graceful_shutdown_seconds``."""
    logging.basicConfig(
        level=settings.server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    config = uvicorn_config(settings)
    if settings.server.workers > 1:
        sock = config.bind_socket()
        uvicorn.supervisors.Multiprocess(config, sockets=[sock]).run()
        return
    uvicorn.Server(config).run()

"""Serving the proxy with uvicorn (uvloop + httptools), optional TLS 1.2+, several workers, graceful drain.

Certificate, key and client CA files are watched and reloaded for new connections without a restart.

uvicorn was chosen by measurement over granian for this workload (see the README's performance section).
Worker processes rebuild the application from the validated settings passed in ``FHIRWALL__SETTINGS_JSON``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from uvicorn.config import create_ssl_context

from proxy.app import create_app
from proxy.settings import ServerTlsSettings, Settings
from proxy.tls_reload import ReloadingContext, serving_context, start_watching

__all__ = ["SETTINGS_ENV", "app_from_environment", "run_server", "uvicorn_config"]

SETTINGS_ENV = "FHIRWALL__SETTINGS_JSON"
_TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
# Forward-secret AEAD suites only (TLS 1.3 suites are always enabled by OpenSSL).
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


class TlsConfig(uvicorn.Config):
    """uvicorn configuration whose SSL context pins the lowest TLS version and follows certificate changes.

    ``load`` runs in each serving process (every worker) inside its event loop, so each one watches the
    files for its own context.
    """

    min_tls_version: str = "1.2"
    tls_files: tuple[Path, ...] = ()
    tls_reload_seconds: float = 0.0
    tls_reloading: ReloadingContext | None = None
    tls_watcher: asyncio.Task[None] | None = None

    def load(self) -> None:
        super().load()
        if self.ssl is not None:  # replaced by a context rebuilt from the same options when files change
            self.tls_reloading = ReloadingContext("inbound TLS", self._build_ssl, self.tls_files)
            self.ssl = serving_context(self.tls_reloading)
            self.tls_watcher = start_watching(self.tls_reloading, self.tls_reload_seconds)

    def _build_ssl(self) -> ssl.SSLContext:
        assert self.ssl_certfile is not None
        context = create_ssl_context(
            certfile=self.ssl_certfile,
            keyfile=self.ssl_keyfile,
            password=self.ssl_keyfile_password,
            ssl_version=self.ssl_version,
            cert_reqs=self.ssl_cert_reqs,
            ca_certs=self.ssl_ca_certs,
            ciphers=self.ssl_ciphers,
        )
        context.minimum_version = _TLS_VERSIONS[self.min_tls_version]
        return context


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
    if server.tls is not None:
        _watch_tls_files(config, server.tls)
    return config


def _watch_tls_files(config: TlsConfig, tls: ServerTlsSettings) -> None:
    config.min_tls_version = tls.min_version
    config.tls_files = tuple(path for path in (tls.cert_file, tls.key_file, tls.client_ca_file) if path)
    config.tls_reload_seconds = tls.reload_seconds


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

"""An embedded upstream FHIR R4 server for the demo and the tests (``sekmet-fhir``, SQLite, 127.0.0.1 only).

Development use only: it has no access control of its own unless ``static_tokens`` is given.
"""

from __future__ import annotations

import gzip
import os
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import yaml

__all__ = ["CAREBUNDLE_DATA", "EXAMPLE_DATA", "EmbeddedUpstream", "load_bundle", "synthea_bundles"]

EXAMPLE_DATA = Path(__file__).resolve().parent.parent / "examples" / "data" / "synthea-r4"
CAREBUNDLE_DATA = EXAMPLE_DATA.parent / "carebundle"
START_TIMEOUT_SECONDS = 30.0


def synthea_bundles(data_dir: Path = EXAMPLE_DATA, patients: int = 2) -> list[Path]:
    """Hospital and practitioner bundles first (patients refer to them), then ``patients`` patient bundles."""
    files = sorted(data_dir.glob("*.json*"))
    shared = [f for f in files if f.name.startswith(("hospitalInformation", "practitionerInformation"))]
    people = [f for f in files if f not in shared]
    return sorted(shared, key=lambda f: not f.name.startswith("hospital")) + people[:patients]


def load_bundle(path: Path) -> bytes:
    """The bytes of a (possibly gzipped) bundle file."""
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


class EmbeddedUpstream:
    """A ``sekmet`` FHIR server process on 127.0.0.1:``port``; a context manager."""

    def __init__(
        self,
        port: int,
        *,
        data_dir: Path | None = None,
        static_tokens: Iterable[str] = (),
        log_inbound: bool = False,
        extra_settings: dict[str, Any] | None = None,
        uvicorn_args: Iterable[str] = (),
        scheme: str = "http",
    ) -> None:
        self.port = port
        self.base_url = f"{scheme}://127.0.0.1:{port}/fhir"
        self._tmp = tempfile.TemporaryDirectory(prefix="fhirwall-upstream-") if data_dir is None else None
        self.data_dir = Path(self._tmp.name) if self._tmp else Path(data_dir or ".")
        self._settings = self._settings_for(list(static_tokens), log_inbound, extra_settings or {})
        self._uvicorn_args = list(uvicorn_args)
        self._process: subprocess.Popen[bytes] | None = None

    def _settings_for(self, tokens: list[str], log_inbound: bool, extra: dict[str, Any]) -> dict[str, Any]:
        auth = {"types": ["bearer"], "tokens": tokens} if tokens else {"types": ["none"]}
        return {
            "base_url": self.base_url,
            "host": "127.0.0.1",
            "port": self.port,
            "data_dir": str(self.data_dir),
            "log_inbound": log_inbound,
            "simulator": {"enabled": False},
            "validation": {"inbound": "off"},
            "server_auth": auth,
            **extra,
        }

    @property
    def database(self) -> Path:
        """The SQLite file of the server (its traffic log records inbound headers when ``log_inbound``)."""
        return self.data_dir / "sekmet.db"

    def start(self, verify: ssl.SSLContext | bool = True) -> EmbeddedUpstream:
        """Start the server and wait until it answers ``/metadata`` (``verify``: TLS context for https)."""
        config = self.data_dir / "settings.yaml"
        config.write_text(yaml.safe_dump(self._settings), encoding="utf-8")
        env = {**os.environ, "SEKMET_CONFIG": str(config)}
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "sekmet.main:app_factory",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            "--no-access-log",
            *self._uvicorn_args,
        ]
        self._process = subprocess.Popen(command, env=env, cwd=self.data_dir)
        self._wait_ready(verify)
        return self

    def _wait_ready(self, verify: ssl.SSLContext | bool) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        with httpx.Client(verify=verify, timeout=2.0) as client:
            while time.monotonic() < deadline:
                assert self._process is not None
                if self._process.poll() is not None:
                    raise RuntimeError("the embedded upstream exited during start-up")
                try:
                    if client.get(f"{self.base_url}/metadata").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("the embedded upstream did not become ready in time")

    def seed(self, bundles: Iterable[Path], token: str | None = None) -> list[dict[str, Any]]:
        """POST each transaction bundle; returns the transaction-response bundles."""
        headers = {"content-type": "application/fhir+json"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        responses = []
        with httpx.Client(timeout=120.0) as client:
            for path in bundles:
                answer = client.post(self.base_url, content=load_bundle(path), headers=headers)
                answer.raise_for_status()
                responses.append(answer.json())
        return responses

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> EmbeddedUpstream:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

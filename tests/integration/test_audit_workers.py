"""``fhirwall serve --workers 2`` with an audit log: each worker writes its own chained file, every request
is recorded in exactly one of them, each file verifies on its own and ``audit query`` over both finds them
all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from proxy.cli import main as fhirwall
from tests.conftest import SeededUpstream, free_port

KEY_ENV = "FHIRWALL_TEST_WORKERS_AUDIT_KEY"
KEY = "workers-test-checkpoint-key"
REQUESTS = 60
CLEAN_EXIT = (0, -signal.SIGTERM)


def start(upstream: SeededUpstream, folder: Path, port: int) -> subprocess.Popen[bytes]:
    config = {
        "server": {"port": port, "workers": 2, "log_level": "warning"},
        "upstreams": [{"name": "default", "url": upstream.base_url}],
        "audit": {"log_file": str(folder / "audit.jsonl"), "log_key_env": KEY_ENV, "fsync": "never"},
    }
    path = folder / "fhirwall.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    command = [sys.executable, "-m", "proxy.cli", "serve", "--config", str(path)]
    return subprocess.Popen(command, env={**os.environ, KEY_ENV: KEY})


def wait_for_workers(process: subprocess.Popen[bytes], logs: list[Path], port: int) -> None:
    """Until both workers opened their logs and one answers."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "fhirwall serve exited"
        try:
            healthy = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            healthy = False
        if healthy and all(log.exists() for log in logs):
            return
        time.sleep(0.1)
    raise RuntimeError("the workers did not start")


def send(port: int, request_id: str) -> int:
    """One request on its own connection, so either worker may take it."""
    answer = httpx.get(
        f"http://127.0.0.1:{port}/fhir/Patient",
        params={"_count": "1"},
        headers={"x-request-id": request_id},
        timeout=10,
    )
    return answer.status_code


def test_two_workers_write_one_log_each(
    upstream: SeededUpstream,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    logs = [tmp_path / "audit.0.jsonl", tmp_path / "audit.1.jsonl"]
    process = start(upstream, tmp_path, port)
    request_ids = [uuid.uuid4().hex for _ in range(REQUESTS)]
    try:
        wait_for_workers(process, logs, port)
        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = set(pool.map(lambda request_id: send(port, request_id), request_ids))
        assert statuses == {200}
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) in CLEAN_EXIT
    assert not (tmp_path / "audit.jsonl").exists()
    texts = [log.read_text(encoding="utf-8") for log in logs]
    for request_id in request_ids:
        assert sum(request_id in text for text in texts) == 1, request_id
    monkeypatch.setenv(KEY_ENV, KEY)
    capsys.readouterr()
    assert fhirwall(["audit", "verify", *map(str, logs), "--key-env", KEY_ENV]) == 0
    verified = capsys.readouterr().out
    assert all(f"{log}: OK" in verified for log in logs)
    assert fhirwall(["audit", "query", *map(str, logs), "--format", "ndjson"]) == 0
    found = capsys.readouterr().out
    assert all(request_id in found for request_id in request_ids)

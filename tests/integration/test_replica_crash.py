"""Two proxy processes under load; one is killed (SIGKILL) mid-load. Every request either replica answered is
in that replica's audit log (records are written before the answer), the killed replica's log still
verifies, and the surviving replica keeps serving."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import yaml

from proxy.cli import main as fhirwall
from tests.conftest import SeededUpstream, free_port

AUDIT_KEY_ENV = "FHIRWALL_TEST_CRASH_AUDIT_KEY"


class Replica:
    """``fhirwall serve`` in its own process, with its own audit log."""

    def __init__(self, upstream: SeededUpstream, folder: Path) -> None:
        self.port = free_port()
        self.log = folder / f"audit-{self.port}.jsonl"
        config = {
            "server": {"port": self.port, "log_level": "warning"},
            "upstreams": [{"name": "default", "url": upstream.base_url}],
            "audit": {"log_file": str(self.log), "log_key_env": AUDIT_KEY_ENV, "fsync": "never"},
        }
        path = folder / f"config-{self.port}.yaml"
        path.write_text(yaml.safe_dump(config))
        env = {**os.environ, AUDIT_KEY_ENV: "crash-test-checkpoint-key"}
        command = [sys.executable, "-m", "proxy.cli", "serve", "--config", str(path)]
        self.output = folder / f"output-{self.port}.txt"
        with self.output.open("wb") as output:
            self.process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
        self.answered: list[str] = []
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError(f"the replica did not start: {self.output.read_text(errors='replace')[-2000:]}")

    def load(self, stop: threading.Event) -> None:
        """Send requests until ``stop`` or until the replica is gone; remember the answered request ids."""
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}/fhir", timeout=5) as client:
            while not stop.is_set():
                request_id = uuid.uuid4().hex
                try:
                    answer = client.get(
                        "/Patient", params={"_count": "1"}, headers={"x-request-id": request_id}
                    )
                except httpx.HTTPError:
                    return  # killed
                if answer.status_code == 200:
                    self.answered.append(request_id)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)


def test_killing_a_replica_mid_load_loses_no_audit_record(upstream: SeededUpstream, tmp_path: Path) -> None:
    victim, survivor = Replica(upstream, tmp_path), Replica(upstream, tmp_path)
    stop = threading.Event()
    workers = [threading.Thread(target=r.load, args=(stop,)) for r in (victim, survivor) for _ in range(3)]
    try:
        for worker in workers:
            worker.start()
        time.sleep(1.5)
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(timeout=10)
        killed_at = len(survivor.answered)
        time.sleep(1.0)
        stop.set()
        for worker in workers:
            worker.join(timeout=30)
        assert len(survivor.answered) > killed_at  # the other replica kept serving
    finally:
        stop.set()
        victim.stop()
        survivor.stop()
    assert len(victim.answered) > 20
    for replica in (victim, survivor):
        logged = replica.log.read_text(encoding="utf-8", errors="replace")
        missing = [request_id for request_id in replica.answered if request_id not in logged]
        assert not missing, f"{len(missing)} answered requests have no audit record"
    os.environ[AUDIT_KEY_ENV] = "crash-test-checkpoint-key"
    try:
        assert fhirwall(["audit", "verify", str(victim.log), "--key-env", AUDIT_KEY_ENV]) == 0
    finally:
        del os.environ[AUDIT_KEY_ENV]

"""Audit delivery in a child process (``audit.delivery.runner: process``): real deliverer processes read
a real chained log and write the AuditEvents to a file; the serving side supervises them, reads the cursor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.audit.chain import AuditChainWriter
from proxy.audit.deliverer import EXIT_BROKEN_CHAIN, deliverer_payload
from proxy.audit.delivery import AuditBacklogFullError, AuditDeliveryError
from proxy.audit.process_delivery import ProcessDelivery
from proxy.settings import AuditSettings
from tests.conftest import free_port
from tests.proxy.test_audit_delivery import KEY, append, events_of, ids, make_records, run, wait_until

KEY_ENV = "FHIRWALL_TEST_DELIVERER_KEY"


@pytest.fixture(autouse=True)
def _log_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY.decode())


def audit_settings(log: Path, **delivery: Any) -> AuditSettings:
    values: dict[str, Any] = {
        "target": "file",
        "file": str(log.with_name("delivered.jsonl")),
        "runner": "process",
        "linger_seconds": 0.05,
        "retry_initial_seconds": 0.05,
        "retry_max_seconds": 0.2,
        "drain_timeout_seconds": 5.0,
        **delivery,
    }
    return AuditSettings.model_validate(
        {"log_file": str(log), "log_key_env": KEY_ENV, "checkpoint_every": 7, "delivery": values}
    )


def delivered(log: Path) -> list[str]:
    path = log.with_name("delivered.jsonl")
    if not path.exists():
        return []
    return [orjson.loads(line)["id"] for line in path.read_bytes().splitlines()]


def first_occurrences(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def test_the_child_delivers_everything_and_is_restarted_when_it_dies(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    first, second = make_records(25), make_records(15, start=25)

    async def main() -> None:
        with AuditChainWriter(log, key=KEY, fsync="never", checkpoint_every=7) as writer:
            delivery = ProcessDelivery(log, audit_settings(log))
            for record in first:
                delivery.notify(append(writer, record))
            await delivery.start()
            child = delivery._child
            assert child is not None
            assert child.pid != os.getpid()
            await wait_until(lambda: delivery.backlog == 0, within=20)
            assert delivery.status().state == "idle"
            os.kill(child.pid, signal.SIGKILL)  # a crashed deliverer
            await wait_until(lambda: delivery.status().failed_attempts == 1, within=20)
            for record in second:
                delivery.notify(append(writer, record))
            await wait_until(lambda: delivery.backlog == 0, within=20)  # a new child took over
            assert delivery._child is not None
            assert delivery._child.pid != child.pid
            await delivery.stop()
            assert delivery.status().state == "stopped"

    run(main)
    # at least once, in order; a killed child may leave its last events twice (consumers de-duplicate by id)
    assert first_occurrences(delivered(log)) == ids(events_of(first + second))


def test_stopping_drains_what_the_log_holds(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    records = make_records(30)

    async def main() -> None:
        with AuditChainWriter(log, key=KEY, fsync="never") as writer:
            delivery = ProcessDelivery(log, audit_settings(log, linger_seconds=5.0))
            await delivery.start()
            for record in records:
                delivery.notify(append(writer, record))
            await delivery.stop()  # the child reads the rest before it exits
            assert delivery.backlog == 0

    run(main)
    assert delivered(log) == ids(events_of(records))


def test_a_backlog_the_child_cannot_deliver_refuses_requests(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    dead = f"http://127.0.0.1:{free_port()}/fhir"  # nobody listens: the child retries forever

    async def main() -> None:
        settings = audit_settings(log, target="fhir", url=dead, file=None, max_backlog=5)
        with AuditChainWriter(log, key=KEY, fsync="never") as writer:
            delivery = ProcessDelivery(log, settings)
            await delivery.start()
            for record in make_records(4):
                delivery.notify(append(writer, record))
            await delivery.admit()  # 4 < 5: served
            delivery.notify(append(writer, make_records(1, start=4)[0]))
            with pytest.raises(AuditBacklogFullError):
                await delivery.admit()
            await delivery.stop(drain_seconds=0.2)

    run(main)


def test_a_log_that_does_not_verify_stops_delivery_for_good(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    records = make_records(6)
    with AuditChainWriter(log, key=KEY, fsync="never") as writer:
        for record in records:
            append(writer, record)
    lines = log.read_bytes().splitlines(keepends=True)
    lines[3] = lines[3].replace(b'"GET"', b'"PUT"')  # an edited record
    log.write_bytes(b"".join(lines))

    async def main() -> None:
        delivery = ProcessDelivery(log, audit_settings(log))
        await delivery.start()
        await wait_until(lambda: delivery.failure is not None, within=20)
        assert delivery.status().state == "failed"  # health fails; the backlog grows to max_backlog
        assert delivery.backlog == 3
        await delivery.stop()

    run(main)
    assert delivered(log) == ids(events_of(records[:3]))


def test_a_cursor_that_does_not_match_its_log_refuses_to_start(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    with AuditChainWriter(log, key=KEY, fsync="never") as writer:
        append(writer, make_records(1)[0])
    cursor = {"log": "audit.jsonl", "seq": 1, "hash": "0" * 64, "start": 0, "end": 10}
    log.with_name("audit.jsonl.cursor").write_bytes(orjson.dumps(cursor))

    async def main() -> None:
        with pytest.raises(AuditDeliveryError):
            await ProcessDelivery(log, audit_settings(log)).start()

    run(main)


def test_the_deliverer_exits_when_its_parent_goes(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    with AuditChainWriter(log, key=KEY, fsync="never") as writer:
        for record in make_records(3):
            append(writer, record)
    child = subprocess.Popen([sys.executable, "-m", "proxy.audit.deliverer"], stdin=subprocess.PIPE)
    assert child.stdin is not None
    child.stdin.write(deliverer_payload(log, audit_settings(log), "warning"))
    child.stdin.flush()
    deadline = time.monotonic() + 20
    while len(delivered(log)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert child.poll() is None
    child.stdin.close()  # what the kernel does when the serving process dies
    assert child.wait(timeout=20) == 0
    assert delivered(log) == ids(events_of(make_records(3)))


def test_a_broken_chain_has_its_own_exit_code(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_bytes(b'{"seq":1,"prev":"x","request":{},"hash":"y"}\n')
    child = subprocess.run(
        [sys.executable, "-m", "proxy.audit.deliverer"],
        input=deliverer_payload(log, audit_settings(log), "critical"),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert child.returncode == EXIT_BROKEN_CHAIN


def test_the_process_runner_needs_the_local_log_as_spool() -> None:
    with pytest.raises(ValueError, match="runner process"):
        AuditSettings.model_validate(
            {
                "log_file": "audit.jsonl",
                "delivery": {"target": "file", "file": "out.jsonl", "spool": "redis", "runner": "process"},
            }
        )

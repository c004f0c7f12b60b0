"""The audit trail: one request record per request in the chained log, written before the answer goes out,
503 when it cannot be written (``on_failure: refuse``), the same AuditEvents as the record's own."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.app import create_app
from proxy.audit.balp import ObserverInfo, audit_events
from proxy.audit.chain import read_events, verify_chain
from proxy.audit.record import AuditRecord, Decision
from proxy.audit.trail import AuditTrail, AuditUnavailableError
from proxy.settings import AuditSettings, load_settings

KEY_ENV = "FHIRWALL_TEST_TRAIL_KEY"
ENVIRON = {KEY_ENV: "trail-test-key-0123456789"}


def settings(log: Path, **values: Any) -> AuditSettings:
    return AuditSettings(log_file=log, log_key_env=KEY_ENV, checkpoint_every=4, fsync="never", **values)


def records() -> list[AuditRecord]:
    """A read, a search over three patients, a consent denial, a break-glass read."""
    common: dict[str, Any] = {"client_id": "app", "subject": "u1", "client_address": "10.0.0.9"}
    read: dict[str, Any] = {"method": "GET", "route": "/Patient/{id}", "interaction": "read", **common}
    return [
        AuditRecord(
            "r-1", resource_type="Patient", resource_id="p1", status=200, decision=Decision.PERMIT,
            patients={"p1"}, **read,
        ),
        AuditRecord(
            "r-2", "GET", "/Observation", "search-type", resource_type="Observation", query="_count=5",
            status=200, decision=Decision.PERMIT, patients={"p1", "p2", "p3"}, **common,
        ),
        AuditRecord(
            "r-3", resource_type="Patient", resource_id="p4", status=403, decision=Decision.DENY,
            error_type="ConsentDeniedError", reasons=["consent-withheld"], consent_ids=["c1"],
            patients={"p4"}, **read,
        ),
        AuditRecord(
            "r-4", resource_type="Patient", resource_id="p5", status=200, decision=Decision.PERMIT,
            break_glass=True, patients={"p5"}, **read,
        ),
    ]  # fmt: skip


def test_one_request_record_per_request_with_the_records_events(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    trail = AuditTrail.from_settings(settings(log, observer_name="proxy-a", site="ward-3"), ENVIRON)
    appended: list[int] = []
    trail.on_append = appended.append
    submitted = records()
    for record in submitted:
        trail.submit(record)
    trail.close()
    assert appended == [1, 2, 3, 4]  # one record per request, however many events it makes
    lines = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    assert [list(line) for line in lines if "seq" in line] == [["seq", "prev", "request", "hash"]] * 4
    observer = ObserverInfo(name="proxy-a", site="ward-3")
    expected = [event for record in submitted for event in audit_events(record, observer=observer)]
    assert len(expected) == 1 + 3 + 2 + 2  # per-patient search events and the two Security Alerts
    assert list(read_events(log)) == expected
    assert all(record.duration_ms >= 0 for record in submitted)
    report = verify_chain(log, key=ENVIRON[KEY_ENV].encode())
    assert (report.ok, report.records) == (True, 4)


def _failing_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)


def test_a_log_that_cannot_be_written_refuses_the_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    trail = AuditTrail.from_settings(settings(tmp_path / "audit.jsonl"), ENVIRON)
    appended: list[int] = []
    trail.on_append = appended.append
    _failing_writes(monkeypatch)
    with pytest.raises(AuditUnavailableError) as refused:
        trail.submit(records()[0])
    assert refused.value.status_code == 503
    assert appended == []
    assert "the audit log could not be written" in caplog.text
    with pytest.raises(AuditUnavailableError):  # and stays refused: the writer failed closed
        trail.submit(records()[1])
    monkeypatch.undo()
    trail.close()


def test_on_failure_continue_serves_the_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trail = AuditTrail.from_settings(settings(tmp_path / "audit.jsonl", on_failure="continue"), ENVIRON)
    _failing_writes(monkeypatch)
    trail.submit(records()[0])  # logged, not raised
    monkeypatch.undo()
    trail.close()


# -- commit: the records of one turn of the event loop in one write, before any of them is answered --------


def _counting_writes(monkeypatch: pytest.MonkeyPatch, log: Path) -> list[bytes]:
    """Every ``write`` of records (not checkpoints) from now on, passed through to the real ``write``."""
    written: list[bytes] = []
    real_write = os.write

    def write(fd: int, data: Any) -> int:
        if bytes(data).startswith(b'{"seq"'):
            written.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    return written


def _logged_ids(log: Path) -> list[str]:
    return [
        line["request"]["request_id"]
        for line in map(orjson.loads, log.read_bytes().splitlines())
        if "seq" in line
    ]


def test_requests_of_one_turn_are_written_together_before_any_is_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "audit.jsonl"
    trail = AuditTrail.from_settings(settings(log), ENVIRON)
    appended: list[int] = []
    trail.on_append = appended.append
    writes = _counting_writes(monkeypatch, log)
    submitted = records()

    async def answer(record: AuditRecord) -> list[str]:
        await trail.commit(record)
        return _logged_ids(log)  # what the log holds when this request may be answered

    async def main() -> list[list[str]]:
        return await asyncio.gather(*(answer(record) for record in submitted))

    seen_when_answered = asyncio.run(main())
    ids = [record.request_id for record in submitted]
    assert seen_when_answered == [ids] * 4  # every answer waited for all four records
    assert (len(writes), appended) == (1, [4])
    asyncio.run(main())  # a later turn: a second write, chained on
    assert (len(writes), appended) == (2, [4, 8])
    monkeypatch.undo()
    trail.close()
    assert _logged_ids(log) == ids * 2
    assert verify_chain(log, key=ENVIRON[KEY_ENV].encode()).records == 8


@pytest.mark.parametrize(("on_failure", "refused"), [("refuse", True), ("continue", False)])
def test_a_failed_write_refuses_every_request_of_its_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, on_failure: str, refused: bool
) -> None:
    trail = AuditTrail.from_settings(settings(tmp_path / "audit.jsonl", on_failure=on_failure), ENVIRON)
    _failing_writes(monkeypatch)

    async def main() -> list[BaseException | None]:
        return await asyncio.gather(*(trail.commit(record) for record in records()), return_exceptions=True)

    outcomes = asyncio.run(main())
    monkeypatch.undo()
    trail.close()
    assert [isinstance(outcome, AuditUnavailableError) for outcome in outcomes] == [refused] * 4


def test_any_error_while_writing_refuses_the_turn_and_releases_every_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    trail = AuditTrail.from_settings(settings(tmp_path / "audit.jsonl", on_failure="continue"), ENVIRON)

    def broken(record: AuditRecord) -> list[Any]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(trail._alerts, "observe", broken)

    async def main() -> list[BaseException | None]:
        commits = asyncio.gather(*(trail.commit(record) for record in records()), return_exceptions=True)
        return await asyncio.wait_for(commits, timeout=10)

    outcomes = asyncio.run(main())
    trail.close()
    assert all(isinstance(outcome, AuditUnavailableError) for outcome in outcomes)  # fail closed, no hang
    assert "the audit records could not be handled" in caplog.text


def test_a_cancelled_request_leaves_the_others_of_its_turn_alone(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    trail = AuditTrail.from_settings(settings(log), ENVIRON)
    first, second, third, _ = records()

    async def main() -> list[BaseException | None]:
        tasks = [asyncio.create_task(trail.commit(record)) for record in (first, second, third)]
        await asyncio.sleep(0)  # all three wait for this turn's write
        tasks[1].cancel()  # its client went away
        return await asyncio.gather(*tasks, return_exceptions=True)

    outcomes = asyncio.run(main())
    trail.close()
    assert (outcomes[0], outcomes[2]) == (None, None)
    assert isinstance(outcomes[1], asyncio.CancelledError)
    assert _logged_ids(log) == ["r-1", "r-2", "r-3"]  # the cancelled request was handled: it is recorded


def test_closing_writes_the_records_still_waiting(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    trail = AuditTrail.from_settings(settings(log), ENVIRON)

    async def main() -> None:
        waiting = asyncio.create_task(trail.commit(records()[0]))
        await asyncio.sleep(0)
        trail.close()  # before the turn's write ran
        await waiting  # released, not left waiting

    asyncio.run(main())
    assert _logged_ids(log) == ["r-1"]
    assert verify_chain(log, key=ENVIRON[KEY_ENV].encode()).ok


# -- through the proxy's ASGI app (no upstream needed: the requests are refused before it) -----------------


def _app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv(KEY_ENV, ENVIRON[KEY_ENV])
    config = load_settings(
        None,
        environ={},
        overrides={
            "upstreams": [{"name": "default", "url": "http://127.0.0.1:9/fhir"}],
            "auth.dev_issuer.enabled": True,
            "auth.dev_issuer.key_file": str(tmp_path / "dev-key.pem"),
            "auth.dev_issuer.issuer": "http://127.0.0.1:9/_dev",
            "audit.log_file": str(tmp_path / "audit.jsonl"),
            "audit.log_key_env": KEY_ENV,
        },
    )
    return create_app(config)


def _call(app: Any, path: str, request_id: str, log: Path) -> tuple[int, list[dict[str, Any]]]:
    """GET ``path``; returns the status and the request's AuditEvents as they were in the log when the
    answer started to go out."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), (b"x-request-id", request_id.encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
    }
    seen: dict[str, Any] = {}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            seen["status"] = message["status"]
            seen["logged"] = [event for event in read_events(log) if request_id in str(event)]

    asyncio.run(app(scope, receive, send))
    return seen["status"], seen["logged"]


def test_a_denial_is_in_the_log_before_its_answer_goes_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "audit.jsonl"
    app = _app(tmp_path, monkeypatch)
    status, logged = _call(app, "/fhir/Patient/p1", "no-token-1", log)
    assert status == 401
    [event] = logged
    assert event["outcome"] == "4"
    assert {"url": "https://fhirwall.org/fhir/StructureDefinition/audit-decision", "valueCode": "deny"} in (
        event["extension"]
    )
    app.state.proxy.audit.close()


def test_the_answer_is_503_when_the_record_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "audit.jsonl"
    app = _app(tmp_path, monkeypatch)
    assert _call(app, "/fhir/Patient/p1", "before-1", log)[0] == 401
    _failing_writes(monkeypatch)
    status, logged = _call(app, "/fhir/Patient/p1", "lost-1", log)
    monkeypatch.undo()
    assert status == 503
    assert logged == []
    app.state.proxy.audit.close()
    assert verify_chain(log, key=ENVIRON[KEY_ENV].encode()).records == 1

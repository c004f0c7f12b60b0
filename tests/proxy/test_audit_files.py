"""Several audit logs read as one (one per worker): naming them (glob patterns), merging their events by
recorded time, and ``fhirwall audit verify | query | report`` and ``access-review`` over several files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy.audit.chain import AuditChainWriter
from proxy.audit.files import log_files, merged_events
from proxy.audit.query import recorded_of
from proxy.audit.trail import AuditTrail
from proxy.cli import main
from proxy.settings import AuditSettings, ConfigError
from tests.integration.test_access_review import PERIOD, POLICY, RECORDS
from tests.proxy.test_audit_chain import KEY, audit_event
from tests.proxy.test_cli_audit import run


def write_log(path: Path, events: list[tuple[int, str, str]]) -> Path:
    """A log of ``(n, patient, recorded)`` events, closed with a checkpoint."""
    with AuditChainWriter(path, key=KEY, checkpoint_every=100) as writer:
        for n, patient, recorded in events:
            writer.append(audit_event(n, patient=patient, recorded=recorded))
    return path


@pytest.fixture
def logs(tmp_path: Path) -> list[Path]:
    first = write_log(
        tmp_path / "audit.0.jsonl",
        [(1, "p1", "2024-05-01T08:00:00Z"), (3, "p2", "2024-05-01T10:00:00Z")],
    )
    second = write_log(
        tmp_path / "audit.1.jsonl",
        [(2, "p1", "2024-05-01T09:00:00Z"), (4, "p1", "2024-05-01T11:00:00Z")],
    )
    return [first, second]


def test_log_files_expands_globs_once_each(logs: list[Path], tmp_path: Path) -> None:
    pattern = tmp_path / "audit.*.jsonl"
    assert log_files([pattern]) == logs
    assert log_files([logs[1], pattern]) == [logs[1], logs[0]]


def test_log_files_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        log_files([tmp_path / "none.jsonl", tmp_path / "none.*.jsonl", tmp_path], "--log")
    assert [path for path, _ in raised.value.problems] == ["--log"] * 3
    assert "no audit log file" in raised.value.problems[0][1]


def test_merged_events_by_recorded_time(logs: list[Path]) -> None:
    events = list(merged_events(logs))
    recorded = [recorded_of(event) for event in events]
    assert len(events) == 4
    assert recorded == sorted(recorded)  # type: ignore[type-var]


def test_verify_reports_each_file(
    logs: list[Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FHIRWALL_TEST_FILES_KEY", KEY.decode())
    assert run(["audit", "verify", *map(str, logs), "--key-env", "FHIRWALL_TEST_FILES_KEY"]) == 0
    out = capsys.readouterr().out
    assert f"{logs[0]}: OK: 2 record(s)" in out
    assert f"{logs[1]}: OK: 2 record(s)" in out
    assert "2 log(s): all OK" in out


def test_verify_fails_when_one_file_is_tampered(logs: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    text = logs[1].read_text()
    logs[1].write_text(text.replace("p1", "p9", 1))
    assert run(["audit", "verify", *map(str, logs)]) == 1
    out = capsys.readouterr().out
    assert f"{logs[0]}: OK" in out
    assert f"{logs[1]}: TAMPERED OR DAMAGED" in out
    assert "2 log(s): 1 TAMPERED OR DAMAGED" in out


def test_query_merges_files(logs: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["audit", "query", str(logs[0].parent / "audit.*.jsonl"), "--format", "ndjson"]) == 0
    captured = capsys.readouterr()
    recorded = [json.loads(line)["recorded"] for line in captured.out.splitlines()]
    assert recorded == [f"2024-05-01T{hour:02d}:00:00Z" for hour in (8, 9, 10, 11)]
    assert "4 event(s)" in captured.err


def test_report_merges_files(logs: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["audit", "report", *map(str, logs), "--patient", "p1", "--format", "json"]) == 0
    (line,) = json.loads(capsys.readouterr().out)
    assert line["count"] == 3
    assert (line["first"], line["last"]) == ("2024-05-01T08:00:00Z", "2024-05-01T11:00:00Z")


def test_access_review_over_several_logs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_env = "FHIRWALL_TEST_FILES_REVIEW_KEY"
    for index in (0, 1):
        settings = AuditSettings(log_file=tmp_path / f"audit.{index}.jsonl", log_key_env=key_env)
        trail = AuditTrail.from_settings(settings, environ={key_env: "k" * 40})
        for record in RECORDS[index::2]:
            trail.submit(record)
        trail.close()
    pattern = str(tmp_path / "audit.*.jsonl")
    argv = ["access-review", "--log", pattern, "--policy", str(POLICY), *PERIOD, "--format", "json"]
    assert main(argv) == 0
    review = json.loads(capsys.readouterr().out)
    assert review["totals"] == {"events": 6, "requests": 4, "unattributed_requests": 0}

"""``fhirwall audit verify | query | report``, in-process: exit codes (0 ok, 1 tampered/unreadable, 2 usage
and configuration problems) and output."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from proxy.audit.chain import AuditChainWriter
from proxy.cli_audit import add_audit_commands
from tests.cli_runner import run_commands
from tests.proxy.test_audit_chain import KEY, audit_event

IDENTIFIED = {"system": "https://idp.example.org", "value": "nurse-7"}


def run(argv: Sequence[str]) -> int:
    """What ``proxy.cli.main`` does with these commands registered."""
    return run_commands(add_audit_commands, argv)


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "audit.log"
    with AuditChainWriter(path, key=KEY, checkpoint_every=2) as writer:
        writer.append(audit_event(1, patient="p1", recorded="2024-05-01T08:00:00Z"))
        writer.append(
            audit_event(2, patient="p1", recorded="2024-05-01T09:00:00Z", interaction="search-type")
        )
        writer.append(
            audit_event(3, patient="p2", recorded="2024-05-02T08:00:00Z", decision="deny", outcome="4")
        )
        writer.append(
            audit_event(
                4,
                patient="p1",
                user=IDENTIFIED,
                client="mobile",
                recorded="2024-05-03T08:00:00Z",
                break_glass=True,
            )
        )
    return path


@pytest.fixture(autouse=True)
def _key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIT_KEY", KEY.decode())
    monkeypatch.setenv("AUDIT_KEY_B64", base64.b64encode(KEY).decode())
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)


# -- verify ------------------------------------------------------------------------------------------------


def test_verify_ok(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["audit", "verify", str(log), "--key-env", "AUDIT_KEY"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{log}: OK: 4 record(s), 2 checkpoint(s)\n  last record: seq 4, hash ")
    assert "problem" not in out
    assert "warning" not in out


def test_verify_key_file_and_encodings(log: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY.decode() + "\n")
    assert run(["audit", "verify", str(log), "--key-file", str(key_file)]) == 0
    assert run(["audit", "verify", str(log), "--key-env", "AUDIT_KEY_B64", "--key-encoding", "base64"]) == 0


def test_verify_tampered(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = log.read_bytes().splitlines(keepends=True)
    lines[0] = lines[0].replace(b"Practitioner/123", b"Practitioner/999")
    del lines[4]  # seq 4
    log.write_bytes(b"".join(lines))
    assert run(["audit", "verify", str(log), "--key-env", "AUDIT_KEY"]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{log}: TAMPERED OR DAMAGED (2 problem(s)): 3 record(s), 2 checkpoint(s)")
    assert "  problem: line 1: hash does not match the record's content (the record was edited)\n" in out
    assert "  problem: line 5: checkpoint for seq 4 but the last record before it is seq 3" in out


def test_verify_wrong_key(
    log: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUDIT_KEY", "some-other-key-of-enough-length")
    assert run(["audit", "verify", str(log), "--key-env", "AUDIT_KEY"]) == 1
    assert "checkpoint mac is not valid" in capsys.readouterr().out


def test_verify_without_key_warns(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["audit", "verify", str(log)]) == 0
    assert "  warning: no key: the signatures of 2 checkpoint(s) were not checked" in capsys.readouterr().out


def test_verify_uncovered_tail_warns(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log.write_bytes(b"".join(log.read_bytes().splitlines(keepends=True)[:-1]))
    assert run(["audit", "verify", str(log), "--key-env", "AUDIT_KEY"]) == 0
    assert "not yet covered by a signed checkpoint" in capsys.readouterr().out


def test_verify_ed25519_public_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    private = Ed25519PrivateKey.generate()
    path = tmp_path / "audit.log"
    with AuditChainWriter(path, key=private) as writer:
        writer.append(audit_event(1))
    pem = tmp_path / "audit.pub"
    pem.write_bytes(private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    assert run(["audit", "verify", str(path), "--key-file", str(pem)]) == 0
    other = tmp_path / "other.pub"
    other.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    assert run(["audit", "verify", str(path), "--key-file", str(other)]) == 1
    assert "checkpoint signature is not valid" in capsys.readouterr().out


def test_verify_first_prev(tmp_path: Path) -> None:
    path = tmp_path / "audit-2.log"
    with AuditChainWriter(path, key=KEY, first_prev="ab" * 32) as writer:
        writer.append(audit_event(1))
    assert run(["audit", "verify", str(path), "--key-env", "AUDIT_KEY"]) == 1
    assert run(["audit", "verify", str(path), "--key-env", "AUDIT_KEY", "--first-prev", "ab" * 32]) == 0
    assert run(["audit", "verify", str(path), "--key-env", "AUDIT_KEY", "--first-prev", "any"]) == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--key-env", "NO_SUCH_KEY"], "--key-env: environment variable NO_SUCH_KEY is not set"),
        (["--key-file", "/nonexistent/key"], "--key-file: cannot read key file /nonexistent/key"),
        (["--key-env", "AUDIT_KEY", "--key-encoding", "hex"], "--key-env: key is not valid hex"),
        (["--first-prev", "xyz"], "--first-prev: expected 64 lowercase hex digits or 'any'"),
    ],
)
def test_verify_configuration_problems(
    log: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert run(["audit", "verify", str(log), *extra]) == 2
    out = capsys.readouterr().out
    assert message in out
    assert KEY.decode() not in out


def test_short_key_is_a_configuration_problem(
    log: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUDIT_KEY", "short")
    assert run(["audit", "verify", str(log), "--key-env", "AUDIT_KEY"]) == 2
    assert "shorter than 16 bytes" in capsys.readouterr().out


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for command in (["verify"], ["query"], ["report", "--patient", "p1"]):
        assert run(["audit", *command, str(tmp_path / "missing.log")]) == 2
        assert "file: no audit log file" in capsys.readouterr().out


def test_usage_errors_exit_2(log: Path) -> None:
    with pytest.raises(SystemExit) as caught:
        run(["audit", "verify", str(log), "--key-env", "A", "--key-file", "B"])
    assert caught.value.code == 2
    with pytest.raises(SystemExit) as caught:
        run(["audit", "report", str(log)])  # --patient is required
    assert caught.value.code == 2
    assert run(["audit"]) == 2


# -- query -------------------------------------------------------------------------------------------------


def test_query_table(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["audit", "query", str(log), "--patient", "p1"]) == 0
    captured = capsys.readouterr()
    rows = captured.out.splitlines()
    assert rows[0].split() == ["recorded", "user", "client", "interaction", "patients", "decision", "outcome"]
    assert rows[1].split() == [
        "2024-05-01T08:00:00Z",
        "Practitioner/123",
        "ehr-app",
        "read",
        "p1",
        "permit",
        "0",
    ]
    assert rows[3].split()[1:3] == ["https://idp.example.org|nurse-7", "mobile"]
    assert len(rows) == 4
    assert captured.err == "3 event(s)\n"


def test_query_ndjson_with_filters(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["audit", "query", str(log), "--user", "Practitioner/123", "--since", "2024-05-01T08:30:00Z"]
    assert run([*argv, "--until", "2024-05-03", "--format", "ndjson"]) == 0
    events = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [event["id"] for event in events] == [audit_event(2)["id"], audit_event(3)["id"]]

    assert run(["audit", "query", str(log), "--decision", "deny", "--format", "ndjson"]) == 0
    assert [orjson.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == [
        audit_event(3)["id"]
    ]
    assert (
        run(["audit", "query", str(log), "--client", "mobile", "--outcome", "0", "--format", "ndjson"]) == 0
    )
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_query_bad_instant(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["audit", "query", str(log), "--since", "yesterday"]) == 2
    assert "--since: expected an ISO 8601 date or instant, got 'yesterday'" in capsys.readouterr().out


def test_query_unreadable_line(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with log.open("ab") as file:
        file.write(b"garbage\n")
    assert run(["audit", "query", str(log)]) == 1
    assert "line 7: not valid JSON" in capsys.readouterr().err


# -- report ------------------------------------------------------------------------------------------------


def test_report_table(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["audit", "report", str(log), "--patient", "Patient/p1"]) == 0
    captured = capsys.readouterr()
    rows = captured.out.splitlines()
    assert rows[0].split() == [
        "user",
        "client",
        "purpose",
        "count",
        "first",
        "last",
        "interactions",
        "decisions",
        "break-glass",
    ]
    assert rows[1].split() == [
        "Practitioner/123",
        "ehr-app",
        "TREAT",
        "2",
        "2024-05-01T08:00:00Z",
        "2024-05-01T09:00:00Z",
        "read:1",
        "search-type:1",
        "permit:2",
        "0",
    ]
    assert rows[2].split()[:2] == ["https://idp.example.org|nurse-7", "mobile"]
    assert rows[2].split()[-1] == "1"
    assert "patient Patient/p1: 3 event(s) by 2 user/client/purpose group(s)" in captured.err


def test_report_json(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["audit", "report", str(log), "--patient", "p2", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {
            "user": "Practitioner/123",
            "client": "ehr-app",
            "purpose": "TREAT",
            "count": 1,
            "first": "2024-05-02T08:00:00Z",
            "last": "2024-05-02T08:00:00Z",
            "interactions": {"read": 1},
            "decisions": {"deny": 1},
            "outcomes": {"4": 1},
            "break_glass": 0,
        }
    ]

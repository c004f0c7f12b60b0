"""``fhirwall access-review`` end to end: requests recorded by the audit trail into a real hash-chained log,
reviewed against the example hospital policy, as JSON and text; exit code 2 for a bad log or policy."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.audit.record import AuditRecord, Decision
from proxy.audit.trail import AuditTrail
from proxy.cli import main
from proxy.settings import AuditSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
POLICY = REPO_ROOT / "examples" / "access" / "hospital-policy.yaml"
KEY_ENV = "FHIRWALL_TEST_REVIEW_KEY"
START = datetime(2024, 1, 1, tzinfo=UTC)
END = datetime(2024, 4, 1, tzinfo=UTC)
PERIOD = ["--from", "2024-01-01", "--to", "2024-04-01"]


def _record(request_id: str, day: int, **changes: Any) -> AuditRecord:
    """A permitted read of an Observation by clinician Practitioner/doc-1 through the EHR."""
    fields: dict[str, Any] = {
        "method": "GET",
        "route": "/Observation/{id}",
        "interaction": "read",
        "resource_type": "Observation",
        "resource_id": "o1",
        "status": 200,
        "decision": Decision.PERMIT,
        "client_id": "ehr",
        "subject": "doc-1",
        "fhir_user": "Practitioner/doc-1",
        "roles": ("clinician",),
        "patients": {"p1"},
        "resources": ["Observation/o1"],
    }
    started = (START + timedelta(days=day)).timestamp()
    return AuditRecord(request_id=request_id, started=started, **(fields | changes))


RECORDS = [
    _record("r1", 5),
    _record(
        "r2",
        6,
        route="/Observation",
        interaction="search-type",
        resource_id=None,
        query="code=1234",
        patients={"p1", "p2", "p3"},
        resources=[],
    ),
    _record(
        "r3",
        7,
        method="DELETE",
        interaction="delete",
        decision=Decision.DENY,
        status=403,
        error_type="PolicyDeniedError",
        reasons=["forbidden"],
    ),
    _record("r4", 8, subject="lab-1", fhir_user="Practitioner/lab-1", roles=("lab-technician",)),
    _record("r5", 200),  # after the period
]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(audit log, policy): the records written by the trail, the hospital policy with listed users."""
    folder = tmp_path_factory.mktemp("review")
    log = folder / "audit.jsonl"
    trail = AuditTrail.from_settings(
        AuditSettings(log_file=log, log_key_env=KEY_ENV), environ={KEY_ENV: "k" * 40}
    )
    for record in RECORDS:
        trail.submit(record)
    trail.close()
    document = yaml.safe_load(POLICY.read_text(encoding="utf-8"))
    document["assignments"]["users"] = {"Practitioner/left-1": ["records-officer"]}
    policy = folder / "policy.yaml"
    policy.write_text(yaml.safe_dump(document), encoding="utf-8")
    return log, policy


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["access-review", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_json_review_of_a_real_log(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    log, policy = files
    code, out, _ = _run(capsys, "--log", str(log), "--policy", str(policy), *PERIOD, "--format", "json")
    assert code == 0
    review = json.loads(out)
    assert review["totals"] == {"events": 6, "requests": 4, "unattributed_requests": 0}
    roles = {role["name"]: role for role in review["roles"]}
    assert set(roles) == {
        "clinician",
        "emergency-physician",
        "lab-technician",
        "records-officer",
        "privacy-officer",
        "hr-admin",
    }
    clinician = roles["clinician"]
    assert clinician["holders"] == ["Practitioner/doc-1"]
    assert {(use["resource"], use["operation"], use["requests"]) for use in clinician["used"]} == {
        ("Observation", "read", 1),
        ("Observation", "search", 1),
    }
    unused = {(grant["resource"], grant["operation"]) for grant in clinician["unused"]}
    assert ("*", "history") in unused
    assert ("Patient", "$everything") in unused
    assert ("*", "read") not in unused
    assert roles["records-officer"]["holders"] == []
    doc = next(user for user in review["users"] if user["id"] == "Practitioner/doc-1")
    assert doc["requests"] == {"total": 3, "permit": 2, "deny": 1}
    assert doc["clients"] == ["ehr"]
    assert doc["denied"] == {"PolicyDeniedError: forbidden": 1}
    assert review["dormant"] == [
        {
            "id": "Practitioner/left-1",
            "kind": "user",
            "listed_in_policy": True,
            "roles": ["records-officer"],
            "last_activity": None,
        },
        {
            "id": "hr-system",
            "kind": "client",
            "listed_in_policy": True,
            "roles": ["hr-admin"],
            "last_activity": None,
        },
    ]


def test_the_text_review_written_to_a_file(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, policy = files
    output = tmp_path / "review.txt"
    code, out, err = _run(
        capsys, "--log", str(log), "--policy", str(policy), *PERIOD, "--output", str(output)
    )
    assert (code, out) == (0, "")
    assert str(output) in err
    text = output.read_text(encoding="utf-8")
    assert text.startswith("ACCESS REVIEW 2024-01-01T00:00:00Z to 2024-04-01T00:00:00Z")
    for section in ("\nROLES\n", "\nUSERS\n", "\nDORMANT ACCOUNTS", "\nDENIED ATTEMPTS\n"):
        assert section in text
    assert (
        "Practitioner/left-1 (user, listed in the policy; roles records-officer): last activity never" in text
    )


def test_the_default_period_ends_now(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    log, policy = files
    code, out, _ = _run(capsys, "--log", str(log), "--policy", str(policy), "--format", "json")
    assert code == 0
    review = json.loads(out)
    end = datetime.fromisoformat(review["period"]["end"])
    assert abs(end - datetime.now(UTC)) < timedelta(minutes=5)
    assert datetime.fromisoformat(review["period"]["start"]) == end - timedelta(days=90)
    assert review["totals"]["requests"] == 0  # the records are from 2024


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--log", "missing.jsonl"], "no audit log file"),
        (["--policy", "missing.yaml"], "cannot read"),
        (["--from", "yesterday"], "expected an ISO 8601 date"),
        (["--from", "2024-05-01"], "must start before it ends"),
        (["--dormant-days", "0"], "positive number of days"),
    ],
)
def test_bad_input_exits_2_with_a_message(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    log, policy = files
    code, _, err = _run(capsys, "--log", str(log), "--policy", str(policy), *PERIOD, *argv)
    assert code == 2
    assert message in err


def test_an_invalid_policy_or_log_exits_2(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, policy = files
    bad_policy = tmp_path / "policy.yaml"
    bad_policy.write_text(
        "roles:\n  clinician:\n    permissions: [{resources: [Nope], operations: [read]}]\n"
    )
    code, _, err = _run(capsys, "--log", str(log), "--policy", str(bad_policy), *PERIOD)
    assert code == 2
    assert "unknown resource types" in err
    bad_log = tmp_path / "audit.jsonl"
    bad_log.write_text("not json\n")
    code, _, err = _run(capsys, "--log", str(bad_log), "--policy", str(policy), *PERIOD)
    assert code == 2
    assert "line 1" in err

"""One audit log per worker: slots claimed by ``flock`` (first free, reused once released), the trail and
delivery of a worker on its slot's file, and the settings that allow it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.audit.chain import AuditLogError, verify_chain
from proxy.audit.delivery import AuditDelivery
from proxy.audit.slots import claim_slot, claimed_log, slot_lock_path, slot_log_path
from proxy.audit.trail import AuditTrail
from proxy.settings import AuditSettings, ConfigError, Settings
from tests.proxy.test_audit_trail import records

KEY_ENV = "FHIRWALL_TEST_SLOTS_KEY"
ENVIRON = {KEY_ENV: "slots-test-key-0123456789"}


def audit_settings(log: Path, workers: int = 2, **audit: Any) -> AuditSettings:
    """The audit settings of a proxy running ``workers`` worker processes."""
    return Settings.model_validate(
        {
            "server": {"workers": workers},
            "upstreams": [{"name": "default", "url": "http://upstream.example/fhir"}],
            "audit": {"log_file": str(log), "log_key_env": KEY_ENV, "fsync": "never", **audit},
        }
    ).audit


@pytest.fixture
def trails() -> Iterator[list[AuditTrail]]:
    opened: list[AuditTrail] = []
    yield opened
    for trail in opened:
        trail.close()


def test_slot_names(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    assert slot_log_path(log, 0) == tmp_path / "audit.0.jsonl"
    assert slot_log_path(log, 12) == tmp_path / "audit.12.jsonl"
    assert slot_lock_path(log, 1) == tmp_path / "audit.jsonl.slot-1.lock"


def test_two_claimants_get_different_slots(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    first, second = claim_slot(log), claim_slot(log)
    try:
        assert (first.index, second.index) == (0, 1)
        assert (first.path.name, second.path.name) == ("audit.0.jsonl", "audit.1.jsonl")
    finally:
        first.release()
        second.release()


def test_a_released_slot_is_reused(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    first, second = claim_slot(log), claim_slot(log)
    first.release()
    first.release()  # idempotent
    again = claim_slot(log)
    try:
        assert again.index == 0
        assert slot_lock_path(log, 0).exists()  # lock files stay: an unlocked one is a free slot
    finally:
        again.release()
        second.release()


def test_no_free_slot(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    held = [claim_slot(log, limit=2) for _ in range(2)]
    try:
        with pytest.raises(AuditLogError, match="all 2 per-worker slots"):
            claim_slot(log, limit=2)
    finally:
        for slot in held:
            slot.release()


def test_claimed_log_names_this_process_slot(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    assert claimed_log(log) == log
    slot = claim_slot(log)
    assert claimed_log(log) == tmp_path / "audit.0.jsonl"
    slot.release()
    assert claimed_log(log) == log


def test_one_worker_writes_the_configured_file(tmp_path: Path, trails: list[AuditTrail]) -> None:
    log = tmp_path / "audit.jsonl"
    trails.append(AuditTrail.from_settings(audit_settings(log, workers=1), ENVIRON))
    assert trails[0].log_path == log
    assert not list(tmp_path.glob("*.lock"))


def test_each_worker_writes_its_own_chain(tmp_path: Path, trails: list[AuditTrail]) -> None:
    log = tmp_path / "audit.jsonl"
    settings = audit_settings(log)
    trails += [AuditTrail.from_settings(settings, ENVIRON) for _ in range(2)]
    assert [trail.log_path for trail in trails] == [tmp_path / "audit.0.jsonl", tmp_path / "audit.1.jsonl"]
    first, second, *_ = records()
    trails[0].submit(first)
    trails[1].submit(second)
    for trail in trails:
        trail.close()
    assert not log.exists()
    for index, record in enumerate((first, second)):
        path = slot_log_path(log, index)
        assert record.request_id in path.read_text()
        report = verify_chain(path, key=ENVIRON[KEY_ENV].encode())
        assert report.ok
        assert report.records == 1
        assert not report.warnings


def test_a_restarted_worker_continues_its_slot_chain(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    settings = audit_settings(log)
    for record in records()[:2]:
        trail = AuditTrail.from_settings(settings, ENVIRON)
        trail.submit(record)
        trail.close()
    report = verify_chain(tmp_path / "audit.0.jsonl", key=ENVIRON[KEY_ENV].encode())
    assert report.ok
    assert report.records == 2
    assert report.last_seq == 2
    assert not (tmp_path / "audit.1.jsonl").exists()


def test_a_slot_whose_log_cannot_be_opened_is_released(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    (tmp_path / "audit.0.jsonl").write_text("not a record\n")
    with pytest.raises(ConfigError, match="cannot open the audit log"):
        AuditTrail.from_settings(audit_settings(log), ENVIRON)
    assert claimed_log(log) == log
    slot = claim_slot(log)
    assert slot.index == 0
    slot.release()


def test_delivery_follows_the_worker_log(tmp_path: Path, trails: list[AuditTrail]) -> None:
    log = tmp_path / "audit.jsonl"
    delivery = {"target": "file", "file": str(tmp_path / "delivered.jsonl")}
    settings = audit_settings(log, delivery=delivery)
    trails += [AuditTrail.from_settings(settings, ENVIRON) for _ in range(2)]
    shipper = AuditDelivery(log, settings.delivery)
    assert shipper.log_path == tmp_path / "audit.1.jsonl"  # the last slot claimed in this process
    assert shipper.cursor_path == tmp_path / "audit.1.jsonl.cursor"
    assert shipper.dead_letter_path == tmp_path / "audit.1.jsonl.dead-letter.jsonl"


def test_several_workers_with_an_audit_log_are_allowed(tmp_path: Path) -> None:
    settings = audit_settings(tmp_path / "audit.jsonl", workers=3)
    assert settings.workers == 3
    assert AuditSettings().workers == 1


@pytest.mark.parametrize("name", ["cursor_file", "dead_letter_file"])
def test_explicit_delivery_files_need_one_worker(tmp_path: Path, name: str) -> None:
    delivery = {"target": "file", "file": str(tmp_path / "out.jsonl"), name: str(tmp_path / "x")}
    assert audit_settings(tmp_path / "audit.jsonl", workers=1, delivery=delivery).workers == 1
    with pytest.raises(ValueError, match=f"audit.delivery.{name} name one file"):
        audit_settings(tmp_path / "audit.jsonl", workers=2, delivery=delivery)

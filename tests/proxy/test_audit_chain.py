"""The hash-chained audit log: line format, round trip, tamper detection, reopening, concurrency.

Event records hold hand-built AuditEvents in the proxy's BALP shape (``audit_event``, also used by the query
and CLI tests); request records (what the proxy writes) hold the entries of ``AuditRecord``s. Tampering is
done the way an attacker with write access to the file would: editing, deleting, swapping lines, recomputing
hashes, forging checkpoints with a key of their own.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import io
import os
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proxy.audit.balp import ObserverInfo, audit_events
from proxy.audit.chain import (
    CHECKPOINT_CONTEXT,
    GENESIS,
    AuditChainWriter,
    AuditLogError,
    _last_checkpoint_offset,
    canonical,
    read_events,
    record_hash,
    record_kind,
    verify_chain,
)
from proxy.audit.entry import request_entry
from proxy.audit.record import AuditRecord, Decision

KEY = b"test-audit-key-0123456789abcdef"
OTHER_KEY = b"attacker-key-0123456789abcdefgh"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
EXT = "https://fhirwall.org/fhir/StructureDefinition/"


def audit_event(
    n: int,
    *,
    patient: str | None = "p1",
    user: str | dict[str, str] | None = "Practitioner/123",
    client: str | None = "ehr-app",
    recorded: str = "2024-05-01T10:00:00Z",
    interaction: str = "read",
    decision: str = "permit",
    outcome: str = "0",
    purpose: str | None = "TREAT",
    break_glass: bool = False,
    resource: str | None = None,
) -> dict[str, Any]:
    """An AuditEvent in the shape the proxy's BALP builder writes."""
    agents: list[dict[str, Any]] = []
    if user is not None:
        who = {"reference": user} if isinstance(user, str) else {"identifier": user}
        agent: dict[str, Any] = {
            "type": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}
                ]
            },
            "who": who,
            "requestor": True,
        }
        if purpose is not None:
            agent["purposeOfUse"] = [
                {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": purpose}
                    ]
                }
            ]
        agents.append(agent)
    if client is not None:
        agents.append(
            {
                "type": {"coding": [{"system": DCM, "code": "110150", "display": "Application"}]},
                "who": {"identifier": {"system": "https://fhirwall.org/client_id", "value": client}},
                "requestor": False,
            }
        )
    agents.append(
        {
            "type": {"coding": [{"system": DCM, "code": "110153"}]},
            "who": {"display": "fhirwall"},
            "requestor": False,
        }
    )
    entities: list[dict[str, Any]] = []
    if patient is not None:
        entities.append(
            {
                "what": {"reference": f"Patient/{patient}"},
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"},
            }
        )
    if resource is not None:
        entities.append(
            {
                "what": {"reference": resource},
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "4"},
            }
        )
    return {
        "resourceType": "AuditEvent",
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"event-{n}")),
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": interaction}],
        "action": "R" if interaction == "read" else "E",
        "recorded": recorded,
        "outcome": outcome,
        "agent": agents,
        "source": {"observer": {"display": "fhirwall"}},
        "entity": entities,
        "extension": [
            {"url": EXT + "audit-decision", "valueCode": decision},
            {"url": EXT + "audit-reason", "valueString": f"decided by rule {n}"},
            {"url": EXT + "audit-break-glass", "valueBoolean": break_glass},
        ],
    }


def write_log(
    path: Path, count: int, *, every: int = 3, key: bytes = KEY, close: bool = True
) -> AuditChainWriter:
    writer = AuditChainWriter(path, key=key, checkpoint_every=every, fsync="never")
    for n in range(1, count + 1):
        writer.append(audit_event(n))
    if close:
        writer.close()
    return writer


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def parsed(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in lines_of(path)]


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def dump(item: dict[str, Any]) -> bytes:
    return orjson.dumps(item) + b"\n"


def rechain(items: list[dict[str, Any]], *, checkpoints: str | bytes = "keep") -> list[bytes]:
    """Recompute every prev/hash (what an attacker with write access can do). ``checkpoints``: ``keep``
    them as they were, ``move`` them to the new hashes (old signatures), or a key to re-sign them with."""
    out, prev, seq = [], GENESIS, 0
    for item in items:
        if "checkpoint" in item:
            if checkpoints != "keep":
                item = {**item, "checkpoint": seq, "hash": prev}
            if isinstance(checkpoints, bytes):
                payload = CHECKPOINT_CONTEXT + canonical({"checkpoint": seq, "hash": prev, "at": item["at"]})
                item["mac"] = hmac.new(checkpoints, payload, hashlib.sha256).hexdigest()
        else:
            seq += 1
            kind = record_kind(item)
            assert kind is not None
            digest = record_hash(seq, prev, canonical(item[kind]), kind)
            item = {"seq": seq, "prev": prev, kind: item[kind], "hash": digest}
            prev = digest
        out.append(dump(item))
    return out


def problems_text(path: Path, key: bytes | None = KEY) -> str:
    report = verify_chain(path, key=key)
    assert not report.ok
    return "\n".join(report.problems)


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "audit.log"


# -- format and round trip ---------------------------------------------------------------------------------


def test_line_format_and_round_trip(log: Path) -> None:
    clock = iter([datetime(2024, 5, 1, 12, 0, tzinfo=UTC), datetime(2024, 5, 1, 13, 0, tzinfo=UTC)])
    writer = AuditChainWriter(log, key=KEY, checkpoint_every=3, fsync="never", clock=lambda: next(clock))
    events = [audit_event(n, patient=f"p{n}") for n in range(1, 6)]
    assert [writer.append(event) for event in events] == [1, 2, 3, 4, 5]
    writer.close()
    writer.close()  # idempotent

    items = parsed(log)
    assert ["seq" in item for item in items] == [True, True, True, False, True, True, False]
    prev = GENESIS
    for item, event in zip([item for item in items if "seq" in item], events, strict=True):
        assert list(item) == ["seq", "prev", "event", "hash"]
        assert item["prev"] == prev
        body = orjson.dumps(event, option=orjson.OPT_SORT_KEYS)
        assert item["hash"] == hashlib.sha256(f"{item['seq']}|{prev}|".encode() + body).hexdigest()
        assert body in log.read_bytes()  # the event is stored as canonical JSON
        prev = item["hash"]
    checkpoint = items[3]
    assert list(checkpoint) == ["checkpoint", "hash", "at", "mac"]
    assert checkpoint["checkpoint"] == 3
    assert checkpoint["hash"] == items[2]["hash"]
    assert checkpoint["at"] == "2024-05-01T12:00:00.000Z"
    payload = CHECKPOINT_CONTEXT + canonical(
        {"checkpoint": 3, "hash": items[2]["hash"], "at": checkpoint["at"]}
    )
    assert checkpoint["mac"] == hmac.new(KEY, payload, hashlib.sha256).hexdigest()
    assert items[6]["checkpoint"] == 5  # written by close()

    assert list(read_events(log)) == events
    report = verify_chain(log, key=KEY)
    assert report.ok
    assert report.problems == report.warnings == []
    assert (report.records, report.checkpoints, report.last_seq, report.last_hash) == (
        5,
        2,
        5,
        items[5]["hash"],
    )


def test_log_file_is_private(log: Path) -> None:
    write_log(log, 1)
    assert log.stat().st_mode & 0o077 == 0


def test_context_manager_and_closed_writer(log: Path) -> None:
    with AuditChainWriter(log, key=KEY) as writer:
        writer.append(audit_event(1))
        writer.sync()
        writer.checkpoint()
        writer.checkpoint()  # nothing new to cover: no second checkpoint
    assert sum("checkpoint" in item for item in parsed(log)) == 1
    with pytest.raises(AuditLogError, match="closed"):
        writer.append(audit_event(2))


@pytest.mark.parametrize(("fsync", "interval"), [("always", 1.0), ("interval", 0.0), ("interval", 60.0)])
def test_fsync_modes(log: Path, fsync: Any, interval: float) -> None:
    with AuditChainWriter(log, key=KEY, fsync=fsync, fsync_interval=interval) as writer:
        for n in range(3):
            writer.append(audit_event(n))
    assert verify_chain(log, key=KEY).ok


def test_fsync_modes_sync_where_they_say(log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(threading.current_thread().name)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with AuditChainWriter(log, key=KEY, fsync="always") as writer:
        writer.append(audit_event(1))
        assert synced == ["MainThread"]  # before append returned, in the caller's thread
    synced.clear()
    with AuditChainWriter(log, key=KEY, fsync="interval", fsync_interval=0.0) as writer:
        writer.append(audit_event(2))
        writer.append(audit_event(3))
        deadline = time.monotonic() + 5
        while "fhirwall-audit-fsync" not in synced and time.monotonic() < deadline:
            time.sleep(0.01)
    assert "fhirwall-audit-fsync" in synced  # appending did not wait for the disk
    assert synced[-1] == "MainThread"  # close() syncs once the background syncer is done
    synced.clear()
    with AuditChainWriter(log, key=KEY, fsync="interval", fsync_interval=3600.0) as writer:
        writer.append(audit_event(4))
        assert synced == []
    assert synced == ["MainThread"]
    assert verify_chain(log, key=KEY).records == 4


def test_a_failed_background_fsync_stops_the_writer(log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failed = threading.Event()

    def broken(fd: int) -> None:
        failed.set()
        raise OSError(errno.EIO, "Input/output error")

    writer = AuditChainWriter(log, key=KEY, fsync="interval", fsync_interval=0.0)
    monkeypatch.setattr(os, "fsync", broken)
    writer.append(audit_event(1))  # handed to the OS; the sync runs behind it
    assert failed.wait(5)
    refused: AuditLogError | None = None
    deadline = time.monotonic() + 5
    while refused is None and time.monotonic() < deadline:  # the next append after the failure refuses
        try:
            writer.append(audit_event(2))
        except AuditLogError as exc:
            refused = exc
        time.sleep(0.01)
    assert refused is not None
    assert "failed earlier" in str(refused)
    assert "fsync: Input/output error" in str(refused)
    writer.close()
    monkeypatch.undo()
    assert verify_chain(log, key=KEY).ok  # what was written before the failure stays a valid chain


def test_a_failed_write_stops_the_writer(log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = AuditChainWriter(log, key=KEY)
    writer.append(audit_event(1))

    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(AuditLogError, match=r"cannot write the audit log .*No space left"):
        writer.append(audit_event(2))
    monkeypatch.undo()
    with pytest.raises(AuditLogError, match="failed earlier"):
        writer.append(audit_event(3))
    writer.close()  # no checkpoint after a failure: the file ends as it was
    report = verify_chain(log, key=KEY)
    assert report.ok
    assert report.records == 1
    assert report.checkpoints == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"key": b"short"}, "at least 16 bytes"),
        ({"key": KEY, "checkpoint_every": 0}, "checkpoint_every"),
        ({"key": KEY, "first_prev": "abc"}, "first_prev"),
        ({"key": KEY, "fsync": "sometimes"}, "fsync"),
    ],
)
def test_bad_arguments(log: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AuditChainWriter(log, **kwargs)


def test_unserializable_event_writes_nothing(log: Path) -> None:
    with AuditChainWriter(log, key=KEY) as writer:
        with pytest.raises(TypeError):
            writer.append({"bad": object()})
        writer.append(audit_event(1))
    assert verify_chain(log, key=KEY).ok


# -- tamper detection --------------------------------------------------------------------------------------


def test_edited_record(log: Path) -> None:
    write_log(log, 5)
    lines = lines_of(log)
    lines[1] = lines[1].replace(b"Practitioner/123", b"Practitioner/999")
    write_lines(log, lines)
    problems = problems_text(log)
    assert problems.startswith("line 2: hash does not match the record's content (the record was edited)")
    assert len(verify_chain(log, key=KEY).problems) == 1


def test_edited_record_with_recomputed_chain_is_caught_by_the_checkpoints(log: Path) -> None:
    write_log(log, 5)
    items = parsed(log)
    items[1]["event"]["outcome"] = "8"
    write_lines(log, rechain(items))  # every record hash consistent again, checkpoints untouched
    assert verify_chain(log, key=KEY).problems == [
        "line 4: checkpoint hash is not the hash of record seq 3 (records before it were changed)",
        "line 7: checkpoint hash is not the hash of record seq 5 (records before it were changed)",
    ]


def test_only_the_key_catches_a_rewritten_log(log: Path) -> None:
    write_log(log, 5)
    items = parsed(log)
    items[1]["event"]["outcome"] = "8"
    write_lines(log, rechain(items, checkpoints="move"))
    assert verify_chain(log, key=None).ok  # the chain alone is consistent again
    assert problems_text(log).startswith("line 4: checkpoint mac is not valid")


def test_deleted_record(log: Path) -> None:
    write_log(log, 5)
    lines = lines_of(log)
    del lines[1]  # seq 2
    write_lines(log, lines)
    problems = problems_text(log)
    assert problems.startswith("line 2: seq 3 where 2 was expected")
    assert "prev does not match the previous record's hash" in problems


def test_deleted_first_record(log: Path) -> None:
    write_log(log, 5)
    write_lines(log, lines_of(log)[1:])
    problems = problems_text(log)
    assert problems.startswith("line 1: the log starts at seq 2, not 1")
    assert "prev is not the start of the chain" in problems


def test_swapped_records(log: Path) -> None:
    write_log(log, 5)
    lines = lines_of(log)
    lines[0], lines[1] = lines[1], lines[0]
    write_lines(log, lines)
    problems = verify_chain(log, key=KEY).problems
    assert problems[0].startswith("line 1: the log starts at seq 2")
    assert problems[1].startswith("line 2: seq 1 where 3 was expected")
    assert problems[2].startswith("line 3: seq 3 where 2 was expected")


def test_edited_checkpoint(log: Path) -> None:
    write_log(log, 5)
    items = parsed(log)
    items[3]["at"] = "2020-01-01T00:00:00.000Z"
    lines = lines_of(log)
    lines[3] = dump(items[3])
    write_lines(log, lines)
    assert problems_text(log) == (
        "line 4: checkpoint mac is not valid (the checkpoint was edited or forged, or this is not its key)"
    )


def test_forged_checkpoints_with_another_key(log: Path) -> None:
    write_log(log, 5)
    items = parsed(log)
    items[0]["event"]["agent"][0]["who"]["reference"] = "Practitioner/innocent"
    write_lines(log, rechain(items, checkpoints=OTHER_KEY))  # a perfect forgery, except for the key
    report = verify_chain(log, key=KEY)
    assert not report.ok
    assert [problem[:30] for problem in report.problems] == [
        "line 4: checkpoint mac is not ",
        "line 7: checkpoint mac is not ",
    ]
    assert verify_chain(log, key=OTHER_KEY).ok  # it verifies under the forger's own key only


def test_wrong_key(log: Path) -> None:
    write_log(log, 2)
    assert "checkpoint mac is not valid" in problems_text(log, key=OTHER_KEY)


def test_truncated_last_line(log: Path) -> None:
    write_log(log, 4, every=100)
    data = log.read_bytes()
    log.write_bytes(data[:-40])  # cut inside the closing checkpoint
    problems = problems_text(log)
    assert problems.startswith("line 5: truncated last line (")
    assert [event["id"] for event in read_events(log)] == [audit_event(n)["id"] for n in range(1, 5)]


def test_garbage_and_blank_lines(log: Path) -> None:
    write_log(log, 2, every=100)
    lines = lines_of(log)
    write_lines(log, [lines[0], b"\n", b"{oops\n", b'{"hello": 1}\n', *lines[1:]])
    problems = verify_chain(log, key=KEY).problems
    assert problems == [
        "line 2: empty line",
        "line 3: not valid JSON",
        "line 4: neither an audit record nor a checkpoint",
    ]
    with pytest.raises(AuditLogError, match="line 2: not valid JSON"):
        list(read_events(log))


def test_records_after_the_last_checkpoint_are_a_warning(log: Path) -> None:
    write_log(log, 5, every=3)
    write_lines(log, lines_of(log)[:-1])  # drop the closing checkpoint: like a crash after seq 5
    report = verify_chain(log, key=KEY)
    assert report.ok
    assert report.warnings == [
        "lines 5-6: 2 record(s) (seq 4-5) not yet covered by a signed checkpoint "
        "(a crash since the last checkpoint, or records changed or appended after it, look the same)"
    ]
    strict = verify_chain(log, key=KEY, max_uncovered=1)
    assert not strict.ok
    assert "a checkpoint is missing" in strict.problems[0]
    assert verify_chain(log, key=KEY, max_uncovered=3).ok


def test_no_key_checks_the_chain_and_says_so(log: Path) -> None:
    write_log(log, 4)
    report = verify_chain(log, key=None)
    assert report.ok
    assert "signatures of 2 checkpoint(s) were not checked" in report.warnings[0]


def test_empty_log(log: Path) -> None:
    log.touch()
    report = verify_chain(log, key=KEY)
    assert report.ok
    assert report.records == 0
    assert report.warnings == ["the log holds no records"]


# -- continuing a chain ------------------------------------------------------------------------------------


def test_reopening_continues_the_chain(log: Path) -> None:
    write_log(log, 4, every=3)  # ends with a checkpoint
    writer = AuditChainWriter(log, key=KEY, checkpoint_every=3)
    assert writer.seq == 4
    assert writer.append(audit_event(5)) == 5
    writer.close()
    report = verify_chain(log, key=KEY)
    assert report.ok
    assert report.records == 5
    assert report.warnings == []
    assert [item["seq"] for item in parsed(log) if "seq" in item] == [1, 2, 3, 4, 5]


def test_reopening_after_a_crash(log: Path) -> None:
    write_log(log, 5, every=3)
    write_lines(log, lines_of(log)[:-1])  # the closing checkpoint never made it
    writer = AuditChainWriter(log, key=KEY, checkpoint_every=3)
    assert writer.seq == 5
    writer.append(audit_event(6))  # seq 4-6 are now 3 uncovered: a checkpoint follows
    assert "checkpoint" in parsed(log)[-1]
    writer.close()
    assert verify_chain(log, key=KEY).ok


def test_reopening_a_log_without_checkpoints(log: Path) -> None:
    write_log(log, 2, every=100)
    write_lines(log, lines_of(log)[:-1])
    with AuditChainWriter(log, key=KEY) as writer:
        assert writer.seq == 2
        writer.append(audit_event(3))
    assert verify_chain(log, key=KEY).ok


@pytest.mark.parametrize("damage", ["edit", "truncate", "wrong-key", "forged-checkpoint"])
def test_appending_to_a_damaged_log_is_refused(log: Path, damage: str) -> None:
    write_log(log, 5, every=3)
    lines = lines_of(log)
    key = KEY
    if damage == "edit":  # a crash left seq 4-5 after the last checkpoint; then seq 4 was edited
        lines = lines[:-1]
        lines[4] = lines[4].replace(b"decided by rule", b"decided by a rule")
    elif damage == "truncate":
        lines[-1] = lines[-1][:20]
    elif damage == "wrong-key":
        key = OTHER_KEY
    else:
        lines = rechain([orjson.loads(line) for line in lines], checkpoints=OTHER_KEY)
    write_lines(log, lines)
    before = log.read_bytes()
    with pytest.raises(AuditLogError, match="refusing to append") as caught:
        AuditChainWriter(log, key=key)
    assert log.read_bytes() == before
    message = str(caught.value)
    assert "fhirwall audit verify" in message
    expected = {"edit": "line 5: hash does not match", "truncate": "line 7: truncated last line"}
    assert expected.get(damage, "line 7: checkpoint mac is not valid") in message


@pytest.mark.parametrize("block", [1, 2, 7, 14, 15, 16, 64, 1 << 16])
def test_finding_the_last_checkpoint_backwards(block: int) -> None:
    lines = [b'{"seq":1}\n', b'{"checkpoint":1}\n', b'{"seq":2}\n', b'{"checkpoint":2}\n', b'{"seq":3}\n']
    for count in range(len(lines) + 1):
        data = b"".join(lines[:count])
        starts = [
            len(b"".join(lines[:index])) for index in range(count) if lines[index].startswith(b'{"check')
        ]
        assert _last_checkpoint_offset(io.BytesIO(data), len(data), block) == (starts[-1] if starts else 0)
    data = b'{"checkpoint":0}\n{"seq":1}\n'
    assert _last_checkpoint_offset(io.BytesIO(data), len(data), block) == 0


def test_reopening_far_from_the_last_checkpoint(log: Path) -> None:
    write_log(log, 260, every=100)
    write_lines(log, lines_of(log)[:-1])  # 60 records (> 64 KiB) after the last checkpoint
    assert log.stat().st_size - log.read_bytes().rindex(b'{"checkpoint"') > 1 << 16
    with AuditChainWriter(log, key=KEY, checkpoint_every=100) as writer:
        assert writer.seq == 260
        writer.append(audit_event(261))
    assert verify_chain(log, key=KEY).ok


def test_one_writer_per_file(log: Path) -> None:
    with AuditChainWriter(log, key=KEY), pytest.raises(AuditLogError, match="another writer"):
        AuditChainWriter(log, key=KEY)
    AuditChainWriter(log, key=KEY).close()  # the lock went with the first writer


def test_first_prev_links_a_new_file_to_the_previous_one(tmp_path: Path) -> None:
    first = tmp_path / "audit-1.log"
    second = tmp_path / "audit-2.log"
    last_hash = write_log(first, 3).last_hash
    assert last_hash == verify_chain(first, key=KEY).last_hash
    with AuditChainWriter(second, key=KEY, first_prev=last_hash) as writer:
        writer.append(audit_event(4))
    assert parsed(second)[0]["prev"] == last_hash
    assert verify_chain(second, key=KEY, first_prev=last_hash).ok
    assert "prev is not the start of the chain" in problems_text(second)
    anything = verify_chain(second, key=KEY, first_prev=None)
    assert anything.ok
    assert anything.warnings == [f"the chain continues an earlier file (first prev {last_hash})"]
    with AuditChainWriter(second, key=KEY) as writer:  # reopening: first_prev only matters for a new file
        writer.append(audit_event(5))
    assert verify_chain(second, key=KEY, first_prev=last_hash).ok


def test_ed25519_checkpoints(log: Path) -> None:
    private = Ed25519PrivateKey.generate()
    with AuditChainWriter(log, key=private, checkpoint_every=2) as writer:
        for n in range(3):
            writer.append(audit_event(n))
    checkpoint = parsed(log)[2]
    assert list(checkpoint) == ["checkpoint", "hash", "at", "sig"]
    assert verify_chain(log, key=private.public_key()).ok
    assert "Ed25519 but an HMAC key was given" in problems_text(log, key=KEY)
    other = verify_chain(log, key=Ed25519PrivateKey.generate().public_key())
    assert "checkpoint signature is not valid" in other.problems[0]
    with AuditChainWriter(log, key=private) as writer:  # reopening checks the signature with the public half
        writer.append(audit_event(9))
    with pytest.raises(AuditLogError, match="HMAC key was given"):
        AuditChainWriter(log, key=KEY)


# -- concurrency -------------------------------------------------------------------------------------------


def test_threads_appending_keep_the_chain(log: Path) -> None:
    threads, per_thread = 8, 150
    writer = AuditChainWriter(log, key=KEY, checkpoint_every=50, fsync="never")
    start = threading.Barrier(threads)

    def work(worker: int) -> None:
        start.wait()
        for n in range(per_thread):
            writer.append(audit_event(worker * 1000 + n))

    pool = [threading.Thread(target=work, args=(worker,)) for worker in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    writer.close()
    report = verify_chain(log, key=KEY)
    assert report.ok
    assert report.warnings == []
    assert report.records == threads * per_thread
    assert report.checkpoints == threads * per_thread // 50
    ids = {event["id"] for event in read_events(log)}
    assert ids == {audit_event(w * 1000 + n)["id"] for w in range(threads) for n in range(per_thread)}


def test_read_events_skips_a_line_still_being_written(log: Path) -> None:
    write_log(log, 2)
    with log.open("ab") as file:
        file.write(b'{"seq":3,"prev":"')
    assert len(list(read_events(log))) == 2


# -- request records ---------------------------------------------------------------------------------------

OBSERVER = ObserverInfo(name="fhirwall-test", site="unit")


def request_record(n: int) -> AuditRecord:
    """Request ``n``: a read, or every third one a search touching three patients (three events)."""
    search = n % 3 == 0
    return AuditRecord(
        request_id=f"req-{n}",
        method="GET",
        route="/Observation" if search else "/Patient/{id}",
        interaction="search-type" if search else "read",
        started=1_714_557_600 + n + 0.125,
        resource_type="Observation" if search else "Patient",
        resource_id=None if search else f"p{n}",
        query="code=8867-4" if search else "",
        status=200,
        duration_ms=3.5,
        decision=Decision.PERMIT,
        client_id="ehr-app",
        subject="user-1",
        fhir_user="Practitioner/123",
        issuer="https://idp.example.org",
        patients={f"p{n}", f"q{n}", f"r{n}"} if search else {f"p{n}"},
        client_address="10.0.0.1",
    )


def write_requests(path: Path, count: int, *, every: int = 3) -> list[dict[str, Any]]:
    """Log ``count`` request records; returns their AuditEvents in order."""
    events = []
    with AuditChainWriter(path, key=KEY, checkpoint_every=every, fsync="never") as writer:
        for n in range(1, count + 1):
            record = request_record(n)
            assert writer.append_request(request_entry(record, OBSERVER)) == n
            events += audit_events(record, observer=OBSERVER)
    return events


def test_request_record_format_and_round_trip(log: Path) -> None:
    events = write_requests(log, 5)
    items = parsed(log)
    records = [item for item in items if "seq" in item]
    assert [item["seq"] for item in records] == [1, 2, 3, 4, 5]
    prev = GENESIS
    for n, item in enumerate(records, 1):
        assert list(item) == ["seq", "prev", "request", "hash"]
        assert item["request"] == orjson.loads(canonical(request_entry(request_record(n), OBSERVER)))
        body = orjson.dumps(item["request"], option=orjson.OPT_SORT_KEYS)
        assert body in log.read_bytes()  # the entry is stored as canonical JSON
        assert item["hash"] == hashlib.sha256(f"{n}|{prev}|request|".encode() + body).hexdigest()
        assert item["hash"] == record_hash(n, prev, body, "request") != record_hash(n, prev, body)
        prev = item["hash"]
    assert len(events) == 5 + 2  # request 3 is a search of three patients: three events
    assert list(read_events(log)) == events
    report = verify_chain(log, key=KEY)
    assert (report.ok, report.records, report.checkpoints, report.warnings) == (True, 5, 2, [])


def test_several_entries_in_one_write_chain_exactly_as_one_by_one(log: Path, tmp_path: Path) -> None:
    entries = [request_entry(request_record(n), OBSERVER) for n in range(1, 8)]
    one_by_one = tmp_path / "one-by-one.jsonl"
    with AuditChainWriter(one_by_one, key=KEY, checkpoint_every=3, fsync="never") as writer:
        for entry in entries:
            writer.append_request(entry)
    with AuditChainWriter(log, key=KEY, checkpoint_every=3, fsync="never") as writer:
        assert writer.append_requests([]) == 0
        assert writer.append_requests(entries[:2]) == 2
        assert writer.append_requests(entries[2:]) == 7  # crosses a checkpoint: written after the batch
    records = [item for item in parsed(log) if "seq" in item]
    assert records == [item for item in parsed(one_by_one) if "seq" in item]
    checkpoints = [item["checkpoint"] for item in parsed(log) if "checkpoint" in item]
    assert checkpoints == [7]  # the batch of five crossed one boundary; close had nothing left to cover
    assert verify_chain(log, key=KEY).ok


def test_event_and_request_records_share_one_chain(log: Path) -> None:
    with AuditChainWriter(log, key=KEY, checkpoint_every=2, fsync="never") as writer:
        writer.append(audit_event(1))
        writer.append_request(request_entry(request_record(1), OBSERVER))
        writer.append(audit_event(2))
    assert list(read_events(log)) == [
        audit_event(1),
        *audit_events(request_record(1), observer=OBSERVER),
        audit_event(2),
    ]
    assert verify_chain(log, key=KEY).ok
    with AuditChainWriter(log, key=KEY) as writer:  # reopening verifies the tail, both kinds
        assert writer.append_request(request_entry(request_record(2), OBSERVER)) == 4
    assert verify_chain(log, key=KEY).records == 4


@pytest.mark.parametrize("tamper", ["edit", "delete", "swap", "relabel", "rechain"])
def test_tampered_request_records_are_detected(log: Path, tamper: str) -> None:
    write_requests(log, 5)
    lines = lines_of(log)  # records at lines 1-3, 5-6; checkpoints at lines 4 and 7
    if tamper == "edit":
        lines[1] = lines[1].replace(b'"decision":"permit"', b'"decision":"deny"')
    elif tamper == "delete":
        del lines[1]
    elif tamper == "swap":
        lines[0], lines[1] = lines[1], lines[0]
    elif tamper == "relabel":  # the same content passed off as an event record
        lines[1] = lines[1].replace(b'"request":', b'"event":')
    else:  # edited, every later hash recomputed: only the signed checkpoints can tell
        items = parsed(log)
        items[1]["request"]["patients"] = ["someone-else"]
        lines = rechain(items, checkpoints="move")
    write_lines(log, lines)
    assert verify_chain(log, key=None).ok is (tamper == "rechain")  # the chain alone is consistent again
    report = verify_chain(log, key=KEY)
    assert not report.ok
    first = {
        "edit": "line 2: hash does not match the record's content (the record was edited)",
        "delete": "line 2: seq 3 where 2 was expected",
        "swap": "line 1: the log starts at seq 2",
        "relabel": "line 2: hash does not match the record's content (the record was edited)",
        "rechain": "line 4: checkpoint mac is not valid",
    }[tamper]
    assert report.problems[0].startswith(first)


def test_a_request_record_that_cannot_be_read(log: Path) -> None:
    with AuditChainWriter(log, key=KEY, fsync="never") as writer:
        writer.append_request(request_entry(request_record(1), OBSERVER))
        writer.append_request({"request_id": "r-2", "bogus": True})
    report = verify_chain(log, key=KEY)  # the chain is intact, but what it holds is not an entry
    assert report.problems == [
        "line 2: the request record's entry cannot be read (unknown request entry field(s): bogus)"
    ]
    with AuditChainWriter(log, key=KEY) as writer:  # the writer only checks the chain it continues
        assert writer.seq == 2
    events = read_events(log)
    assert next(events)["resourceType"] == "AuditEvent"
    with pytest.raises(AuditLogError, match=r"line 2: unknown request entry field\(s\): bogus"):
        next(events)

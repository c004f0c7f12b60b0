"""The quick paths of AuditEvent making give exactly what the plain library calls and full checks give."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from proxy.audit.balp import ID_NAMESPACE, ObserverInfo, _instant, _uuid5
from proxy.audit.chain import _Checker, canonical
from proxy.audit.delivery import _LogReader, _Position
from proxy.audit.entry import _KNOWN, EntryError, _checked_record, _plain_fields, entry_record, request_entry
from tests.proxy.test_audit_balp import _record
from tests.proxy.test_audit_delivery import KEY, make_records, write_log

OBSERVER = ObserverInfo(name="fhirwall-test", site="test-site", url="https://proxy.example/fhir")
_LAST_SECOND = 253_402_300_799


def _stdlib_instant(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@given(st.floats(min_value=0, max_value=_LAST_SECOND + 0.999, allow_nan=False))
@example(0.0005)
@example(0.9999995)
@example(1.0000005)
@example(1_700_000_000.0015)
@example(_LAST_SECOND - 0.0000005)
def test_instants_are_the_stdlib_ones(seconds: float) -> None:
    assert _instant(seconds) == _stdlib_instant(seconds)


@given(st.integers(min_value=0, max_value=2**20), st.integers(min_value=0, max_value=2_000_000))
def test_instants_on_half_microseconds_round_as_the_stdlib(whole: int, halves: int) -> None:
    seconds = whole + halves * 5e-7
    assert _instant(seconds) == _stdlib_instant(seconds)


@pytest.mark.parametrize("seconds", [0, 1_700_000_000, _LAST_SECOND, -1.5, -0.0004])
def test_whole_negative_and_last_instants_are_the_stdlib_ones(seconds: float) -> None:
    assert _instant(seconds) == _stdlib_instant(seconds)


@given(st.text())
@example("req-0001:-")
@example("\U0001f600:alert:break-glass")
def test_event_ids_are_uuid5(name: str) -> None:
    assert _uuid5(name) == str(uuid.uuid5(ID_NAMESPACE, name))


_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    3,
    -1,
    2.5,
    "",
    "x",
    [],
    ["a", "a"],
    [""],
    [None],
    [1],
    ("a",),
    {"a": 1},
]


def _outcome(entry: Any, read: Any) -> Any:
    try:
        record, observer = read(entry)
    except EntryError as exc:
        return str(exc)
    return record, observer


@pytest.mark.parametrize("name", sorted(_KNOWN))
def test_the_quick_entry_path_reads_as_the_full_checks(name: str) -> None:
    full = _read_back_entry()
    entries = [{**full, name: value} for value in _VALUES] + [{k: v for k, v in full.items() if k != name}]
    for entry in entries:
        assert _outcome(entry, entry_record) == _outcome(entry, _checked_record), entry


def test_quick_entry_records_are_the_checked_ones() -> None:
    entry = _read_back_entry()
    assert _plain_fields(entry) is not None  # the quick path is taken
    record, observer = entry_record(entry)
    assert (record, observer) == _checked_record(entry)
    assert isinstance(record.roles, tuple)
    assert isinstance(record.patients, set)


def _read_back_entry() -> dict[str, Any]:
    """An entry with every field set, as read from the log (lists, not tuples)."""
    record = _record(
        masked_values=1,
        masking_profile="m",
        break_glass=True,
        reasons=["r"],
        consent_ids=["c"],
        resources=["Patient/p"],
        error_type="E",
        operation="$x",
        query="a=b",
        resource_type="Patient",
        resource_id="p",
        patients={"p", "q"},
    )
    entry: dict[str, Any] = orjson.loads(canonical(request_entry(record, OBSERVER)))
    assert set(entry) == _KNOWN
    return entry


def test_records_the_look_ahead_verified_are_verified_again_when_their_line_changed(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    write_log(log, make_records(6), checkpoint_every=1000)  # one checkpoint, written on close
    reader = _LogReader(log, _Position(0, None, 0, 0), _Checker(KEY))
    reader._can_sync = False
    assert len(reader.read(1)) == 1
    assert len(reader._looked_at) == 5  # the look-ahead verified the rest up to the checkpoint: kept
    lines = log.read_bytes().splitlines(keepends=True)
    lines[3] = lines[3].replace(b'"status":200', b'"status":404')  # seq 4 edited in place
    log.write_bytes(b"".join(lines))
    reader.close()  # read it afresh (not from the file object's buffer)
    assert [pending.seq for pending in reader.read(10)] == [2, 3]
    assert reader.broken is not None
    assert "seq 4: hash does not match" in reader.broken

"""Durable asynchronous delivery of the audit log's AuditEvents to an audit server (or a file).

The local hash-chained log (``proxy.audit.chain``) *is* the spool: the proxy appends every request's record
to it before answering (a request record: the entry of ``proxy.audit.entry``), and ``AuditDelivery`` (one
asyncio task) reads the log behind it, turns each record into its BALP AuditEvents (``proxy.audit.balp``; an
event record holds its one event) and ships them, in order. The events made from a record are the same however
often it is read. Nothing is kept only in memory, so a crash, a restart or an audit-server outage loses
nothing.

**Reading.** The log is read from the cursor onwards, streaming (whole records until at least ``batch_size``
events are pending, one open file handle). New records wait up to ``linger_seconds`` for a batch to fill
(unless ``batch_size`` records are waiting already), so that under load each batch, and each sync of the
log, cursor and file that goes with it, covers many records.

Every record is verified as it is read: its ``hash`` must match its content, its ``seq`` must follow the
previous one and its ``prev`` must be the previous record's hash (a checkpoint must name the record before it
and, when the delivery holds the log key, its signature must verify). The first record that does not verify
stops the delivery for good with a CRITICAL log line: the records before it are delivered, it and everything
after it never are (``state`` becomes ``failed``; the backlog then grows until admission refuses requests). A
last line without a newline is a record still being written: the reader waits for it.

The chain alone cannot show that someone who can write the file did not edit records and recompute every
later hash. With the log key (``key``), the reader therefore looks ahead to the next signed checkpoint and
verifies it before handing out any record it covers: a rewritten chain is refused before its first
record is delivered. Records after the last checkpoint are covered by no signature yet and are delivered
on the chain's word (the same limit ``fhirwall audit verify`` reports).

**Sending** (``target: fhir``). A FHIR ``batch`` Bundle of at most ``batch_size`` ``PUT AuditEvent/<id>``
entries, or one ``PUT`` per event when ``batch_size`` is 1. AuditEvent ids are deterministic
(``proxy.audit.balp``), so sending an event twice leaves one resource: delivery is at-least-once, and with
idempotent ids that is effectively exactly once (a server that versions every ``PUT`` shows a second version
of a resent event).

**Cursor.** ``<log>.cursor`` (``cursor_file``) holds the seq, hash and byte offsets of the last record that is
done (every one of its events confirmed 2xx by the server, or set aside as poison). It is written atomically
(temporary file, ``fsync``, rename, ``fsync`` of the directory) and only after the server confirmed; the log
itself is ``fsync``ed before its records are sent (the writer may sync only once a second), so the cursor
never points past what a machine crash leaves of the log. It never passes a record that is not done: in a
partially failed batch the cursor advances over the leading records whose events were all confirmed and the
retry starts at the first failed entry (entries after it that were already confirmed are not sent again; after
a restart the confirmed events of a record the cursor did not pass are sent again, under the same ids). On
start the cursor is checked against the log (the record it names must still be there with the same hash); a
cursor that does not match (the log was replaced, truncated or edited) refuses to start
(``AuditDeliveryError``): move the cursor with its log, or remove it to deliver the log from its start.

**Failures.**

- Connection errors, timeouts, 408, 429, 5xx, a 2xx answer that is not a usable batch-response, and a
  failure to obtain credentials: an outage. Retried forever with exponential backoff and jitter
  (``retry_initial_seconds`` doubling up to ``retry_max_seconds``, at least a ``Retry-After``); nothing is
  dropped. The first failure is logged as a warning, then once a minute while it lasts, and the recovery.
- 401, 403, 404, 405, 407 (for the request or for an entry): a configuration problem (credentials, URL,
  permissions, AuditEvent not supported), not a property of one record. Retried like an outage but logged
  as errors: dead-lettering would move every record aside because of a wrong setting.
- Any other 4xx for one event (an entry of the batch-response, or the ``PUT`` of a single event): a
  *poison* record the server will never accept. It is logged as an error with its seq and id, appended
  (with the status, the server's OperationOutcome and the event) to the dead-letter file
  ``<log>.dead-letter.jsonl`` (``dead_letter_file``, synced before the cursor passes it), and delivery
  moves on. An event that is not an AuditEvent with a valid id is poison too (it cannot be ``PUT``), and so
  is a request record whose entry cannot be read (dead-lettered as it is, under ``request``).
  Replaying the dead letters is an operator decision.
- Any other 4xx for a whole batch (400, 413, 422, ...): the batch is sent again one event per ``PUT``, to
  find the poison records in it.

``target: file`` appends each delivered AuditEvent (canonical JSON, one per line) to ``file``, ``fsync``s
it, then advances the cursor. A crash between the two repeats the last events in the file: consumers
de-duplicate by ``id``.

**Back-pressure.** ``backlog`` is the seq last appended (``notify``) minus the seq the cursor reached.
``admit()`` is called before a request is served: with ``max_backlog`` or more records undelivered,
``on_backlog_full: refuse`` answers 503 (``AuditBacklogFullError``) at once; ``block`` waits up to
``block_timeout_seconds`` for the backlog to fall below the limit, then answers 503.

The log holds PHI and so do the cursor's neighbours: the dead-letter and delivered files are created
owner-only (0600). Log lines name records by seq and AuditEvent id only, never by their content.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import os
import random
import re
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import IO, Any, Final, Literal

import httpx
import orjson

from proxy.audit.chain import VerifyingKey, _Checker, canonical, record_hash, record_kind
from proxy.audit.entry import EntryError, entry_events
from proxy.audit.slots import claimed_log
from proxy.errors import ProxyError
from proxy.settings import AuditDeliverySettings as DeliverySettings
from proxy.upstream.credentials import UpstreamCredentials, credentials_for
from proxy.upstream.tls import client_ssl_context, token_endpoint_verify

__all__ = [
    "AuditBacklogFullError",
    "AuditDelivery",
    "AuditDeliveryError",
    "DeliverySettings",
    "DeliveryStatus",
    "checked_cursor",
    "cursor_seq",
    "last_record_seq",
]

logger = logging.getLogger("fhirwall.audit.delivery")

Json = dict[str, Any]

USER_AGENT: Final = "fhirwall-audit-delivery"
IDLE_POLL_SECONDS: Final = 1.0
"""While idle, the log is re-read at least this often even without ``notify`` (another writer process)."""
REPEAT_LOG_SECONDS: Final = 60.0
"""While delivery keeps failing, the failure is logged again this often."""

_CONFIG_STATUSES: Final = frozenset({401, 403, 404, 405, 407})
_TRANSIENT_STATUSES: Final = frozenset({408, 429})
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_STATUS_CODE = re.compile(r"\s*(\d{3})")
_JITTER = random.SystemRandom()


# -- errors ------------------------------------------------------------------------------------------------


class AuditBacklogFullError(ProxyError):
    """Too many AuditEvents are not yet delivered; new requests are not served until the backlog shrinks."""

    status_code = 503
    issue_code = "transient"
    default_message = (
        "the audit trail cannot deliver its records fast enough (backlog full); the request was not served"
    )

    def __init__(self, message: str | None = None, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.headers["Retry-After"] = str(retry_after)


class AuditDeliveryError(Exception):
    """Delivery cannot start: the cursor is unreadable or does not match the log."""


# -- the log, read and verified ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Position:
    """The last record done: its seq and hash, where its line starts and ends (0/0/0/None: none yet)."""

    seq: int
    hash: str | None
    start: int
    end: int


@dataclass(slots=True)
class _Pending:
    """An event of a record read but not yet passed by the cursor (``last``: its record's last event;
    ``unreadable``: why the record's entry gave no events, ``event`` then holding the entry)."""

    seq: int
    hash: str
    start: int
    end: int
    event: Json
    last: bool = True
    unreadable: str | None = None
    done: bool = False

    @property
    def event_id(self) -> str:
        value = self.event.get("id")
        return value if isinstance(value, str) else "?"


class _BrokenChain(Exception):
    pass


def _is_hex64(value: object) -> bool:
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_Record = tuple[int, str, str, str, Json]
"""A verified record line: (seq, prev, hash, kind, content)."""

_MAX_LOOKED_AHEAD = 2048
"""At most this many records the look-ahead verified are kept for the reader (not verified twice)."""


def _verified_record(raw: bytes) -> _Record:
    """(seq, prev, hash, kind, content) of a record line whose hash matches its content; ``_BrokenChain``
    if not."""
    item = orjson.loads(raw)
    kind = record_kind(item)
    if kind is None:
        raise _BrokenChain("neither an audit record nor a checkpoint")
    seq, prev, content, digest = item["seq"], item["prev"], item[kind], item["hash"]
    if not (_is_int(seq) and _is_hex64(prev) and isinstance(content, dict) and _is_hex64(digest)):
        raise _BrokenChain("malformed record")
    if record_hash(seq, prev, canonical(content), kind) != digest:
        raise _BrokenChain(f"record seq {seq}: hash does not match its content (the record was edited)")
    return seq, prev, digest, kind, content


def _pending_events(seq: int, digest: str, start: int, end: int, kind: str, content: Json) -> list[_Pending]:
    """The events of one verified record, in order: an event record's event, a request record's BALP
    AuditEvents (one unreadable pending when its entry cannot be read)."""
    if kind == "event":
        return [_Pending(seq, digest, start, end, content)]
    try:
        events = entry_events(content)
    except EntryError as exc:
        return [_Pending(seq, digest, start, end, content, unreadable=str(exc))]
    last = len(events) - 1
    return [
        _Pending(seq, digest, start, end, event, last=index == last) for index, event in enumerate(events)
    ]


class _Chain:
    """Chain state while reading forwards: the seq and hash of the last record (hash None: not known)."""

    def __init__(self, seq: int, digest: str | None) -> None:
        self.seq = seq
        self.hash = digest

    def feed(self, raw: bytes, checker: _Checker | None, known: _Record | None = None) -> _Record | None:
        """Verify one complete line: a record (returns seq, prev, hash, kind, content) or a checkpoint
        (None). ``known``: what ``_verified_record`` gave for this very line already (it is not redone)."""
        if raw.startswith(b'{"checkpoint":'):
            self._checkpoint(orjson.loads(raw), checker)
            return None
        record = known or _verified_record(raw)
        seq, prev, digest, _, _ = record
        if seq != self.seq + 1:
            raise _BrokenChain(f"seq {seq} where {self.seq + 1} was expected (records deleted or moved)")
        if self.hash is not None and prev != self.hash:
            raise _BrokenChain(f"record seq {seq}: prev does not match the previous record's hash")
        self.seq, self.hash = seq, digest
        return record

    def _checkpoint(self, item: object, checker: _Checker | None) -> None:
        if (
            not isinstance(item, dict)
            or not _is_int(item.get("checkpoint"))
            or not _is_hex64(item.get("hash"))
        ):
            raise _BrokenChain("malformed checkpoint")
        if item["checkpoint"] != self.seq or (self.hash is not None and item["hash"] != self.hash):
            raise _BrokenChain(
                f"checkpoint for seq {item['checkpoint']} does not match record seq {self.seq} before it"
            )
        if checker is not None:
            if not isinstance(item.get("at"), str) or not ({"mac", "sig"} & set(item)):
                raise _BrokenChain("malformed checkpoint")
            problem = checker.problem(item)
            if problem is not None:
                raise _BrokenChain(f"checkpoint for seq {item['checkpoint']}: {problem}")


class _LogReader:
    """Reads the log from a position, verifying the chain as it goes (used from one thread at a time).

    With a key, a look-ahead also verifies the chain up to the next signed checkpoint before any record
    that checkpoint covers is handed out: a rewritten chain (records edited and every later hash
    recomputed) is caught by the checkpoint's signature before its records are delivered. Records after
    the last checkpoint are covered by no signature yet: they are delivered on the chain's word alone.
    The records the look-ahead verified (at most ``_MAX_LOOKED_AHEAD``, kept with their bytes) are not
    parsed and hashed again when read, unless their line no longer has the same bytes.
    """

    def __init__(self, path: Path, position: _Position, checker: _Checker | None) -> None:
        self.path = path
        self._checker = checker
        self._chain = _Chain(position.seq, position.hash)
        self._offset = position.end
        self._file: IO[bytes] | None = None
        self.broken: str | None = None
        # look-ahead (with a key only): how far it got, and what it found
        self._ahead = _Chain(position.seq, position.hash)
        self._ahead_offset = position.end
        self._trusted_end = position.end  # end of the last checkpoint that verified
        self._bad_checkpoint: str | None = None
        self._ahead_stuck = False  # the look-ahead met a record that does not verify
        self._looked_at: dict[int, tuple[bytes, _Record]] = {}  # by offset: lines the look-ahead verified
        self._can_sync = True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def read(self, limit: int) -> list[_Pending]:
        """The events of the verified records after the last one read, whole records until there are at
        least ``limit`` (or the log ends); sets ``broken`` at a bad line."""
        if self.broken is not None:
            return []
        if self._file is None:
            try:
                self._file = self.path.open("rb")
            except FileNotFoundError:
                return []
            if self._offset > self._file.seek(0, os.SEEK_END):
                self.broken = (
                    f"the log is shorter than the delivery cursor (byte {self._offset}): "
                    "it was truncated or replaced"
                )
                return []
        file = self._file
        file.seek(self._offset)
        events: list[_Pending] = []
        while len(events) < limit and self._vouched(file):
            raw = file.readline()
            if not raw.endswith(b"\n"):  # end of the log, or a record still being written
                break
            line_start = self._offset
            try:
                record = self._chain.feed(raw, self._checker, self._known(line_start, raw))
            except (_BrokenChain, orjson.JSONDecodeError) as exc:
                reason = str(exc) if isinstance(exc, _BrokenChain) else "not valid JSON"
                self.broken = f"byte {line_start} (after seq {self._chain.seq}): {reason}"
                break
            self._offset += len(raw)
            if record is not None:
                seq, _, digest, kind, content = record
                events += _pending_events(seq, digest, line_start, self._offset, kind, content)
        if events:
            self._sync(file)
        return events

    def _known(self, start: int, raw: bytes) -> _Record | None:
        """What the look-ahead found verifying the line at ``start``, if it read these very bytes there."""
        looked = self._looked_at.pop(start, None)
        return looked[1] if looked is not None and looked[0] == raw else None

    def _sync(self, file: IO[bytes]) -> None:
        """Make the records about to be delivered durable in the log first (the writer may sync only
        once a second): else a machine crash could leave the cursor past the end of the log."""
        if not self._can_sync:
            return
        try:
            os.fsync(file.fileno())
        except OSError as exc:
            if exc.errno not in (errno.EBADF, errno.EINVAL):
                raise
            self._can_sync = False  # a platform without fsync on read-only descriptors
            logger.warning("cannot fsync the audit log before delivery (%s); relying on its writer", exc)

    def _vouched(self, file: IO[bytes]) -> bool:
        """Whether the line at the read position may be read now (always, without a key)."""
        if self._checker is None:
            return True
        if self._offset >= self._ahead_offset and self._bad_checkpoint is None and not self._ahead_stuck:
            self._look_ahead(file)
            file.seek(self._offset)
        if self._bad_checkpoint is not None and self._offset >= self._trusted_end:
            self.broken = self._bad_checkpoint
            return False
        # a bad record ahead: let the reader reach it (and stop there); else only what was looked at
        return self._offset < self._ahead_offset or self._ahead_stuck

    def _look_ahead(self, file: IO[bytes]) -> None:
        """Verify from where the look-ahead stopped to the next checkpoint (or the end of the log)."""
        file.seek(self._ahead_offset)
        while True:
            raw = file.readline()
            if not raw.endswith(b"\n"):
                return
            start = self._ahead_offset
            try:
                record = self._ahead.feed(raw, self._checker)
            except (_BrokenChain, orjson.JSONDecodeError) as exc:
                if raw.startswith(b'{"checkpoint":'):  # the records it covers cannot be trusted
                    reason = str(exc) if isinstance(exc, _BrokenChain) else "not valid JSON"
                    self._bad_checkpoint = (
                        f"byte {start}: {reason}; no record it covers after the last valid checkpoint "
                        "is delivered"
                    )
                else:
                    self._ahead_stuck = True
                return
            self._ahead_offset += len(raw)
            if record is None:
                self._trusted_end = self._ahead_offset
                return
            if len(self._looked_at) < _MAX_LOOKED_AHEAD:
                self._looked_at[start] = (raw, record)


def last_record_seq(path: Path, block: int = 1 << 16) -> int:
    """The seq of the last complete record of the log (0 when none), read backwards from the end."""
    try:
        file = path.open("rb")
    except FileNotFoundError:
        return 0
    with file:
        position = file.seek(0, os.SEEK_END)
        tail = b""
        while position > 0:
            start = max(0, position - block)
            file.seek(start)
            tail = file.read(position - start) + tail
            position = start
            lines = tail.split(b"\n")
            # lines[-1] is after the last newline (a partial line or b""); lines[0] may be cut unless start==0
            complete = lines[:-1] if start == 0 else lines[1:-1]
            for line in reversed(complete):
                if line.startswith(b'{"seq":'):
                    match = re.match(rb'\{"seq":(\d+),', line)
                    if match:
                        return int(match.group(1))
            if len(tail) > 64 * block:  # no record in the last few MB: give up, the reader will find them
                return 0
    return 0


# -- the cursor --------------------------------------------------------------------------------------------


def checked_cursor(cursor: Path, log: Path) -> _Position:
    """The delivery position the cursor file names, checked against the log (the start when there is no
    cursor yet); ``AuditDeliveryError`` when it is unreadable or does not match the log."""
    position = _load_cursor(cursor)
    if position is None:
        return _Position(0, None, 0, 0)
    _check_cursor(log, position)
    return position


def cursor_seq(cursor: Path) -> int | None:
    """The seq the cursor file reached (0 without one), or None when it cannot be read right now."""
    try:
        position = _load_cursor(cursor)
    except AuditDeliveryError:
        return None
    return 0 if position is None else position.seq


def _load_cursor(path: Path) -> _Position | None:
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise AuditDeliveryError(f"cannot read the audit delivery cursor {path}: {exc}") from None
    if not (
        isinstance(data, dict)
        and all(_is_int(data.get(key)) and data[key] >= 0 for key in ("seq", "start", "end"))
        and data["end"] > data["start"]
        and _is_hex64(data.get("hash"))
    ):
        raise AuditDeliveryError(f"the audit delivery cursor {path} is malformed")
    return _Position(data["seq"], data["hash"], data["start"], data["end"])


def _check_cursor(log: Path, position: _Position) -> None:
    """The record the cursor names must still be in the log, unchanged; ``AuditDeliveryError`` if not."""
    try:
        with log.open("rb") as file:
            file.seek(position.start)
            raw = file.read(position.end - position.start)
    except FileNotFoundError:
        raise AuditDeliveryError(
            f"the audit delivery cursor names record seq {position.seq} but {log} is missing"
        ) from None
    seq, digest = 0, ""
    if raw.endswith(b"\n"):
        with contextlib.suppress(_BrokenChain, orjson.JSONDecodeError):
            seq, _, digest, _, _ = _verified_record(raw)
    if seq != position.seq or digest != position.hash:
        raise AuditDeliveryError(
            f"the audit delivery cursor names record seq {position.seq} at byte "
            f"{position.start} of {log}, but that record is not there: the log was replaced, truncated or "
            f"edited since. Run `fhirwall audit verify {log}`; if the log is a new one, move the old cursor "
            "away (it belongs to the old log) and this log is delivered from its start."
        )


def _save_cursor(path: Path, position: _Position, log: Path) -> None:
    """Write the cursor atomically and durably: temporary file, fsync, rename, fsync of the directory."""
    data = {
        "log": log.name,
        "seq": position.seq,
        "hash": position.hash,
        "start": position.start,
        "end": position.end,
        "at": _now(),
    }
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        os.write(fd, orjson.dumps(data) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _append_synced(path: Path, lines: list[bytes]) -> None:
    """Append whole lines to ``path`` (created owner-only) and fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        view = memoryview(b"".join(lines))
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- delivery ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeliveryStatus:
    """A snapshot for health checks and metrics."""

    state: Literal["stopped", "idle", "delivering", "retrying", "failed"]
    appended_seq: int
    delivered_seq: int
    backlog: int
    delivered_events: int
    dead_letters: int
    failed_attempts: int
    last_error: str | None
    failure: str | None


@dataclass(frozen=True, slots=True)
class _Verdict:
    """What one event's answer means: ok, poison (never accepted), or retry (try again later)."""

    kind: Literal["ok", "poison", "retry"]
    status: int | None = None
    reason: str = ""
    outcome: Json | None = None
    retry_after: float | None = None
    config: bool = False


class _AttemptFailed(Exception):
    """A whole send failed in a retryable way."""

    def __init__(self, reason: str, *, retry_after: float | None = None, config: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.config = config


class _Isolate(Exception):
    """The server refused a whole batch (4xx): send its events one by one to find the poison ones."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status} for the whole batch")
        self.status = status


class AuditDelivery:
    """Ships the AuditEvents of the hash-chained log at ``log_path`` to ``settings.target``, in order.

    ``start()``/``stop()`` run it as an asyncio task; ``notify(seq)`` after each append wakes it;
    ``admit()`` applies back-pressure. ``key`` (the log key, or an Ed25519 public key) also verifies the
    checkpoint signatures while reading. When this process claimed a per-worker log for ``log_path``
    (``proxy.audit.slots``), that log is delivered, with its own cursor and dead-letter files. ``http`` is
    used for the audit server when given (its TLS and timeouts then apply, and it is not closed here);
    otherwise a client is built from ``settings``.
    """

    def __init__(
        self,
        log_path: Path,
        settings: DeliverySettings,
        http: httpx.AsyncClient | None = None,
        *,
        key: VerifyingKey | None = None,
        poll_seconds: float = IDLE_POLL_SECONDS,
    ) -> None:
        if not settings.enabled:
            raise ValueError("audit delivery is not enabled (target none)")
        log_path = claimed_log(log_path)  # this worker's own log when several workers run
        self.log_path = log_path
        self.settings = settings
        self.cursor_path = settings.cursor_file or log_path.with_name(log_path.name + ".cursor")
        self.dead_letter_path = settings.dead_letter_file or log_path.with_name(
            log_path.name + ".dead-letter.jsonl"
        )
        self._checker = None if key is None else _Checker(key)
        self._poll_seconds = poll_seconds
        self._given_http = http
        self._http: httpx.AsyncClient | None = None
        self._credentials: UpstreamCredentials | None = None
        self._position = _Position(0, None, 0, 0)
        self._reader: _LogReader | None = None
        self._pending: list[_Pending] = []
        self._isolate_through = 0  # send one event per PUT up to this seq (after a refused batch)
        self._appended = 0
        self._lingering = False
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._stopping = False
        self._stop_requested = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._state: Literal["stopped", "idle", "delivering", "retrying", "failed"] = "stopped"
        self._failure: str | None = None
        self._last_error: str | None = None
        self._failures_in_row = 0
        self._failing_since = 0.0
        self._last_failure_log = 0.0
        self._delivered = 0
        self._dead_letters = 0
        self._failed_attempts = 0

    # -- public API ----------------------------------------------------------------------------------

    @property
    def appended_seq(self) -> int:
        """The highest seq known to be in the log."""
        return self._appended

    @property
    def delivered_seq(self) -> int:
        """The seq the cursor reached: every record up to it is delivered (or dead-lettered)."""
        return self._position.seq

    @property
    def backlog(self) -> int:
        """Records appended but not yet delivered."""
        return max(0, self._appended - self._position.seq)

    @property
    def failure(self) -> str | None:
        """Why delivery stopped for good (a broken chain), or None."""
        return self._failure

    def status(self) -> DeliveryStatus:
        """Counters and state for health checks and metrics."""
        return DeliveryStatus(
            state=self._state,
            appended_seq=self._appended,
            delivered_seq=self._position.seq,
            backlog=self.backlog,
            delivered_events=self._delivered,
            dead_letters=self._dead_letters,
            failed_attempts=self._failed_attempts,
            last_error=self._last_error,
            failure=self._failure,
        )

    async def start(self) -> None:
        """Check the cursor against the log and start the background task (``AuditDeliveryError``)."""
        if self._task is not None:
            raise RuntimeError("audit delivery is already running")
        position = await asyncio.to_thread(self._open_position)
        self._position = position
        self._appended = max(
            self._appended, position.seq, await asyncio.to_thread(last_record_seq, self.log_path)
        )
        self._reader = _LogReader(self.log_path, position, self._checker)
        self._start_task()
        logger.info(
            "audit delivery to %s started at seq %d (%d record(s) in the backlog)",
            self._target_name(),
            position.seq,
            self.backlog,
        )

    def _start_task(self) -> None:
        """Open the sender (HTTP client, credentials) and start the background task."""
        self._pending = []
        if self.settings.target == "fhir":
            self._http = self._given_http or _build_client(self.settings)
            self._credentials = credentials_for(
                self.settings.auth, verify=token_endpoint_verify(self.settings.tls)
            )
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stopping = False
        self._stop_requested = asyncio.Event()
        self._wake = asyncio.Event()  # events of this loop (a delivery may be restarted in another)
        self._progress = asyncio.Event()
        self._state = "idle"
        self._task = asyncio.create_task(self._run(), name="fhirwall-audit-delivery")

    async def stop(self, drain_seconds: float | None = None) -> None:
        """Deliver what the log holds for up to ``drain_seconds`` (``drain_timeout_seconds``), then stop."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        self._stop_requested.set()
        self._wake.set()
        wait = self.settings.drain_timeout_seconds if drain_seconds is None else drain_seconds
        try:
            await asyncio.wait_for(asyncio.shield(task), wait)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            logger.warning(
                "audit delivery stopped with %d record(s) not yet delivered; they stay in %s and are "
                "delivered after the next start",
                self.backlog,
                self._source_name(),
            )
        finally:
            await self._close_resources()
            if self._state != "failed":
                self._state = "stopped"

    def notify(self, seq: int) -> None:
        """Record ``seq`` has been appended: wake the delivery (callable from any thread)."""
        if seq > self._appended:
            self._appended = seq
        loop = self._loop
        if loop is None or self._task is None:
            return
        if self._lingering and self.backlog < self.settings.batch_size:
            return  # a batch is filling: it is woken when full (or when the linger ends)
        if threading.get_ident() == self._loop_thread:
            self._wake.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to wake
                loop.call_soon_threadsafe(self._wake.set)

    @property
    def full(self) -> bool:
        """Whether the backlog reached ``max_backlog``."""
        return self.backlog >= self.settings.max_backlog

    async def admit(self) -> None:
        """Back-pressure before serving a request: ``AuditBacklogFullError`` when the backlog is full
        (``refuse``), or after waiting ``block_timeout_seconds`` in vain for room (``block``)."""
        if not self.full:
            return
        retry_after = max(1, math.ceil(self.settings.retry_initial_seconds))
        if self.settings.on_backlog_full == "refuse" or self._task is None or self._failure is not None:
            raise AuditBacklogFullError(retry_after=retry_after)
        try:
            async with asyncio.timeout(self.settings.block_timeout_seconds):
                while self.full:
                    if self._task is None or self._failure is not None:
                        raise AuditBacklogFullError(retry_after=retry_after)
                    await self._progress.wait()
        except TimeoutError:
            raise AuditBacklogFullError(retry_after=retry_after) from None

    # -- the task ------------------------------------------------------------------------------------

    def _open_position(self) -> _Position:
        return checked_cursor(self.cursor_path, self.log_path)

    async def _run(self) -> None:
        try:
            await self._loop_forever()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: loud, and delivery stops (admission then fails closed)
            self._fail(f"{type(exc).__name__}: {exc}")
            logger.exception("audit delivery failed")

    async def _read(self) -> list[_Pending]:
        """The next events to deliver from the log (empty: nothing new, or the chain is broken)."""
        assert self._reader is not None
        return await asyncio.to_thread(self._reader.read, self.settings.batch_size)

    def _read_failed(self) -> bool:
        """After an empty read: whether the source is broken for good (delivery then stops)."""
        assert self._reader is not None
        if self._reader.broken is None:
            return False
        self._broken_chain(self._reader.broken)
        return True

    async def _loop_forever(self) -> None:
        while True:
            try:
                if not self._pending:
                    await self._let_batch_fill()
                    self._wake.clear()  # before reading: a notify from now on is not missed
                    self._pending = await self._read()
                    if not self._pending:
                        if self._read_failed():
                            return
                        if self._stopping:
                            return
                        self._state = "idle"
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._wake.wait(), self._poll_seconds)
                        continue
                    self._appended = max(self._appended, self._pending[-1].seq)
                self._state = "retrying" if self._failures_in_row else "delivering"
                await self._attempt()
            except _AttemptFailed as failure:
                await self._retry_later(failure)
            except OSError as exc:  # the log, cursor, dead-letter or target file (disk full, permissions)
                await self._retry_later(_AttemptFailed(f"local I/O failed: {exc}", config=True))
            else:
                self._note_success()

    async def _let_batch_fill(self) -> None:
        """Give a batch that is not full yet up to ``linger_seconds`` to fill; ``notify`` wakes it once the
        batch is full, ``stop`` at once."""
        linger = self.settings.linger_seconds
        if not linger or self._stopping or not 0 < self.backlog < self.settings.batch_size:
            return
        self._lingering = True
        self._wake.clear()
        try:
            if self.backlog < self.settings.batch_size:  # (filled between the check and the clear?)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), linger)
        finally:
            self._lingering = False

    async def _retry_later(self, failure: _AttemptFailed) -> None:
        self._note_failure(failure)
        delay = self._backoff(failure.retry_after)
        if self._stopping:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):  # stop() cuts a long wait short: drain what can be
            await asyncio.wait_for(self._stop_requested.wait(), delay)

    def _broken_chain(self, reason: str) -> None:
        self._fail(f"the audit log {self.log_path} does not verify at {reason}")
        logger.critical(
            "AUDIT LOG TAMPERED OR CORRUPT: %s does not verify at %s. Delivery stopped after seq %d; "
            "no record from there on is delivered. Run `fhirwall audit verify %s` and keep the file as "
            "evidence.",
            self.log_path,
            reason,
            self._position.seq,
            self.log_path,
        )

    def _fail(self, reason: str) -> None:
        self._failure = reason
        self._state = "failed"
        self._progress.set()  # blocked admissions give up now

    async def _attempt(self) -> None:
        """Try to deliver the pending records once; advances the cursor over what is done."""
        todo = [pending for pending in self._pending if not pending.done][: self.settings.batch_size]
        if not todo:  # all done, only the cursor could not be saved last time
            await self._advance()
        elif self.settings.target == "file":
            await self._write_file(todo)
        elif self.settings.batch_size == 1 or todo[0].seq <= self._isolate_through:
            await self._send_singly(todo)
        else:
            try:
                await self._send_batch(todo)
            except _Isolate as refused:
                self._isolate_through = self._pending[-1].seq
                logger.warning(
                    "the audit server refused a batch of %d AuditEvents (seq %d-%d) with HTTP %d; sending "
                    "them one by one to find the records it rejects",
                    len(todo),
                    todo[0].seq,
                    todo[-1].seq,
                    refused.status,
                )
                await self._send_singly(todo)

    async def _write_file(self, todo: list[_Pending]) -> None:
        assert self.settings.file is not None
        lines = [canonical(pending.event) + b"\n" for pending in todo]
        await asyncio.to_thread(_append_synced, self.settings.file, lines)
        for pending in todo:
            pending.done = True
        await self._advance()

    async def _send_singly(self, todo: list[_Pending]) -> None:
        for pending in todo:
            verdict = _invalid(pending) or await self._put(pending)
            await self._settle([(pending, verdict)])

    async def _send_batch(self, todo: list[_Pending]) -> None:
        sendable: list[_Pending] = []
        verdicts: list[tuple[_Pending, _Verdict]] = []
        for pending in todo:
            invalid = _invalid(pending)
            if invalid is None:
                sendable.append(pending)
            else:
                verdicts.append((pending, invalid))
        if sendable:
            verdicts += zip(sendable, await self._post_batch(sendable), strict=True)
        await self._settle(verdicts)

    async def _settle(self, verdicts: list[tuple[_Pending, _Verdict]]) -> None:
        """Mark confirmed and poison records done (dead letters synced first), advance the cursor, and
        raise ``_AttemptFailed`` when some record must be retried."""
        poison = [(pending, verdict) for pending, verdict in verdicts if verdict.kind == "poison"]
        if poison:
            await asyncio.to_thread(
                _append_synced, self.dead_letter_path, [_dead_letter(*item) for item in poison]
            )
            for pending, verdict in poison:
                self._dead_letters += 1
                logger.error(
                    "audit delivery: AuditEvent seq %d id %s was rejected by the audit server (%s); it is "
                    "set aside in %s and delivery moves on",
                    pending.seq,
                    pending.event_id,
                    verdict.reason,
                    self.dead_letter_path,
                )
        for pending, verdict in verdicts:
            if verdict.kind != "retry":
                pending.done = True
                self._delivered += verdict.kind == "ok"
        await self._advance()
        retry = [verdict for _, verdict in verdicts if verdict.kind == "retry"]
        if retry:
            waits = [verdict.retry_after for verdict in retry if verdict.retry_after is not None]
            first = retry[0]
            raise _AttemptFailed(
                first.reason
                if len(retry) == 1
                else f"{len(retry)} of {len(verdicts)} entries: {first.reason}",
                retry_after=max(waits) if waits else None,
                config=any(verdict.config for verdict in retry),
            )

    def _done_count(self) -> int:
        """How many leading pending events belong to records whose events are all done."""
        count = 0
        for index, pending in enumerate(self._pending):
            if not pending.done:
                break
            if pending.last:
                count = index + 1
        return count

    def _progressed(self, count: int) -> None:
        """Forget the first ``count`` pending events (done) and wake blocked admissions."""
        del self._pending[:count]
        self._progress.set()
        self._progress = asyncio.Event()

    async def _advance(self) -> None:
        """Move the cursor over the leading records whose events are all done and persist it."""
        count = self._done_count()
        if not count:
            return
        last = self._pending[count - 1]
        position = _Position(last.seq, last.hash, last.start, last.end)
        await asyncio.to_thread(_save_cursor, self.cursor_path, position, self.log_path)
        self._position = position
        self._progressed(count)

    # -- HTTP ----------------------------------------------------------------------------------------

    async def _headers(self) -> dict[str, str]:
        headers = {
            "content-type": "application/fhir+json",
            "accept": "application/fhir+json",
            "prefer": "return=minimal",
            "user-agent": USER_AGENT,
        }
        assert self._credentials is not None
        try:
            authorization = await self._credentials.authorization()
        except (ProxyError, KeyError, OSError) as exc:
            raise _AttemptFailed(f"no credentials for the audit server ({type(exc).__name__})") from None
        if authorization:
            headers["authorization"] = authorization
        return headers

    async def _request(self, method: str, url: str, body: Json) -> httpx.Response:
        assert self._http is not None
        headers = await self._headers()
        try:
            return await self._http.request(method, url, content=orjson.dumps(body), headers=headers)
        except httpx.HTTPError as exc:
            raise _AttemptFailed(f"{type(exc).__name__} {exc}".strip()) from None

    async def _put(self, pending: _Pending) -> _Verdict:
        base = self.settings.url
        try:
            response = await self._request("PUT", f"{base}/AuditEvent/{pending.event_id}", pending.event)
        except _AttemptFailed as failure:
            return _Verdict("retry", reason=failure.reason)
        return _verdict(response.status_code, _json_or_none(response), response.headers.get("retry-after"))

    async def _post_batch(self, batch: list[_Pending]) -> list[_Verdict]:
        base = self.settings.url
        bundle = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                {
                    "fullUrl": f"{base}/AuditEvent/{pending.event_id}",
                    "resource": pending.event,
                    "request": {"method": "PUT", "url": f"AuditEvent/{pending.event_id}"},
                }
                for pending in batch
            ],
        }
        response = await self._request("POST", str(base), bundle)
        status = response.status_code
        if not 200 <= status < 300:
            whole = _verdict(status, None, response.headers.get("retry-after"))
            if whole.kind == "poison":
                raise _Isolate(status)
            raise _AttemptFailed(whole.reason, retry_after=whole.retry_after, config=whole.config)
        answer = _json_or_none(response)
        entries = answer.get("entry") if answer is not None else None
        if (
            answer is None
            or answer.get("type") != "batch-response"
            or not isinstance(entries, list)
            or len(entries) != len(batch)
        ):
            raise _AttemptFailed(
                f"HTTP {status} without a batch-response of {len(batch)} entries "
                "(does the server support batch? if not, set batch_size: 1)"
            )
        return [_entry_verdict(entry) for entry in entries]

    # -- failures and backoff ------------------------------------------------------------------------

    def _backoff(self, retry_after: float | None) -> float:
        settings = self.settings
        exponent = min(self._failures_in_row - 1, 32)
        delay = min(settings.retry_max_seconds, settings.retry_initial_seconds * 2.0**exponent)
        delay = delay / 2 + _JITTER.uniform(0, delay / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, settings.retry_max_seconds))
        if self._stopping:  # draining on shutdown: do not sleep past what is left of it
            delay = min(delay, settings.retry_initial_seconds)
        return delay

    def _note_failure(self, failure: _AttemptFailed) -> None:
        now = time.monotonic()
        self._failed_attempts += 1
        self._failures_in_row += 1
        self._last_error = failure.reason
        self._state = "retrying"
        level = logging.ERROR if failure.config else logging.WARNING
        if self._failures_in_row == 1:
            self._failing_since = self._last_failure_log = now
            logger.log(
                level,
                "audit delivery to %s failed (%s)%s; retrying with backoff, %d record(s) waiting",
                self._target_name(),
                failure.reason,
                " - check the audit delivery url, credentials and permissions" if failure.config else "",
                self.backlog,
            )
        elif now - self._last_failure_log >= REPEAT_LOG_SECONDS:
            self._last_failure_log = now
            logger.log(
                level,
                "audit delivery to %s still failing after %d attempts over %.0f s (%s); %d record(s) waiting",
                self._target_name(),
                self._failures_in_row,
                now - self._failing_since,
                failure.reason,
                self.backlog,
            )

    def _note_success(self) -> None:
        if self._failures_in_row:
            logger.warning(
                "audit delivery to %s recovered after %d failed attempt(s) over %.1f s",
                self._target_name(),
                self._failures_in_row,
                time.monotonic() - self._failing_since,
            )
        self._failures_in_row = 0
        self._last_error = None

    def _source_name(self) -> str:
        return str(self.log_path)

    def _target_name(self) -> str:
        return str(self.settings.file) if self.settings.target == "file" else str(self.settings.url)

    async def _close_resources(self) -> None:
        if self._reader is not None:
            self._reader.close()
        if self._credentials is not None:
            await self._credentials.close()
            self._credentials = None
        if self._http is not None and self._http is not self._given_http:
            await self._http.aclose()
        self._http = None


# -- answers -----------------------------------------------------------------------------------------------


def _invalid(pending: _Pending) -> _Verdict | None:
    """Poison without asking the server: an unreadable request record, not an AuditEvent, or no id it could
    be ``PUT`` under."""
    if pending.unreadable is not None:
        return _Verdict("poison", reason=f"a request record that cannot be read ({pending.unreadable})")
    event = pending.event
    event_id = event.get("id")
    if (
        event.get("resourceType") != "AuditEvent"
        or not isinstance(event_id, str)
        or not _FHIR_ID.fullmatch(event_id)
    ):
        return _Verdict("poison", reason="not an AuditEvent with a valid id, cannot be PUT")
    return None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def _verdict(status: int, outcome: Json | None, retry_after: str | None) -> _Verdict:
    """The verdict for one event (or, for a batch request, the whole of it) from its HTTP status."""
    if 200 <= status < 300:
        return _Verdict("ok", status)
    reason = f"HTTP {status}"
    if status in _CONFIG_STATUSES:
        return _Verdict("retry", status, reason, config=True)
    if status in _TRANSIENT_STATUSES or status >= 500:
        return _Verdict("retry", status, reason, retry_after=_retry_after(retry_after))
    if 400 <= status < 500:
        if outcome is not None and outcome.get("resourceType") != "OperationOutcome":
            outcome = None
        return _Verdict("poison", status, reason + _issue_codes(outcome), outcome)
    return _Verdict("retry", status, reason)  # 1xx/3xx: not an answer delivery can use


def _entry_verdict(entry: object) -> _Verdict:
    response = entry.get("response") if isinstance(entry, dict) else None
    status_text = response.get("status") if isinstance(response, dict) else None
    match = _STATUS_CODE.match(status_text) if isinstance(status_text, str) else None
    if response is None or match is None:
        return _Verdict("retry", reason="a batch-response entry without a status")
    outcome = response.get("outcome")
    return _verdict(int(match.group(1)), outcome if isinstance(outcome, dict) else None, None)


def _issue_codes(outcome: Mapping[str, Any] | None) -> str:
    if outcome is None:
        return ""
    issues = outcome.get("issue")
    codes = (
        [str(issue.get("code")) for issue in issues if isinstance(issue, dict)]
        if isinstance(issues, list)
        else []
    )
    return f" ({', '.join(codes)})" if codes else ""


def _json_or_none(response: httpx.Response) -> Json | None:
    try:
        value = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _dead_letter(pending: _Pending, verdict: _Verdict) -> bytes:
    letter = {
        "seq": pending.seq,
        "id": pending.event.get("id"),
        "at": _now(),
        "status": verdict.status,
        "reason": verdict.reason,
        "outcome": verdict.outcome,
        "request" if pending.unreadable is not None else "event": pending.event,
    }
    return orjson.dumps(letter) + b"\n"


# -- the HTTP client -----------------------------------------------------------------------------------------


def _build_client(settings: DeliverySettings) -> httpx.AsyncClient:
    timeout = httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout)
    return httpx.AsyncClient(timeout=timeout, verify=_ssl_context(settings), follow_redirects=False)


def _ssl_context(settings: DeliverySettings) -> ssl.SSLContext | bool:
    tls = settings.tls
    if not tls.verify and tls.cert_file is None:
        return False
    return client_ssl_context(tls)

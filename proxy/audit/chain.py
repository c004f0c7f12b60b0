"""The local audit log: an append-only, hash-chained JSON-lines file of audit records with signed checkpoints.

HIPAA 164.312(b) asks for audit controls and 164.312(c) for integrity controls: the log must show who did
what, and any later change to it must be detectable. Each line of the file is one of:

``{"seq":N,"prev":"<hex>","request":{...},"hash":"<hex>"}``
    A request record: one request's entry (``proxy.audit.entry``), the facts its BALP AuditEvents are made
    of, as canonical JSON (orjson, keys sorted, no spaces). This is what the proxy writes, one per request:
    the events are made from it when the log is read (``read_events``), always the same ones. ``hash`` is
    the hex SHA-256 of ``b"<seq>|<prev>|request|"`` followed by the canonical entry bytes, so it commits to
    the record's whole content and kind; ``prev`` is the previous record's ``hash`` (64 zeros for the first
    record of a chain, or ``first_prev`` when a file continues an earlier one). ``seq`` counts records from 1
    in each file. Editing, deleting, inserting or reordering a record breaks ``hash``, ``seq`` or ``prev``.

``{"seq":N,"prev":"<hex>","event":{...},"hash":"<hex>"}``
    An event record: one AuditEvent as it is, as canonical JSON; ``hash`` is the SHA-256 of
    ``b"<seq>|<prev>|"`` followed by the canonical event bytes (an event starts with ``{``, so the two kinds
    never hash the same bytes). Otherwise like a request record.

``{"checkpoint":N,"hash":"<hex>","at":"<instant>","mac":"<hex>"}``
    A checkpoint: record ``N`` (the last record before it) has ``hash``, signed at ``at`` with
    HMAC-SHA256 under the log key (or ``"sig"``: an Ed25519 signature, when the writer holds an Ed25519
    private key and the verifier its public key). The signed payload is ``CHECKPOINT_CONTEXT`` followed by
    the canonical JSON of ``{"at", "checkpoint", "hash"}``. Written every ``checkpoint_every`` records and
    on ``close()``.

Why checkpoints: the hash chain alone only proves the file is self-consistent. Anyone who can write the
file can edit a record and recompute every later ``prev``/``hash``; the result chains perfectly. A signed
checkpoint binds the chain to a key that such an attacker lacks: rewriting any record before a checkpoint
changes the hash that checkpoint signed, and a new checkpoint cannot be forged without the key. Keep the
key out of reach of whoever can write the log (with Ed25519 the verifier needs only the public key).

The writer is fast (one canonical dump, one SHA-256 and one ``write`` per record, under a lock), holds an
exclusive ``flock`` on the file (one writer per file: give each worker process its own file) and refuses to
continue a file whose tail does not verify (fail closed).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final, Literal

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from proxy.audit.entry import EntryError, entry_events, entry_record

__all__ = [
    "CHECKPOINT_CONTEXT",
    "GENESIS",
    "MIN_KEY_BYTES",
    "RECORD_KINDS",
    "AuditChainWriter",
    "AuditLogError",
    "SigningKey",
    "VerifyReport",
    "VerifyingKey",
    "canonical",
    "read_events",
    "record_hash",
    "record_kind",
    "verify_chain",
]

GENESIS: Final = "0" * 64
"""The ``prev`` of the first record of a chain."""

CHECKPOINT_CONTEXT: Final = b"fhirwall-audit-checkpoint-v1\n"
"""Prefix of every signed checkpoint payload (keeps these signatures apart from any other use of the key)."""

MIN_KEY_BYTES: Final = 16

SigningKey = bytes | Ed25519PrivateKey
VerifyingKey = bytes | Ed25519PublicKey | Ed25519PrivateKey

_HEX64 = re.compile(r"[0-9a-f]{64}")
RECORD_KINDS: Final = ("request", "event")
"""The kinds of record: the key of the record's content in its line."""
_RECORD_KEYS = {frozenset(("seq", "prev", kind, "hash")): kind for kind in RECORD_KINDS}
_HASH_PREFIX = {"request": b"%d|%s|request|", "event": b"%d|%s|"}
_CHECKPOINT_MARK = b'{"checkpoint":'
_RECORD_LINE = {
    kind: b'{"seq":%d,"prev":"%s","' + kind.encode() + b'":%s,"hash":"%s"}\n' for kind in RECORD_KINDS
}
_MAX_PROBLEMS = 1000
_FORGED = "(the checkpoint was edited or forged, or this is not its key)"


class AuditLogError(Exception):
    """The audit log cannot be written (tampered or truncated tail, another writer, an I/O failure)."""


def canonical(value: Any) -> bytes:
    """Canonical JSON bytes: orjson with sorted keys, no whitespace."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def record_hash(seq: int, prev: str, body: bytes, kind: str = "event") -> str:
    """The hex SHA-256 of a record: ``b"<seq>|<prev>|"`` (``b"<seq>|<prev>|request|"`` for a request record)
    followed by ``body``, the canonical JSON of its content."""
    digest = hashlib.sha256(_HASH_PREFIX[kind] % (seq, prev.encode("ascii")))
    digest.update(body)
    return digest.hexdigest()


def record_kind(item: object) -> str | None:
    """``request`` or ``event`` for a parsed record line (exactly its four keys), else None."""
    return _RECORD_KEYS.get(frozenset(item)) if isinstance(item, dict) else None


def _checkpoint_payload(seq: int, digest: str, at: str) -> bytes:
    return CHECKPOINT_CONTEXT + canonical({"checkpoint": seq, "hash": digest, "at": at})


def _is_hex64(value: object) -> bool:
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _check_hmac_key(key: bytes) -> bytes:
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the audit log key must be at least {MIN_KEY_BYTES} bytes")
    return key


# -- checkpoint signatures ---------------------------------------------------------------------------------


class _Checker:
    """Checks a checkpoint's ``mac`` (HMAC key) or ``sig`` (Ed25519 public key)."""

    def __init__(self, key: VerifyingKey) -> None:
        if isinstance(key, Ed25519PrivateKey):
            key = key.public_key()
        self._key = _check_hmac_key(key) if isinstance(key, bytes) else key

    def problem(self, item: Mapping[str, Any]) -> str | None:
        """Why the checkpoint's signature is not valid, or None."""
        payload = _checkpoint_payload(item["checkpoint"], item["hash"], item["at"])
        if isinstance(self._key, bytes):
            if "mac" not in item:
                return "checkpoint is signed with Ed25519 but an HMAC key was given"
            expected = hmac.new(self._key, payload, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(expected, item["mac"]):
                return f"checkpoint mac is not valid {_FORGED}"
            return None
        if "sig" not in item:
            return "checkpoint has an HMAC mac but an Ed25519 public key was given"
        try:
            self._key.verify(bytes.fromhex(item["sig"]), payload)
        except (InvalidSignature, ValueError):
            return f"checkpoint signature is not valid {_FORGED}"
        return None


class _Signer:
    def __init__(self, key: SigningKey) -> None:
        self._key = _check_hmac_key(key) if isinstance(key, bytes) else key
        self.checker = _Checker(key)

    def sign(self, seq: int, digest: str, at: str) -> tuple[str, str]:
        """The signature field name and hex value for a checkpoint."""
        payload = _checkpoint_payload(seq, digest, at)
        if isinstance(self._key, bytes):
            return "mac", hmac.new(self._key, payload, hashlib.sha256).hexdigest()
        return "sig", self._key.sign(payload).hex()


# -- verification ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The result of ``verify_chain``.

    ``ok`` is true when there is no problem; ``problems`` name the line and what is wrong there;
    ``warnings`` are what a verifier cannot decide (records after the last signed checkpoint, checkpoints
    not checked for lack of a key, a chain continuing an earlier file). ``last_seq``/``last_hash`` describe
    the last record (``last_hash`` is the ``first_prev`` of a file that continues this one).
    """

    ok: bool
    records: int
    checkpoints: int
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    last_seq: int | None = None
    last_hash: str | None = None


class _ChainCheck:
    """Line-by-line verification state, shared by ``verify_chain`` and the writer's tail check.

    ``seq``/``hash`` None means "not known yet": the first item (a checkpoint when resuming from one)
    supplies them. ``entries``: also check that every request record holds an entry that can be read.
    """

    def __init__(
        self, checker: _Checker | None, *, seq: int | None, prev: str | None, entries: bool = False
    ) -> None:
        self.checker = checker
        self.entries = entries
        self.seq = seq
        self.hash = prev
        self.first_prev: str | None = None
        self.records = 0
        self.checkpoints = 0
        self.problems: list[tuple[int, str]] = []
        self.more_problems = 0
        self.uncovered = 0
        self.uncovered_from: tuple[int, int] | None = None  # (line, seq) of the first record not covered
        self.last_line = 0

    def problem(self, line: int, message: str) -> None:
        if len(self.problems) < _MAX_PROBLEMS:
            self.problems.append((line, message))
        else:
            self.more_problems += 1

    def feed(self, line: int, raw: bytes) -> None:
        self.last_line = line
        if not raw.endswith(b"\n"):
            self.problem(
                line,
                f"truncated last line ({len(raw)} bytes, no newline): "
                "an interrupted write, or the file was cut",
            )
            return
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self.problem(line, "empty line" if not raw.strip() else "not valid JSON")
            return
        if isinstance(item, dict) and "checkpoint" in item:
            self._checkpoint(line, item)
        elif (kind := record_kind(item)) is not None:
            self._record(line, item, kind)
        else:
            self.problem(line, "neither an audit record nor a checkpoint")

    def _record(self, line: int, item: dict[str, Any], kind: str) -> None:
        seq, prev, content, digest = item["seq"], item["prev"], item[kind], item["hash"]
        if not (_is_int(seq) and _is_hex64(prev) and isinstance(content, dict) and _is_hex64(digest)):
            self.problem(line, "malformed record (seq must be an integer, prev and hash 64 hex digits)")
            return
        wrong = []
        first = self.records == 0 and self.seq == 0
        self.records += 1
        if first and seq != 1:
            wrong.append(f"the log starts at seq {seq}, not 1 (records at the beginning were deleted)")
        elif self.seq is not None and seq != self.seq + 1:
            wrong.append(f"seq {seq} where {self.seq + 1} was expected (records deleted, inserted or moved)")
        if first and self.hash is None:
            self.first_prev = prev
        elif self.hash is not None and prev != self.hash:
            if first:
                wrong.append(
                    "prev is not the start of the chain (records at the beginning were deleted, "
                    "or the file continues another: give its last hash as first_prev)"
                )
            else:
                wrong.append("prev does not match the previous record's hash (the chain is broken here)")
        if record_hash(seq, prev, canonical(content), kind) != digest:
            wrong.append("hash does not match the record's content (the record was edited)")
        elif self.entries and kind == "request":
            try:
                entry_record(content)
            except EntryError as exc:
                wrong.append(f"the request record's entry cannot be read ({exc})")
        if wrong:
            self.problem(line, "; ".join(wrong))
        self.seq, self.hash = seq, digest
        if self.uncovered == 0:
            self.uncovered_from = (line, seq)
        self.uncovered += 1

    def _checkpoint(self, line: int, item: dict[str, Any]) -> None:
        signature = "mac" if "mac" in item else "sig"
        if not (
            set(item) == {"checkpoint", "hash", "at", signature}
            and _is_int(item["checkpoint"])
            and _is_hex64(item["hash"])
            and isinstance(item["at"], str)
            and isinstance(item[signature], str)
        ):
            self.problem(line, "malformed checkpoint (expected checkpoint, hash, at and mac or sig)")
            return
        self.checkpoints += 1
        seq, digest = item["checkpoint"], item["hash"]
        wrong = []
        if self.seq is not None and seq != self.seq:
            wrong.append(f"checkpoint for seq {seq} but the last record before it is seq {self.seq}")
        elif self.hash is not None and self.seq is not None and digest != self.hash:
            wrong.append(
                f"checkpoint hash is not the hash of record seq {seq} (records before it were changed)"
            )
        if self.checker is not None and (bad := self.checker.problem(item)) is not None:
            wrong.append(bad)
        if wrong:
            self.problem(line, "; ".join(wrong))
            if self.seq is None:  # resuming from a checkpoint that is not valid: nothing to go on
                self.seq, self.hash = seq, digest
            return
        if self.seq is None:
            self.seq, self.hash = seq, digest
        self.uncovered, self.uncovered_from = 0, None

    def formatted_problems(self, line_offset: int = 0) -> list[str]:
        problems = [f"line {line + line_offset}: {message}" for line, message in self.problems]
        if self.more_problems:
            problems.append(f"... and {self.more_problems} more problem(s)")
        return problems


def verify_chain(
    path: Path,
    *,
    key: VerifyingKey | None,
    first_prev: str | None = GENESIS,
    max_uncovered: int | None = None,
) -> VerifyReport:
    """Check every line of the audit log at ``path`` (streaming, constant memory).

    Problems (``ok`` false): an edited record (its hash no longer matches), a deleted, inserted or moved
    record (a ``seq`` gap or a ``prev`` that is not the previous record's hash), a checkpoint that does not
    match the record before it, a checkpoint whose ``mac``/``sig`` does not verify under ``key`` (edited,
    forged, or the wrong key), malformed lines, a request record whose entry cannot be read (so its
    AuditEvents cannot be made) and a truncated last line. With ``key`` None the checkpoints' signatures are
    not checked (a warning): the chain alone cannot show the file was not rewritten.

    ``first_prev`` is the ``prev`` the first record must have: ``GENESIS`` for a new chain, the last hash of
    the previous file when this one continues it, or None to accept any (a warning names it).

    The limit of any self-contained log: records after the last signed checkpoint are not covered by a
    signature, and deleting whole lines from the end of the file (back to any checkpoint, checkpoint
    included) leaves a file that verifies. So such records are reported as a warning "not yet covered by a
    signed checkpoint" (a crash between checkpoints looks the same), or as a problem when there are more than
    ``max_uncovered`` of them (a writer that checkpoints every N records never leaves more than N). Catching
    truncation at checkpoint boundaries needs the latest checkpoint kept somewhere else (a log shipper, a
    WORM store, a monitoring system that expects the sequence to grow).
    """
    if first_prev is not None and not _is_hex64(first_prev):
        raise ValueError("first_prev must be 64 lowercase hex digits")
    checker = None if key is None else _Checker(key)
    check = _ChainCheck(checker, seq=0, prev=first_prev, entries=True)
    with path.open("rb") as file:
        for line, raw in enumerate(file, 1):
            check.feed(line, raw)
    warnings: list[str] = []
    if check.records == 0 and not check.problems:
        warnings.append("the log holds no records")
    if first_prev is None and check.first_prev is not None and check.first_prev != GENESIS:
        warnings.append(f"the chain continues an earlier file (first prev {check.first_prev})")
    problems = check.formatted_problems()
    if checker is None and check.checkpoints:
        warnings.append(
            f"no key: the signatures of {check.checkpoints} checkpoint(s) were not checked; the hash chain "
            "alone shows the file is consistent, not that it was not rewritten"
        )
    if check.uncovered and check.uncovered_from is not None:
        first_line, first_seq = check.uncovered_from
        message = (
            f"lines {first_line}-{check.last_line}: {check.uncovered} record(s) "
            f"(seq {first_seq}-{check.seq}) not yet covered by a signed checkpoint "
            "(a crash since the last checkpoint, or records changed or appended after it, look the same)"
        )
        if max_uncovered is not None and check.uncovered > max_uncovered:
            problems.append(f"{message}: more than {max_uncovered}, so a checkpoint is missing")
        else:
            warnings.append(message)
    return VerifyReport(
        ok=not problems,
        records=check.records,
        checkpoints=check.checkpoints,
        problems=problems,
        warnings=warnings,
        last_seq=check.seq if check.records else None,
        last_hash=check.hash if check.records else None,
    )


def read_events(path: Path) -> Iterator[dict[str, Any]]:
    """The AuditEvents of the log, in order (streaming, constant memory; nothing is verified).

    A request record gives the BALP AuditEvents made from its entry, an event record its event.
    Checkpoints are skipped, and so is a last line without a newline (a record still being written).
    ``AuditLogError`` names a line that is not a record or checkpoint, or a request record that cannot be
    read. Use ``verify_chain`` to check the log.
    """
    with path.open("rb") as file:
        for line, raw in enumerate(file, 1):
            if not raw.endswith(b"\n"):
                return
            try:
                item = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise AuditLogError(f"{path}: line {line}: not valid JSON") from None
            kind = record_kind(item)
            if kind == "request":
                try:
                    yield from entry_events(item["request"])
                except EntryError as exc:
                    raise AuditLogError(f"{path}: line {line}: {exc}") from None
            elif kind == "event" and isinstance(item["event"], dict):
                yield item["event"]
            elif not (isinstance(item, dict) and "checkpoint" in item):
                raise AuditLogError(f"{path}: line {line}: neither an audit record nor a checkpoint")


# -- writing -----------------------------------------------------------------------------------------------


def _lock_file(fd: int, path: Path) -> None:
    """An exclusive advisory lock for as long as ``fd`` is open: one writer per file."""
    if sys.platform == "win32":  # pragma: no cover - no flock; the deployment must keep one writer
        return
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise AuditLogError(
            f"{path} is already being written by another writer; "
            "each writer (each worker process) needs its own audit log file"
        ) from None


def _last_checkpoint_offset(file: IO[bytes], size: int, block: int = 1 << 16) -> int:
    """The byte offset of the last line that starts like a checkpoint, or 0 (read backwards in blocks)."""
    mark = len(_CHECKPOINT_MARK)
    carry = b""
    position = size
    while position > 0:
        start = max(0, position - block)
        file.seek(start)
        chunk = file.read(position - start)
        buffer = chunk + carry[:mark]
        index = len(chunk)
        while (index := chunk.rfind(b"\n", 0, index)) >= 0:
            if buffer.startswith(_CHECKPOINT_MARK, index + 1):
                return start + index + 1
        if start == 0 and buffer.startswith(_CHECKPOINT_MARK):
            return 0
        carry = buffer
        position = start
    return 0


def _count_lines(file: IO[bytes], end: int) -> int:
    file.seek(0)
    count, remaining = 0, end
    while remaining > 0:
        chunk = file.read(min(remaining, 1 << 20))
        if not chunk:
            break
        count += chunk.count(b"\n")
        remaining -= len(chunk)
    return count


@dataclass(frozen=True, slots=True)
class _Tail:
    seq: int
    hash: str
    uncovered: int


def _read_tail(path: Path, checker: _Checker, first_prev: str) -> _Tail:
    """Verify the file from its last checkpoint (or its start) to the end; raise if that does not verify."""
    with path.open("rb") as file:
        size = file.seek(0, os.SEEK_END)
        if size == 0:
            return _Tail(0, first_prev, 0)
        offset = _last_checkpoint_offset(file, size)
        # From the start, the first prev is whatever the file began with (first_prev is for new files).
        check = _ChainCheck(checker, seq=None if offset else 0, prev=None)
        file.seek(offset)
        for line, raw in enumerate(file, 1):
            check.feed(line, raw)
        if check.problems:
            skipped = _count_lines(file, offset)
            problems = check.formatted_problems(line_offset=skipped)
            details = "; ".join(problems[:3]) + (
                f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
            )
            raise AuditLogError(
                f"refusing to append to {path}: its tail does not verify: {details}. "
                f"Run `fhirwall audit verify {path}`, keep the file as evidence and start a new log file."
            )
        if check.seq is None or check.hash is None:  # pragma: no cover - a non-empty file sets both
            raise AuditLogError(f"refusing to append to {path}: no record or checkpoint found")
        return _Tail(check.seq, check.hash, check.uncovered)


class AuditChainWriter:
    """Appends records to a hash-chained log file; thread-safe; one writer per file (``flock``).

    ``append_request`` writes a request's entry (what the proxy writes), ``append`` an AuditEvent as it is.

    ``key`` signs the checkpoints: HMAC-SHA256 with ``bytes`` (at least 16), or an Ed25519 private key.
    A checkpoint is written every ``checkpoint_every`` records and on ``close()``. ``fsync``: ``always``
    syncs every record before ``append`` returns, ``interval`` at most once per ``fsync_interval`` seconds
    (checked when appending and on checkpoints; the ``fsync`` runs in a background thread, so appending never
    waits for the disk, and a failed one makes the next append fail; call ``sync()`` from a timer to bound
    the window when idle), ``never`` leaves it to the OS; ``close()`` syncs unless ``never``. Every record is
    handed to the OS by its own ``write`` before ``append`` returns: a crash of the process loses nothing,
    only a crash of the machine can lose unsynced records.

    Opening an existing file continues its chain after verifying its tail (from the last checkpoint, whose
    signature must verify under ``key``); a tail that does not verify raises ``AuditLogError``. ``first_prev``
    is the ``prev`` of the first record of a new (empty) file: ``GENESIS``, or the last hash of the previous
    file when rotating. After a failed write the writer refuses every further append (fail closed).
    """

    def __init__(
        self,
        path: Path,
        *,
        key: SigningKey,
        checkpoint_every: int = 1000,
        fsync: Literal["always", "interval", "never"] = "interval",
        fsync_interval: float = 1.0,
        first_prev: str = GENESIS,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be at least 1")
        if fsync not in ("always", "interval", "never"):
            raise ValueError(f"fsync must be always, interval or never, not {fsync!r}")
        if not _is_hex64(first_prev):
            raise ValueError("first_prev must be 64 lowercase hex digits")
        self.path = path
        self._signer = _Signer(key)
        self._every = checkpoint_every
        self._fsync = fsync
        self._interval = fsync_interval
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._failed: str | None = None
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags, 0o600)  # the log holds PHI: owner only
        try:
            _lock_file(fd, path)
            tail = _read_tail(path, self._signer.checker, first_prev)
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd
        self._seq = tail.seq
        self._hash = tail.hash.encode("ascii")
        self._uncovered = tail.uncovered
        self._synced = time.monotonic()
        self._syncer: threading.Thread | None = None
        self._sync_wanted = threading.Event()

    @property
    def seq(self) -> int:
        """The seq of the last record written (0 when none)."""
        return self._seq

    @property
    def last_hash(self) -> str:
        """The hash of the last record (``first_prev`` of a file that would continue this one)."""
        return self._hash.decode("ascii")

    def append(self, event: Mapping[str, Any]) -> int:
        """Write one AuditEvent as the next record; returns its seq. ``AuditLogError`` when it cannot."""
        return self._append("event", [canonical(event)])

    def append_request(self, entry: Mapping[str, Any]) -> int:
        """Write one request's entry (``proxy.audit.entry.request_entry``) as the next record; returns its
        seq. ``AuditLogError`` when it cannot."""
        return self._append("request", [canonical(entry)])

    def append_requests(self, entries: Sequence[Mapping[str, Any]]) -> int:
        """Write several requests' entries as the next records, in one write; returns the last one's seq.
        ``AuditLogError`` when they cannot be written (then none of them counts as written)."""
        return self._append("request", [canonical(entry) for entry in entries])

    def _append(self, kind: str, bodies: list[bytes]) -> int:
        """Chain ``bodies`` on as records of ``kind`` and write them with one ``write``."""
        with self._lock:
            fd = self._usable()
            if not bodies:
                return self._seq
            seq, prev = self._seq, self._hash
            prefix, template = _HASH_PREFIX[kind], _RECORD_LINE[kind]
            lines = []
            for body in bodies:
                seq += 1
                digest = hashlib.sha256(prefix % (seq, prev) + body).hexdigest().encode("ascii")
                lines.append(template % (seq, prev, body, digest))
                prev = digest
            self._write(fd, b"".join(lines))
            self._seq, self._hash = seq, prev
            self._uncovered += len(lines)
            if self._uncovered >= self._every:
                self._checkpoint(fd)
            else:
                self._after_write(fd)
            return seq

    def checkpoint(self) -> None:
        """Write a signed checkpoint now (if any record is not yet covered by one)."""
        with self._lock:
            fd = self._usable()
            if self._uncovered:
                self._checkpoint(fd)

    def sync(self) -> None:
        """Flush the records written so far to stable storage."""
        with self._lock:
            self._sync(self._usable())

    def close(self) -> None:
        """Checkpoint the records not yet covered, sync and release the file (idempotent)."""
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is None:
                return
            try:
                if self._failed is None and self._uncovered:
                    self._checkpoint(fd, sync=False)
                self._stop_syncer()
                if self._failed is None and self._fsync != "never":
                    os.fsync(fd)
            finally:
                os.close(fd)

    def __enter__(self) -> AuditChainWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _usable(self) -> int:
        if self._failed is not None:
            raise AuditLogError(
                f"the audit log {self.path} failed earlier and takes no more records: {self._failed}"
            )
        if self._fd is None:
            raise AuditLogError(f"the audit log {self.path} is closed")
        return self._fd

    def _checkpoint(self, fd: int, *, sync: bool = True) -> None:
        at = _instant(self._clock())
        digest = self._hash.decode("ascii")
        name, signature = self._signer.sign(self._seq, digest, at)
        self._write(
            fd, orjson.dumps({"checkpoint": self._seq, "hash": digest, "at": at, name: signature}) + b"\n"
        )
        self._uncovered = 0
        if sync:
            self._after_write(fd)

    def _after_write(self, fd: int) -> None:
        """Sync as ``fsync`` says: now (``always``) or, when the interval has passed, in the background."""
        if self._fsync == "always":
            self._sync(fd)
        elif self._fsync == "interval" and time.monotonic() - self._synced >= self._interval:
            self._synced = time.monotonic()
            if self._syncer is None:
                self._syncer = threading.Thread(
                    target=self._sync_loop, name="fhirwall-audit-fsync", daemon=True
                )
                self._syncer.start()
            self._sync_wanted.set()

    def _sync_loop(self) -> None:
        """The background syncer of ``interval``: an ``fsync`` each time one is due, until closing."""
        while True:
            self._sync_wanted.wait()
            self._sync_wanted.clear()
            fd = self._fd
            if fd is None:  # closing: close() syncs itself once this thread is gone
                return
            try:
                os.fsync(fd)
            except OSError as exc:
                self._failed = f"fsync: {exc.strerror}"  # the next append refuses (fail closed)
                return

    def _stop_syncer(self) -> None:
        """Let the background syncer finish (called with ``_fd`` already None, before the file is closed)."""
        if self._syncer is not None:
            self._sync_wanted.set()
            self._syncer.join()
            self._syncer = None

    def _write(self, fd: int, data: bytes) -> None:
        try:
            written = os.write(fd, data)
            if written < len(data):  # rare: a short write (a signal, a full disk being filled up)
                view = memoryview(data)[written:]
                while view:
                    view = view[os.write(fd, view) :]
        except OSError as exc:
            self._failed = f"{type(exc).__name__}: {exc.strerror}"
            raise AuditLogError(f"cannot write the audit log {self.path}: {self._failed}") from exc

    def _sync(self, fd: int) -> None:
        try:
            os.fsync(fd)
        except OSError as exc:
            self._failed = f"fsync: {exc.strerror}"
            raise AuditLogError(f"cannot sync the audit log {self.path}: {self._failed}") from exc
        self._synced = time.monotonic()

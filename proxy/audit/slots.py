"""One audit log per worker process: each worker claims a slot and writes its own hash-chained file.

A chain has one writer, so with ``server.workers > 1`` every worker takes the first free slot ``i`` (an
exclusive, non-blocking ``flock`` on ``<log>.slot-<i>.lock``, held for as long as the worker runs) and writes
``<stem>.<i><suffix>`` (``audit.jsonl`` gives ``audit.0.jsonl``, ``audit.1.jsonl``, ...). A worker that is
restarted finds its slot free again and continues that file's chain. The lock files are never removed: an
unlocked one is a free slot. With one worker the configured file is used as it is.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from proxy.audit.chain import AuditLogError

__all__ = ["MAX_SLOTS", "LogSlot", "claim_slot", "claimed_log", "slot_lock_path", "slot_log_path"]

MAX_SLOTS: Final = 256
"""The most slots tried before giving up (far more than ``server.workers`` allows)."""

_claimed: dict[Path, Path] = {}


def slot_log_path(log_file: Path, index: int) -> Path:
    """The log file of slot ``index``: ``<stem>.<index><suffix>`` next to ``log_file``."""
    return log_file.with_name(f"{log_file.stem}.{index}{log_file.suffix}")


def slot_lock_path(log_file: Path, index: int) -> Path:
    """The lock file whose ``flock`` holds slot ``index``: ``<log>.slot-<index>.lock``."""
    return log_file.with_name(f"{log_file.name}.slot-{index}.lock")


@dataclass(slots=True)
class LogSlot:
    """A claimed slot: its index, its log file, and the open lock file that holds it."""

    log_file: Path
    index: int
    path: Path
    _fd: int | None = field(repr=False)

    def release(self) -> None:
        """Free the slot (idempotent); a later claimant may take it and continue its file."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
            if _claimed.get(self.log_file) == self.path:
                del _claimed[self.log_file]


def claim_slot(log_file: Path, limit: int = MAX_SLOTS) -> LogSlot:
    """Claim the first free slot of ``log_file``; ``AuditLogError`` when none of ``limit`` is free."""
    if sys.platform == "win32":  # pragma: no cover - no flock
        raise AuditLogError("an audit log per worker needs flock (POSIX)")
    for index in range(limit):
        fd = _try_lock(slot_lock_path(log_file, index))
        if fd is not None:
            slot = LogSlot(log_file, index, slot_log_path(log_file, index), fd)
            _claimed[log_file] = slot.path
            return slot
    raise AuditLogError(f"all {limit} per-worker slots of {log_file} are held by running processes")


def claimed_log(log_file: Path) -> Path:
    """The file this process writes for the configured ``log_file``: its slot's file, or ``log_file``."""
    return _claimed.get(log_file, log_file)


def _try_lock(path: Path) -> int | None:
    """An open descriptor of ``path`` holding its exclusive ``flock``, or None when another holds it."""
    import fcntl

    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd

"""Reading several audit logs as one (one log per worker process): naming the files and merging events.

The commands take files or glob patterns (quoted, so the shell leaves them alone: ``'audit.*.jsonl'``).
Each file is its own chain; their AuditEvents are merged by recorded time.
"""

from __future__ import annotations

import glob
import heapq
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from proxy.audit.chain import read_events
from proxy.audit.query import recorded_of
from proxy.settings import ConfigError

__all__ = ["log_files", "merged_events"]

_GLOB_CHARS = frozenset("*?[")
_UNDATED = datetime.min.replace(tzinfo=UTC)


def log_files(names: Iterable[Path], flag: str = "file") -> list[Path]:
    """The log files named (glob patterns expanded, each file once); ``ConfigError`` names a missing one."""
    found: list[Path] = []
    problems: list[tuple[str, str]] = []
    for name in names:
        matches = _expand(name)
        if not matches:
            problems.append((flag, f"no audit log file {name}"))
        found.extend(path for path in matches if path not in found)
    if problems:
        raise ConfigError(problems)
    return found


def _expand(name: Path) -> list[Path]:
    if name.is_file():
        return [name]
    if _GLOB_CHARS.isdisjoint(str(name)):
        return []
    return [Path(match) for match in sorted(glob.glob(str(name))) if Path(match).is_file()]


def merged_events(paths: Sequence[Path]) -> Iterator[dict[str, Any]]:
    """The AuditEvents of all ``paths`` merged by recorded time (each file's own order is kept)."""
    if len(paths) == 1:
        return read_events(paths[0])
    return heapq.merge(*(read_events(path) for path in paths), key=_recorded)


def _recorded(event: dict[str, Any]) -> datetime:
    return recorded_of(event) or _UNDATED

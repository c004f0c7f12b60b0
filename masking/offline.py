"""Offline masking of files: one resource, a Bundle, NDJSON (Bulk Data export files) or a folder of them.

NDJSON is streamed line by line (memory stays flat whatever the file size); a JSON file holds one resource or
one Bundle and is read whole. ``.gz`` files are read and written compressed. The engine is the proxy's: the
same compiled profile masks the same way in both places. Errors never leak values: a failing line is reported
by its number only.
"""

from __future__ import annotations

import gzip
import io
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import IO, Any

import orjson

from masking.compiler import CompiledProfile
from masking.engine import MaskingError, MaskStats

__all__ = ["FileMaskingError", "MaskJob", "input_files"]

_SUFFIXES = (".ndjson", ".json", ".ndjson.gz", ".json.gz")
Progress = Callable[[int], None]


class FileMaskingError(Exception):
    """A file could not be masked; the message names the file and line, never the data."""


@dataclass
class MaskJob:
    """Masks files with one compiled profile; ``stats`` accumulates over every file."""

    profile: CompiledProfile
    today: date | None = None
    stats: MaskStats = field(default_factory=MaskStats)

    def mask_file(self, source: Path, target: Path | None, progress: Progress | None = None) -> None:
        """Mask ``source`` into ``target`` (None: standard output), by file kind."""
        scope_key = self._scope_key(source)
        with _open_in(source) as reader, _open_out(target) as writer:
            if _is_ndjson(source):
                self._ndjson(reader, writer, source, scope_key, progress)
            else:
                self._json(reader, writer, source, scope_key, progress)

    def mask_tree(self, source: Path, target: Path, progress: Progress | None = None) -> int:
        """Mask every FHIR file below ``source`` into the same relative paths below ``target``."""
        count = 0
        for path in input_files(source):
            out = target / path.relative_to(source)
            out.parent.mkdir(parents=True, exist_ok=True)
            self.mask_file(path, out, progress)
            count += 1
        return count

    def _scope_key(self, source: Path) -> str | None:
        scope = self.profile.parameters.date_shift_scope
        if scope == "file":
            return source.name
        if scope == "folder":
            return source.parent.name
        return None

    def _ndjson(
        self,
        reader: IO[bytes],
        writer: IO[bytes],
        source: Path,
        scope_key: str | None,
        progress: Progress | None,
    ) -> None:
        for number, line in enumerate(reader, start=1):
            if progress:
                progress(len(line))
            if not line.strip():
                continue
            masked = self._one(line, f"{source}:{number}", scope_key)
            if masked is not None:
                writer.write(orjson.dumps(masked))
                writer.write(b"\n")

    def _json(
        self,
        reader: IO[bytes],
        writer: IO[bytes],
        source: Path,
        scope_key: str | None,
        progress: Progress | None,
    ) -> None:
        data = reader.read()
        if progress:
            progress(len(data))
        masked = self._one(data, str(source), scope_key)
        if masked is not None:
            writer.write(orjson.dumps(masked, option=orjson.OPT_INDENT_2))
            writer.write(b"\n")

    def _one(self, data: bytes, where: str, scope_key: str | None) -> dict[str, Any] | None:
        try:
            resource = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise FileMaskingError(f"{where}: not valid JSON") from None
        if not isinstance(resource, dict):
            raise FileMaskingError(f"{where}: not a FHIR resource (a JSON object)")
        try:
            return self.profile.mask(resource, stats=self.stats, scope_key=scope_key, today=self.today)
        except MaskingError as exc:
            raise FileMaskingError(f"{where}: {exc}") from None


def input_files(folder: Path) -> list[Path]:
    """FHIR files (``.json``, ``.ndjson``, gzipped or not) below ``folder``, in a stable order."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(_SUFFIXES))


def _is_ndjson(path: Path) -> bool:
    return path.name.endswith((".ndjson", ".ndjson.gz"))


@contextmanager
def _open_in(path: Path) -> Iterator[IO[bytes]]:
    with path.open("rb") as raw:
        if path.name.endswith(".gz"):
            with gzip.open(raw, "rb") as unzipped:
                yield io.BufferedReader(unzipped)
        else:
            yield raw


@contextmanager
def _open_out(path: Path | None) -> Iterator[IO[bytes]]:
    """Write to ``path`` through a temporary file renamed at the end (a failed run leaves no output)."""
    if path is None:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    temporary = path.with_name(path.name + ".partial")
    try:
        with temporary.open("wb") as raw:
            if path.name.endswith(".gz"):
                with gzip.open(raw, "wb") as zipped:
                    yield zipped  # type: ignore[misc]
            else:
                yield raw
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    temporary.replace(path)

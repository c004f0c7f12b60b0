"""Offline masking of files: one resource, a Bundle, NDJSON (Bulk Data export files) or a folder of them.

NDJSON is streamed line by line (memory stays flat whatever the file size); a JSON file holds one resource or
one Bundle and is read whole. ``.gz`` files are read and written compressed. The engine is the proxy's: the
same compiled profile masks the same way in both places. Errors never leak values: a failing line is reported
by its number only.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import sys
import zlib
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
        self._mask(source, target, progress, folder=source.parent, staged=None)

    def mask_tree(self, source: Path, target: Path, progress: Progress | None = None) -> int:
        """Mask every FHIR file below ``source`` into the same relative paths below ``target``.

        All or nothing: every output is written to a temporary file and the files are renamed into place
        only when every input was masked, so a failed run leaves no output (and keeps earlier outputs).
        Date-shift scope ``folder`` uses the name of ``source`` for every file, as the anonymizer does.
        """
        staged: list[tuple[Path, Path]] = []
        created: list[Path] = []
        try:
            for path in input_files(source):
                out = target / path.relative_to(source)
                created += _make_folders(out.parent)
                self._mask(path, out, progress, folder=source, staged=staged)
        except BaseException:
            for temporary, _ in staged:
                temporary.unlink(missing_ok=True)
            for folder in reversed(created):
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise
        for temporary, final in staged:
            temporary.replace(final)
        return len(staged)

    def _mask(
        self,
        source: Path,
        target: Path | None,
        progress: Progress | None,
        *,
        folder: Path,
        staged: list[tuple[Path, Path]] | None,
    ) -> None:
        scope_key = self._scope_key(source, folder)
        try:
            with _open_in(source) as (reader, position), _open_out(target, staged) as writer:
                meter = _Meter(progress, position) if progress else None
                if _is_ndjson(source):
                    self._ndjson(reader, writer, source, scope_key, meter)
                else:
                    self._json(reader, writer, source, scope_key, meter)
                if meter:
                    meter.flush()
        except (OSError, EOFError, zlib.error) as exc:
            raise FileMaskingError(_io_problem(source, target, exc)) from None

    def _scope_key(self, source: Path, folder: Path) -> str | None:
        """MS scopes: the file's name, or the input folder's name (however the path was spelt)."""
        scope = self.profile.parameters.date_shift_scope
        if scope == "file":
            return source.name
        if scope == "folder":
            return Path(os.path.abspath(folder)).name
        return None

    def _ndjson(
        self,
        reader: IO[bytes],
        writer: IO[bytes],
        source: Path,
        scope_key: str | None,
        meter: _Meter | None,
    ) -> None:
        for number, line in enumerate(reader, start=1):
            if meter:
                meter.tick()
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
        meter: _Meter | None,
    ) -> None:
        data = reader.read()
        if meter:
            meter.tick()
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


class _Meter:
    """Reports progress in bytes of the file as stored (compressed bytes for ``.gz``), in batches."""

    _BATCH = 1 << 18

    def __init__(self, progress: Progress, position: Callable[[], int]) -> None:
        self._progress = progress
        self._position = position
        self._reported = 0

    def tick(self) -> None:
        if self._position() - self._reported >= self._BATCH:
            self.flush()

    def flush(self) -> None:
        now = self._position()
        if now > self._reported:
            self._progress(now - self._reported)
            self._reported = now


def _make_folders(folder: Path) -> list[Path]:
    """``mkdir -p folder``; returns the folders it created, outermost first."""
    missing: list[Path] = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
    return missing[::-1]


def _io_problem(source: Path, target: Path | None, exc: BaseException) -> str:
    """What went wrong reading ``source`` or writing ``target``, without any of the data."""
    if isinstance(exc, gzip.BadGzipFile):
        return f"{source}: not a gzip file"
    if isinstance(exc, EOFError | zlib.error):
        return f"{source}: truncated or corrupt gzip data"
    if isinstance(exc, OSError):
        where = exc.filename or (target if target is not None else source)
        return f"{where}: {exc.strerror or type(exc).__name__}"
    return f"{source}: {type(exc).__name__}"


@contextmanager
def _open_in(path: Path) -> Iterator[tuple[IO[bytes], Callable[[], int]]]:
    """The decompressed content of ``path`` and how many bytes of the stored file were read so far."""
    with path.open("rb") as raw:
        if path.name.endswith(".gz"):
            with gzip.open(raw, "rb") as unzipped:
                yield io.BufferedReader(unzipped), raw.tell
        else:
            yield raw, raw.tell


@contextmanager
def _open_out(path: Path | None, staged: list[tuple[Path, Path]] | None = None) -> Iterator[IO[bytes]]:
    """Write to ``path`` through a temporary file renamed at the end (a failed run leaves no output).

    With ``staged``, the rename is left to the caller: ``(temporary, path)`` is appended instead.
    """
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
    if staged is None:
        temporary.replace(path)
    else:
        staged.append((temporary, path))

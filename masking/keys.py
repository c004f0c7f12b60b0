"""Key material for masking: where a named key comes from and how its bytes are read.

Profiles name keys (``crypto_hash_key: hash``) but never need to hold them: the bytes come from the
environment, a file (a Kubernetes secret mount) or, for tests and self-contained examples only, an inline
value. Sources are resolved once at start-up; a missing or unreadable key is a start-up problem.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["KeySource", "resolve_keys"]


class KeySource(BaseModel):
    """One secret: exactly one of ``env``, ``file`` or ``value``; decoded as ``encoding``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    env: str | None = Field(None, description="Environment variable holding the key.")
    file: Path | None = Field(None, description="File holding the key (trailing newline ignored).")
    value: str | None = Field(None, description="Inline key; for tests and examples only.")
    encoding: Literal["utf8", "base64", "hex"] = Field(
        "utf8", description="How the text is turned into key bytes."
    )

    @model_validator(mode="after")
    def _one_source(self) -> KeySource:
        given = [name for name in ("env", "file", "value") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of env, file, value")
        return self

    def read(self, environ: Mapping[str, str]) -> bytes:
        """The key bytes; ``ValueError`` says what is missing or malformed (never the key itself)."""
        return _decode(self._text(environ), self.encoding)

    def _text(self, environ: Mapping[str, str]) -> str:
        if self.env is not None:
            if not environ.get(self.env):
                raise ValueError(f"environment variable {self.env} is not set")
            return environ[self.env]
        if self.file is not None:
            try:
                return self.file.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ValueError(f"cannot read key file {self.file}: {exc.strerror}") from None
        return self.value or ""


def _decode(text: str, encoding: str) -> bytes:
    if not text:
        raise ValueError("key is empty")
    try:
        if encoding == "base64":
            return base64.b64decode(text, validate=True)
        if encoding == "hex":
            return bytes.fromhex(text)
    except (binascii.Error, ValueError):
        raise ValueError(f"key is not valid {encoding}") from None
    return text.encode("utf-8")


def resolve_keys(
    sources: Mapping[str, KeySource], environ: Mapping[str, str] | None = None
) -> tuple[dict[str, bytes], list[tuple[str, str]]]:
    """Read every named key; returns the keys read and ``(name, problem)`` for each that failed."""
    env = os.environ if environ is None else environ
    keys: dict[str, bytes] = {}
    problems: list[tuple[str, str]] = []
    for name, source in sources.items():
        try:
            keys[name] = source.read(env)
        except ValueError as exc:
            problems.append((name, str(exc)))
    return keys, problems

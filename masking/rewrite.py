"""A rewrite of an answer's JSON text applied before masking, named so cached results can include it.

The proxy rebases upstream URLs on its public base this way: masking then works on what the client will see,
and a Bundle's entry array found in the cache (``masking.bundles``) was rewritten and masked once, rather
than rewritten again on every answer. The rewrite must be deterministic, keep the text valid JSON, and be
the same function whenever ``name`` is the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["InputRewrite", "rewritten"]


@dataclass(frozen=True, slots=True)
class InputRewrite:
    """``apply`` rewrites JSON text; ``name`` identifies it (cached results are kept per name)."""

    name: str
    apply: Callable[[bytes], bytes]


def rewritten(text: bytes, rewrite: InputRewrite | None) -> bytes:
    """``text`` with the rewrite applied (as it is without one)."""
    return text if rewrite is None else rewrite.apply(text)

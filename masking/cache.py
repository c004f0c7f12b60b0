"""Masked resources already produced, by content: the proxy's answer to popular resources read again.

A masked resource depends only on its own content, the patient it belongs to, the scope key and the day
(ages); the key is a BLAKE2b digest of those. Values are the masked JSON (an ``orjson.Fragment``, spliced
into answers without re-serialising) and what masking did (for the audit counts). The cache is bounded
(least recently used entries go first) and only used for profiles whose methods are deterministic.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from datetime import date

import orjson

from masking.stats import MaskStats

__all__ = ["CachedMask", "MaskCache"]


@dataclass(frozen=True, slots=True)
class CachedMask:
    """One masked resource and what masking it did."""

    fragment: orjson.Fragment
    stats: MaskStats


class MaskCache:
    """A bounded LRU of masked resources keyed by a digest of what determines the result."""

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._entries: OrderedDict[bytes, CachedMask] = OrderedDict()

    @staticmethod
    def key(raw: bytes, patient: str | None, today: date, scope_key: str | None) -> bytes:
        """The digest naming a masked result."""
        digest = hashlib.blake2b(raw, digest_size=20)
        digest.update(f"\0{patient}\0{today.toordinal()}\0{scope_key}".encode())
        return digest.digest()

    def get(self, key: bytes) -> CachedMask | None:
        """The cached result, refreshed as most recently used."""
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        return found

    def put(self, key: bytes, value: CachedMask) -> None:
        """Remember a result, forgetting the least recently used beyond the bound."""
        self._entries[key] = value
        if len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

"""Masked results already produced, by content: the proxy's answer to popular resources and pages read again.

Two kinds of results share one bounded cache per profile:

- a masked resource, keyed by a BLAKE2b digest of its content, the patient it belongs to, the scope key and
  the day (ages); the value is its masked JSON (an ``orjson.Fragment``, spliced into answers without
  re-serialising) and what masking did (for the audit counts);
- a Bundle's masked ``entry`` array, found by the bytes the upstream sent for it and the day: the key holds
  their length and every 16th byte (cheap to hash), and a hit counts only when the whole bytes kept with the
  result are equal (a fast compare); the value is the masked array's JSON plus what masking it did to the
  Bundle (see ``masking.bundles``). A repeated search page has byte-identical entries even though its
  sealed paging links differ on every answer.

The cache is bounded by entries and by bytes (masked JSON, the source bytes kept with it, and a fixed
allowance per entry); least recently used entries go first. It is only used for profiles whose methods are
deterministic.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

import orjson

from masking.stats import MaskStats

__all__ = ["ENTRY_OVERHEAD", "CachedEntries", "CachedMask", "EntriesKey", "MaskCache"]

ENTRY_OVERHEAD = 512
"""Bytes counted per cached result beyond its JSON: key, stats, bookkeeping."""

EntriesKey = tuple[int, str | None, str | None, int, bytes]
"""A Bundle's entry array by content: (day ordinal, scope key, input rewrite name, the array's length and
every ``SAMPLE_STRIDE``-th byte of it as sent)."""

SAMPLE_STRIDE = 16
"""Any difference spanning this many bytes changes an entry array's key; smaller ones are caught by the
full compare on a hit."""


@dataclass(frozen=True, slots=True)
class CachedMask:
    """One masked resource and what masking it did."""

    fragment: orjson.Fragment
    stats: MaskStats
    size: int


@dataclass(frozen=True, slots=True)
class CachedEntries:
    """A Bundle's masked ``entry`` array and what masking it did to the Bundle.

    ``source``: the array's bytes as sent; ``changed``/``labels``: whether the Bundle's own elements in the
    array changed, and the labels that implies for the Bundle; ``patients``: Patient entry ``fullUrl`` -> id,
    read from the array; ``bound``: the Bundle id and patient the result was computed with, when masking
    read them (None: it did not, so the result holds for any Bundle carrying these entries).
    """

    source: bytes
    fragment: orjson.Fragment
    stats: MaskStats
    size: int
    changed: bool
    labels: frozenset[str]
    patients: Mapping[str, str]
    bound: tuple[str | None, str | None] | None


CacheKey = bytes | EntriesKey
Cached = CachedMask | CachedEntries


class MaskCache:
    """A LRU of masked results bounded by entries and bytes."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0
        self._entries: OrderedDict[CacheKey, Cached] = OrderedDict()

    @staticmethod
    def key(raw: bytes, patient: str | None, today: date, scope_key: str | None) -> bytes:
        """The digest naming a masked resource."""
        digest = hashlib.blake2b(raw, digest_size=20)
        digest.update(f"\0{patient}\0{today.toordinal()}\0{scope_key}".encode())
        return digest.digest()

    @staticmethod
    def entries_key(raw: bytes, today: date, scope_key: str | None, rewrite: str | None = None) -> EntriesKey:
        """The key under which the entry array ``raw`` (rewritten before masking by the rewrite named
        ``rewrite``, if any) is looked for: no digest of the whole to compute."""
        return (today.toordinal(), scope_key, rewrite, len(raw), raw[::SAMPLE_STRIDE])

    def get(self, key: bytes) -> CachedMask | None:
        """The cached resource, refreshed as most recently used."""
        found = self._touch(key)
        return found if isinstance(found, CachedMask) else None

    def get_entries(self, key: EntriesKey, raw: bytes) -> CachedEntries | None:
        """The cached entry array masked from exactly ``raw``, refreshed as most recently used."""
        found = self._touch(key)
        return found if isinstance(found, CachedEntries) and found.source == raw else None

    def put(self, key: CacheKey, value: Cached) -> None:
        """Remember a result, forgetting the least recently used beyond the bounds (a result larger than
        the byte bound is not kept)."""
        if value.size > self._max_bytes:
            return
        previous = self._entries.pop(key, None)
        if previous is not None:
            self._bytes -= previous.size
        self._entries[key] = value
        self._bytes += value.size
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= dropped.size

    @property
    def size(self) -> int:
        """Bytes counted for the results kept."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def _touch(self, key: CacheKey) -> Cached | None:
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        return found

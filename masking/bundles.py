"""Bundles masked without materialising them: the entry array by its bytes, the small rest as usual.

A search page read again carries the same entries byte for byte, while its sealed paging links (a random
nonce each) make every whole answer new. So ``mask_bundle`` splits the answer with ``msgspec.Raw``, looks the
``entry`` array up in the profile's cache by its exact bytes (see ``MaskCache``; a hit is spliced back
without parsing or re-serialising anything), masks the rest of the Bundle (type, links, meta, id, total...)
with the Bundle's rules, and joins the two. A miss masks the array as the walk of the whole Bundle would
(its resources through the per-resource cache) and keeps it for next time.

The result is byte-for-byte the whole-document walk's, stats included: the array's own elements (fullUrl,
search, request, response) are masked with the Bundle's context, so a result that read the Bundle's id or
patient (date shifts of ``response.lastModified``, say) is only reused for that same id and patient; the
Bundle is labelled when the array or the rest changed. Anything unusual (not a Bundle, no entries, an entry
value that is not an array, a failure) returns None and the caller masks the whole document the usual way,
which also reports the error.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import msgspec
import orjson

from masking.cache import ENTRY_OVERHEAD, CachedEntries, MaskCache
from masking.engine import Walker
from masking.methods.base import MaskContext
from masking.rewrite import InputRewrite, rewritten
from masking.stats import MaskStats

__all__ = ["mask_bundle"]

_RAW_OBJECT = msgspec.json.Decoder(dict[str, msgspec.Raw])
_ENTRY = "entry"
_RESOURCE_ID = MaskContext.__dict__["resource_id"]
_PATIENT_ID = MaskContext.__dict__["patient_id"]


class _Watched(MaskContext):
    """A Bundle's context that notes whether masking read the Bundle's id or patient."""

    __slots__ = ("read",)

    def __init__(self, context: MaskContext) -> None:
        self.read = False
        super().__init__(
            context.resource_type, context.resource_id, context.patient_id, context.scope_key, context.today
        )

    @property
    def resource_id(self) -> str | None:
        self.read = True
        value: str | None = _RESOURCE_ID.__get__(self)
        return value

    @resource_id.setter
    def resource_id(self, value: str | None) -> None:
        _RESOURCE_ID.__set__(self, value)

    @property
    def patient_id(self) -> str | None:
        self.read = True
        value: str | None = _PATIENT_ID.__get__(self)
        return value

    @patient_id.setter
    def patient_id(self, value: str | None) -> None:
        _PATIENT_ID.__set__(self, value)


def mask_bundle(
    walker: Walker,
    body: bytes,
    stats: MaskStats,
    today: date,
    scope_key: str | None,
    cache: MaskCache,
    rewrite: InputRewrite | None = None,
) -> bytes | None:
    """The masked Bundle ``body`` (each part rewritten by ``rewrite`` before masking; a cached entry array
    was rewritten when it was masked), or None when the caller must mask the whole document instead."""
    if b'"entry"' not in body:
        return None
    try:
        members = _RAW_OBJECT.decode(body)
    except msgspec.DecodeError:
        return None
    raw_entries = members.get(_ENTRY)
    if raw_entries is None or "resourceType" not in members:
        return None
    own = MaskStats()
    try:
        if orjson.loads(memoryview(members["resourceType"])) != "Bundle":
            return None
        shell: dict[str, Any] = {
            name: [] if name == _ENTRY else orjson.loads(_member(raw, rewrite))
            for name, raw in members.items()
        }
        entries = _entries(walker, bytes(raw_entries), shell, own, today, scope_key, cache, rewrite)
        if entries is None:
            return None
        context = walker.bundle_context(shell, entries.patients, scope_key, today)
        walker.mask_shell(
            shell, context, entries.patients, own, cache, changed=entries.changed, labels=entries.labels
        )
        shell[_ENTRY] = entries.fragment
        masked = orjson.dumps(shell)
    except Exception:  # the whole-document walk reports it
        return None
    stats.merge(own)
    return masked


def _entries(
    walker: Walker,
    raw: bytes,
    shell: dict[str, Any],
    stats: MaskStats,
    today: date,
    scope_key: str | None,
    cache: MaskCache,
    rewrite: InputRewrite | None,
) -> CachedEntries | None:
    """The masked entry array: from the cache, else rewritten, masked now and kept (None: not an array)."""
    key = cache.entries_key(raw, today, scope_key, None if rewrite is None else rewrite.name)
    hit = cache.get_entries(key, raw)
    if hit is not None and (
        hit.bound is None or hit.bound == _bound(walker.bundle_context(shell, hit.patients, scope_key, today))
    ):
        stats.merge(hit.stats)
        return hit
    entries = orjson.loads(rewritten(raw, rewrite))
    if type(entries) is not list:
        return None
    patients = walker.bundle_patients(entries)
    context = _Watched(walker.bundle_context(shell, patients, scope_key, today))
    own = MaskStats()
    masked, changed, labels = walker.mask_entries(entries, context, patients, own, cache)
    if type(masked) is not list:
        return None
    text = orjson.dumps(masked)
    bound = _bound(context) if context.read else None
    size = len(text) + len(raw) + ENTRY_OVERHEAD
    result = CachedEntries(raw, orjson.Fragment(text), own, size, changed, labels, patients, bound)
    cache.put(key, result)
    stats.merge(own)
    return result


def _member(raw: msgspec.Raw, rewrite: InputRewrite | None) -> bytes | memoryview:
    """A member of the Bundle's shell as text to parse: rewritten, else as sent (no copy)."""
    return memoryview(raw) if rewrite is None else rewrite.apply(bytes(raw))


def _bound(context: MaskContext) -> tuple[str | None, str | None]:
    """The Bundle id and patient a result may depend on (read without marking a watched context)."""
    return _RESOURCE_ID.__get__(context), _PATIENT_ID.__get__(context)

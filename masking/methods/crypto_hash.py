"""cryptoHash: HMAC-SHA256 of the UTF-8 value, as 64 lower-case hex characters (empty stays empty).

In ``Reference.reference`` (natively also ``Bundle.entry.fullUrl``) only the id is hashed, so references
keep resolving to the hashed ids: ``Patient/123`` -> ``Patient/<hash(123)>``, absolute URLs ending in a
known type and id likewise (a ``/_history/n`` suffix is kept), ``#local`` -> ``#<hash>``,
``urn:uuid:``/``urn:oid:`` keep their prefix; any other reference is hashed whole. Compatibility mode
reads references with the MS anonymizer's patterns (an absolute URL is ``http(s)://`` +
``[A-Za-z0-9\\/.:%$]*``, so hosts with ``-`` are hashed whole); native mode accepts any URL.

Key: the profile's ``cryptoHashKey``, or natively the setting ``key: <name>`` from the keyring.
Label: PSEUDED natively, CRYTOHASH in compatibility mode.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, ClassVar, Final

from masking.methods.base import (
    KEEP,
    Leaf,
    MaskContext,
    MethodConfigError,
    ProfileParameters,
    common_problems,
)
from proxy.fhir.resource_types import R4_RESOURCE_TYPES

__all__ = [
    "CryptoHash",
    "ReferencePatterns",
    "build",
    "is_reference",
    "primitive_text",
    "transform_reference",
]

_CACHE_SIZE: Final = 4096
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_HISTORY: Final = "/_history/"
_ALNUM: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_OID = re.compile(r"(urn:oid:)([0-2](?:\.(?:0|[1-9][0-9]*))+)")
_UUID = re.compile(
    r"(urn:uuid:)([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"
)
_MS_BASE = re.compile(r"https?://[A-Za-z0-9\\/.:%$]*")
_NATIVE_BASE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s?#]*/")


class ReferencePatterns:
    """Finds the id part of a literal reference, MS-style (compatibility) or lenient (native).

    A literal reference is ``[base]<Type>/<id>[/_history/<version>]``. Read from the right in linear time
    (no backtracking regex over the whole reference, which could be long).
    """

    __slots__ = ("_compat",)

    def __init__(self, *, compat: bool) -> None:
        self._compat = compat

    def split(self, reference: str) -> tuple[str, str, str] | None:
        """``(prefix, id, suffix)`` of a literal, ``urn:oid:`` or ``urn:uuid:`` reference, else ``None``."""
        for pattern in (_OID, _UUID):
            match = pattern.fullmatch(reference)
            if match is not None:
                return match[1], match[2], ""
        return self._literal(reference)

    def _literal(self, reference: str) -> tuple[str, str, str] | None:
        rest, suffix = reference, ""
        head, marker, version = reference.rpartition(_HISTORY)
        if marker and _ID.fullmatch(version):
            rest, suffix = head, marker + version
        before, slash, ident = rest.rpartition("/")
        if not slash or not _ID.fullmatch(ident):
            return None
        start = len(before)
        while start and before[start - 1] in _ALNUM:
            start -= 1
        if not self._typed(before[:start], before[start:]):
            return None
        return before + slash, ident, suffix

    def _typed(self, base: str, segment: str) -> bool:
        """Whether ``base`` + ``segment`` ends in a known resource type the way each mode reads it."""
        if not base:
            return segment in R4_RESOURCE_TYPES
        if not self._compat:
            return segment in R4_RESOURCE_TYPES and _NATIVE_BASE.fullmatch(base) is not None
        # MS: the base may end inside the segment ("http://x/MyPatient/1" is a Patient reference).
        if _MS_BASE.fullmatch(base) is None:
            return False
        return segment in R4_RESOURCE_TYPES or any(segment.endswith(name) for name in R4_RESOURCE_TYPES)


def transform_reference(reference: str, transform: Callable[[str], str], patterns: ReferencePatterns) -> str:
    """Apply ``transform`` to the id part of ``reference`` (to the whole reference when it has none)."""
    if reference.startswith("#"):
        return "#" + transform(reference[1:])
    parts = patterns.split(reference)
    if parts is None:
        return transform(reference)
    prefix, ident, suffix = parts
    return prefix + transform(ident) + suffix


def is_reference(leaf: Leaf, *, compat: bool) -> bool:
    """True for ``Reference.reference``; natively also for ``fullUrl`` (so Bundle links stay consistent)."""
    if leaf.name == "reference":
        return leaf.parent_type == "Reference"
    return not compat and leaf.name == "fullUrl"


def primitive_text(value: Any) -> str:
    """The text of a primitive JSON value as FHIR writes it (``true``, ``12.5``, ``abc``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | Decimal):
        return str(value)
    raise TypeError(f"not a primitive value: {type(value).__name__}")


class CryptoHash:
    """HMAC-SHA256 with a fixed key; recent hashes are cached (ids repeat across references)."""

    name: ClassVar[str] = "cryptoHash"
    label: str | None

    def __init__(self, key: bytes, *, compat: bool) -> None:
        self.label = "CRYTOHASH" if compat else "PSEUDED"
        self._mac = hmac.new(key, digestmod=hashlib.sha256)
        self._compat = compat
        self._patterns = ReferencePatterns(compat=compat)
        self._cache: dict[str, str] = {}
        self._references: dict[str, str] = {}

    def hash(self, text: str) -> str:
        """Hex HMAC of ``text``; the empty string stays empty."""
        digest = self._cache.get(text)
        if digest is None:
            if not text:
                return text
            mac = self._mac.copy()
            mac.update(text.encode())
            digest = _remember(self._cache, text, mac.hexdigest())
        return digest

    def apply(self, leaf: Leaf, context: MaskContext) -> Any:
        """Hash the value (only the id part of a reference)."""
        text = primitive_text(leaf.value)
        if not text:
            return KEEP
        if not is_reference(leaf, compat=self._compat):
            return self.hash(text)
        hashed = self._references.get(text)
        if hashed is None:
            hashed = _remember(self._references, text, transform_reference(text, self.hash, self._patterns))
        return hashed


def _remember(cache: dict[str, str], key: str, value: str) -> str:
    if len(cache) >= _CACHE_SIZE:
        cache.clear()
    cache[key] = value
    return value


def build(settings: Mapping[str, Any], params: ProfileParameters) -> CryptoHash:
    """Settings: natively ``key`` (a keyring secret name); none in compatibility mode."""
    compat = params.mode == "compatibility"
    problems = common_problems("cryptoHash", settings, () if compat else ("key",), params)
    key = params.crypto_hash_key
    if "key" in settings and not compat:
        name = settings["key"]
        key = params.keyring.secrets.get(name) if isinstance(name, str) else None
        if key is None:
            problems.append(f"cryptoHash: key {name!r} is not in the keyring")
    elif key is None:
        problems.append("cryptoHash: no key (set the cryptoHashKey parameter)")
    if key is not None and not key:
        problems.append("cryptoHash: the key is empty")
    if problems or key is None:
        raise MethodConfigError(problems)
    return CryptoHash(key, compat=compat)

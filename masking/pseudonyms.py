"""Reversible pseudonyms: deterministic, authenticated AES-SIV tokens that are valid FHIR ids.

Token: ``<key id>.<base32 of AES-SIV(flag byte + payload)>``, lower case, no padding. The key id
(``[a-z0-9]{1,8}``) names the key that made it, so tokens made before a key rotation still decode while
the old key stays in the keyring; it is also authenticated (associated data), so a token cannot be
re-labelled to another key id. The same plaintext under the same key always gives the same token, which
is what keeps a Patient's id and every ``Patient/<id>`` reference pointing at each other.

The payload is compacted so ids fit the 64-character FHIR id limit:

* a canonical UUID (all lower or all upper case) -> its 16 bytes (tokens of 62 characters with an
  8-character key id);
* any other text over the 64 id characters ``[A-Za-z0-9-.]`` (1-64 chars) -> 6 bits per character;
* anything else -> its UTF-8 bytes.

Limit: an id pseudonym is at most 64 characters, so non-UUID ids can be at most
``max_id_length(key_id)`` characters long: 22 with an 8-character key id, 28 with a 1-character one.
``encode_id`` raises ``PseudonymTooLongError`` beyond that (the engine reports a processing error);
``encode`` has no limit (tokens for non-id strings may be longer than 64 characters).
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Mapping
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

__all__ = [
    "KEY_ID_PATTERN",
    "KEY_SIZES",
    "MAX_ID_TOKEN_LENGTH",
    "PseudonymCodec",
    "PseudonymError",
    "PseudonymTooLongError",
    "decode",
    "encode",
    "encode_id",
    "max_id_length",
]

KEY_ID_PATTERN: Final = re.compile(r"[a-z0-9]{1,8}")
KEY_SIZES: Final = (32, 48, 64)
MAX_ID_TOKEN_LENGTH: Final = 64
_AD_PREFIX: Final = b"fhirwall/pseudonym/v1:"
_TAG_SIZE: Final = 16
_TOKEN = re.compile(r"([a-z0-9]{1,8})\.([a-z2-7]+)")
_UUID_LOWER = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_UUID_UPPER = re.compile(r"[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}")
_ID_ALPHABET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-."
_ID_INDEX: Final = {char: index for index, char in enumerate(_ID_ALPHABET)}
_ID_TEXT = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_RAW, _UUID_LOWER_FLAG, _UUID_UPPER_FLAG, _PACKED = 0x00, 0x01, 0x02, 0x40


class PseudonymError(ValueError):
    """A token cannot be decoded: malformed, unknown key id, or tampered with."""


class PseudonymTooLongError(PseudonymError):
    """The pseudonym of an id would exceed the 64-character FHIR id limit."""


def _pack(text: str) -> bytes:
    """Compact the plaintext: flag byte + payload (see the module docstring)."""
    if _UUID_LOWER.fullmatch(text):
        return bytes((_UUID_LOWER_FLAG,)) + bytes.fromhex(text.replace("-", ""))
    if _UUID_UPPER.fullmatch(text):
        return bytes((_UUID_UPPER_FLAG,)) + bytes.fromhex(text.replace("-", ""))
    if _ID_TEXT.fullmatch(text):
        number = 0
        for char in text:
            number = number << 6 | _ID_INDEX[char]
        return bytes((_PACKED + len(text),)) + number.to_bytes(_packed_size(len(text)), "big")
    return bytes((_RAW,)) + text.encode()


def _unpack(data: bytes) -> str:
    flag, payload = data[0], data[1:]
    if flag == _RAW:
        return payload.decode()
    if flag in (_UUID_LOWER_FLAG, _UUID_UPPER_FLAG) and len(payload) == 16:
        hexed = payload.hex()
        text = f"{hexed[:8]}-{hexed[8:12]}-{hexed[12:16]}-{hexed[16:20]}-{hexed[20:]}"
        return text if flag == _UUID_LOWER_FLAG else text.upper()
    length = flag - _PACKED
    if not 1 <= length <= 64 or len(payload) != _packed_size(length):
        raise ValueError("unknown pseudonym payload")
    number = int.from_bytes(payload, "big")
    return "".join(_ID_ALPHABET[(number >> (6 * (length - 1 - i))) & 0x3F] for i in range(length))


def _packed_size(length: int) -> int:
    return (6 * length + 7) // 8


def _base32(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def _token_length(key_id: str, sealed_size: int) -> int:
    return len(key_id) + 1 + (8 * sealed_size + 4) // 5


def max_id_length(key_id: str) -> int:
    """The longest non-UUID id whose pseudonym under ``key_id`` is still a valid FHIR id."""
    length = 0
    while length < 64 and _token_length(key_id, 1 + _TAG_SIZE + _packed_size(length + 1)) <= 64:
        length += 1
    return length


class PseudonymCodec:
    """Encodes with one key (built once per key; the AES-SIV context is reused)."""

    __slots__ = ("_ad", "_cipher", "key_id")

    def __init__(self, key_id: str, key: bytes) -> None:
        if not KEY_ID_PATTERN.fullmatch(key_id):
            raise ValueError(f"pseudonym key id {key_id!r} must match [a-z0-9]{{1,8}}")
        if len(key) not in KEY_SIZES:
            raise ValueError(f"pseudonym key {key_id!r} must be 32, 48 or 64 bytes, not {len(key)}")
        self.key_id = key_id
        self._cipher = AESSIV(key)
        self._ad = [_AD_PREFIX + key_id.encode()]

    def encode(self, plaintext: str) -> str:
        """The token of ``plaintext`` (no length limit)."""
        return f"{self.key_id}.{_base32(self._cipher.encrypt(_pack(plaintext), self._ad))}"

    def encode_id(self, plaintext: str) -> str:
        """The token of an id; ``PseudonymTooLongError`` when it would not be a valid FHIR id."""
        token = self.encode(plaintext)
        if len(token) > MAX_ID_TOKEN_LENGTH:
            raise PseudonymTooLongError(
                f"the pseudonym of a {len(plaintext)}-character id would exceed 64 characters (ids up "
                f"to {max_id_length(self.key_id)} characters or UUIDs fit with key id {self.key_id!r})"
            )
        return token

    def decrypt(self, body: str) -> str:
        """Decode the part after ``<key id>.``."""
        try:
            sealed = base64.b32decode(body.upper() + "=" * (-len(body) % 8))
        except ValueError as exc:
            raise PseudonymError("malformed pseudonym") from exc
        if _base32(sealed) != body or len(sealed) <= _TAG_SIZE:
            raise PseudonymError("malformed pseudonym")
        try:
            return _unpack(self._cipher.decrypt(sealed, self._ad))
        except InvalidTag as exc:
            raise PseudonymError("pseudonym failed authentication (tampered or wrong key)") from exc
        except (ValueError, IndexError) as exc:
            raise PseudonymError("malformed pseudonym payload") from exc


@functools.lru_cache(maxsize=32)
def _codec(key_id: str, key: bytes) -> PseudonymCodec:
    return PseudonymCodec(key_id, key)


def encode(plaintext: str, key_id: str, key: bytes) -> str:
    """The deterministic pseudonym of ``plaintext`` under the key ``key_id``."""
    return _codec(key_id, key).encode(plaintext)


def encode_id(plaintext: str, key_id: str, key: bytes) -> str:
    """Like ``encode``, but refuses (``PseudonymTooLongError``) a token that is not a valid FHIR id."""
    return _codec(key_id, key).encode_id(plaintext)


def decode(token: str, keys: Mapping[str, bytes]) -> str:
    """The plaintext of ``token``, with whichever key of ``keys`` its key id names."""
    match = _TOKEN.fullmatch(token)
    if match is None:
        raise PseudonymError("malformed pseudonym")
    key_id, body = match.groups()
    key = keys.get(key_id)
    if key is None:
        raise PseudonymError(f"unknown pseudonym key id {key_id!r}")
    try:
        codec = _codec(key_id, key)
    except ValueError as exc:
        raise PseudonymError(str(exc)) from exc
    return codec.decrypt(body)

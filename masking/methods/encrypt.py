"""encrypt: reversible masking.

* Compatibility mode (MS anonymizer): AES-CBC with PKCS7 padding, key = the UTF-8 bytes of ``encryptKey``
  (16, 24 or 32 bytes), a random 16-byte IV prepended, standard base64. Not deterministic, not
  reference-aware. Label ENCRYPT.
* Native mode: deterministic, authenticated pseudonyms (AES-SIV, ``masking.pseudonyms``) under the
  keyring's current pseudonym key, reference-aware like native cryptoHash (``fullUrl`` too), so a
  Patient's id and every ``Patient/<id>`` reference get the same pseudonym. Ids (and the id part of
  references) must stay valid FHIR ids: too long an id raises ``MaskingValueError`` (a processing
  error). Label PSEUDED.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from typing import Any, ClassVar, Final

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from masking.methods.base import (
    KEEP,
    Keyring,
    Leaf,
    MaskContext,
    MaskingValueError,
    MethodConfigError,
    ProfileParameters,
    common_problems,
)
from masking.methods.crypto_hash import ReferencePatterns, is_reference, primitive_text
from masking.pseudonyms import KEY_ID_PATTERN, KEY_SIZES, PseudonymCodec, PseudonymTooLongError

__all__ = ["AesCbcEncrypt", "Pseudonymize", "build", "decrypt_aes_cbc"]

_AES_KEY_SIZES: Final = (16, 24, 32)
_CACHE_SIZE: Final = 4096


class AesCbcEncrypt:
    """The MS anonymizer's encrypt: a fresh random IV per value."""

    name: ClassVar[str] = "encrypt"
    label: str | None

    def __init__(self, key: bytes) -> None:
        self.label = "ENCRYPT"
        self.deterministic = False  # a random IV each time
        self._algorithm = algorithms.AES(key)

    def apply(self, leaf: Leaf, context: MaskContext) -> Any:
        """base64(IV + AES-CBC(PKCS7(UTF-8 value)))."""
        text = primitive_text(leaf.value)
        if not text:
            return KEEP
        padder = padding.PKCS7(128).padder()
        padded = padder.update(text.encode()) + padder.finalize()
        iv = os.urandom(16)
        encryptor = Cipher(self._algorithm, modes.CBC(iv)).encryptor()
        return base64.b64encode(iv + encryptor.update(padded) + encryptor.finalize()).decode("ascii")


def decrypt_aes_cbc(token: str, key: bytes) -> str:
    """Reverse ``AesCbcEncrypt`` (re-identification and tests)."""
    data = base64.b64decode(token, validate=True)
    if len(data) < 32 or len(data) % 16:
        raise ValueError("not an AES-CBC token")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(data[:16])).decryptor()
    padded = decryptor.update(data[16:]) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return (unpadder.update(padded) + unpadder.finalize()).decode()


class Pseudonymize:
    """Native encrypt: AES-SIV pseudonyms that are valid ids where the value is an id."""

    name: ClassVar[str] = "encrypt"
    label: str | None

    def __init__(self, codec: PseudonymCodec) -> None:
        self.label = "PSEUDED"
        self._codec = codec
        self._patterns = ReferencePatterns(compat=False)
        self._ids: dict[str, str] = {}
        self._texts: dict[str, str] = {}
        self._references: dict[str, str] = {}

    def apply(self, leaf: Leaf, context: MaskContext) -> Any:
        """The pseudonym of the value (of the id part of a reference)."""
        text = primitive_text(leaf.value)
        if not text:
            return KEEP
        if is_reference(leaf, compat=False):
            token = self._references.get(text)
            if token is None:
                token = self._reference(text)
                self._remember(self._references, text, token)
            return token
        return self.of_id(text) if leaf.type_name == "id" else self.of_text(text)

    def _reference(self, reference: str) -> str:
        """``#id`` and literal ``Type/id`` references carry ids; ``urn:`` ones and the rest are text."""
        if reference.startswith("#"):
            return "#" + self.of_id(reference[1:]) if len(reference) > 1 else reference
        parts = self._patterns.split(reference)
        if parts is None:
            return self.of_text(reference)
        prefix, ident, suffix = parts
        transform = self.of_text if prefix.startswith("urn:") else self.of_id
        return prefix + transform(ident) + suffix

    def of_id(self, ident: str) -> str:
        """Pseudonym of an id, itself a valid id (``MaskingValueError`` when it cannot be)."""
        token = self._ids.get(ident)
        if token is None:
            try:
                token = self._codec.encode_id(ident)
            except PseudonymTooLongError as exc:
                raise MaskingValueError(str(exc)) from exc
            self._remember(self._ids, ident, token)
        return token

    def of_text(self, text: str) -> str:
        """Pseudonym of any text (no length limit)."""
        token = self._texts.get(text)
        if token is None:
            token = self._codec.encode(text)
            self._remember(self._texts, text, token)
        return token

    @staticmethod
    def _remember(cache: dict[str, str], key: str, token: str) -> None:
        if len(cache) >= _CACHE_SIZE:
            cache.clear()
        cache[key] = token


def _keyring_problems(keyring: Keyring) -> list[str]:
    problems: list[str] = []
    for key_id, key in keyring.pseudonym_keys.items():
        if not isinstance(key_id, str) or not KEY_ID_PATTERN.fullmatch(key_id):
            problems.append(f"encrypt: pseudonym key id {key_id!r} must match [a-z0-9]{{1,8}}")
        if len(key) not in KEY_SIZES:
            problems.append(f"encrypt: pseudonym key {key_id!r} must be 32, 48 or 64 bytes, not {len(key)}")
    current = keyring.current_pseudonym_key
    if current is None:
        problems.append("encrypt: no current pseudonym key in the keyring")
    elif current not in keyring.pseudonym_keys:
        problems.append(f"encrypt: the current pseudonym key {current!r} is not in the keyring")
    return problems


def build(settings: Mapping[str, Any], params: ProfileParameters) -> AesCbcEncrypt | Pseudonymize:
    """``encrypt`` takes no settings; keys come from the profile parameters / keyring."""
    problems = common_problems("encrypt", settings, (), params)
    if params.mode == "compatibility":
        key = params.encrypt_key
        if key is None:
            problems.append("encrypt: no key (set the encryptKey parameter)")
        elif len(key) not in _AES_KEY_SIZES:
            problems.append(f"encrypt: the key must be 16, 24 or 32 bytes (UTF-8), not {len(key)}")
        if problems or key is None:
            raise MethodConfigError(problems)
        return AesCbcEncrypt(key)
    problems += _keyring_problems(params.keyring)
    current = params.keyring.current_pseudonym_key
    if problems or current is None:
        raise MethodConfigError(problems)
    return Pseudonymize(PseudonymCodec(current, params.keyring.pseudonym_keys[current]))

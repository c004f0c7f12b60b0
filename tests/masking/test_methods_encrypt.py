"""encrypt: MS AES-CBC (compatibility) and AES-SIV pseudonyms (native), and the pseudonym codec.

Spec (masking.md, "encrypt"): AES-CBC/PKCS7, key = UTF-8 bytes of the key string (16/24/32 bytes), random
16-byte IV prepended, base64. Native: deterministic, authenticated, reversible pseudonyms (AES-SIV),
consistent across resources and references (a Patient's id and every ``Patient/<id>`` reference map to the
same pseudonym). Pseudonyms of ids are valid FHIR ids (``[A-Za-z0-9\\-.]{1,64}``).
"""

from __future__ import annotations

import base64
import os
import string
from datetime import date
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from masking.methods import (
    KEEP,
    Keyring,
    Leaf,
    MaskContext,
    MaskingValueError,
    MethodConfigError,
    ProfileParameters,
)
from masking.methods.encrypt import build, decrypt_aes_cbc
from masking.pseudonyms import (
    PseudonymCodec,
    PseudonymError,
    PseudonymTooLongError,
    decode,
    encode,
    encode_id,
    max_id_length,
)
from proxy.fhir.resource_types import is_valid_id

CTX = MaskContext("Patient", "p1", today=date(2024, 6, 1))
AES_KEY = b"0123456789abcdef0123456789abcdef"
K1 = bytes(range(64))
K2 = bytes(range(64, 96))
KEYRING = Keyring(pseudonym_keys={"k1": K1}, current_pseudonym_key="k1")
NATIVE = ProfileParameters(keyring=KEYRING)
UUID = "550e8400-e29b-41d4-a716-446655440000"
ID_CHARS = string.ascii_letters + string.digits + "-."


def leaf(value: Any, type_name: str = "string", name: str = "value", parent: str = "Identifier") -> Leaf:
    return Leaf(value, type_name, name, parent, "Patient")


def ref(value: str) -> Leaf:
    return leaf(value, "string", "reference", "Reference")


# Compatibility mode: the MS anonymizer's AES-CBC.


@pytest.mark.parametrize("size", [16, 24, 32])
@pytest.mark.parametrize("text", ["a", "Peter Müller", "x" * 16, "Patient/123"])
def test_aes_cbc_round_trip(size: int, text: str) -> None:
    key = AES_KEY[:size]
    method = build({}, ProfileParameters(mode="compatibility", encrypt_key=key))
    token = method.apply(leaf(text), CTX)
    raw = base64.b64decode(token, validate=True)
    assert len(raw) == 16 + (len(text.encode()) // 16 + 1) * 16
    assert decrypt_aes_cbc(token, key) == text
    assert method.label == "ENCRYPT"


def test_aes_cbc_uses_a_fresh_iv_and_is_not_reference_aware() -> None:
    method = build({}, ProfileParameters(mode="compatibility", encrypt_key=AES_KEY))
    first, second = method.apply(ref("Patient/123"), CTX), method.apply(ref("Patient/123"), CTX)
    assert first != second
    assert decrypt_aes_cbc(first, AES_KEY) == decrypt_aes_cbc(second, AES_KEY) == "Patient/123"
    assert method.apply(leaf(""), CTX) is KEEP


# Native mode: pseudonyms.


def test_native_is_deterministic_and_reference_consistent() -> None:
    method = build({}, NATIVE)
    pseudonym = method.apply(leaf("123", "id", "id", "Patient"), CTX)
    assert is_valid_id(pseudonym)
    assert pseudonym.startswith("k1.")
    assert method.apply(leaf("123", "id", "id", "Patient"), CTX) == pseudonym
    assert method.apply(ref("Patient/123"), CTX) == f"Patient/{pseudonym}"
    assert method.apply(ref("https://x.org/fhir/Patient/123/_history/4"), CTX) == (
        f"https://x.org/fhir/Patient/{pseudonym}/_history/4"
    )
    assert method.apply(ref("#123"), CTX) == f"#{pseudonym}"
    assert build({}, NATIVE).apply(ref("Patient/123"), CTX) == f"Patient/{pseudonym}"
    assert decode(pseudonym, {"k1": K1}) == "123"
    assert method.label == "PSEUDED"


def test_native_bundle_links_stay_consistent() -> None:
    method = build({}, NATIVE)
    full_url = method.apply(leaf(f"urn:uuid:{UUID}", "uri", "fullUrl", "BackboneElement"), CTX)
    assert full_url.startswith("urn:uuid:k1.")
    assert method.apply(ref(f"urn:uuid:{UUID}"), CTX) == full_url
    assert decode(full_url.removeprefix("urn:uuid:"), {"k1": K1}) == UUID


@pytest.mark.parametrize("value", ["Peter", "Patient/", "#", "urn:oid:1.2.3", "ünïcødé " * 20])
def test_native_text_values_round_trip(value: str) -> None:
    method = build({}, NATIVE)
    token = method.apply(ref(value), CTX)
    if value == "#":
        assert token == "#"
        return
    prefix = "urn:oid:" if value.startswith("urn:") else ""
    assert decode(token.removeprefix(prefix), {"k1": K1}) == value.removeprefix(prefix)


def test_native_refuses_ids_whose_pseudonym_would_not_be_an_id() -> None:
    method = build({}, NATIVE)
    long_id = "x" * (max_id_length("k1") + 1)
    with pytest.raises(MaskingValueError, match="exceed 64 characters"):
        method.apply(leaf(long_id, "id", "id", "Patient"), CTX)
    with pytest.raises(MaskingValueError):
        method.apply(ref(f"Patient/{long_id}"), CTX)
    assert decode(method.apply(leaf(long_id), CTX), {"k1": K1}) == long_id
    assert method.apply(leaf("", "id", "id", "Patient"), CTX) is KEEP


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        (ProfileParameters(mode="compatibility"), "encrypt: no key (set the encryptKey parameter)"),
        (
            ProfileParameters(mode="compatibility", encrypt_key=b"short"),
            "encrypt: the key must be 16, 24 or 32 bytes (UTF-8), not 5",
        ),
        (ProfileParameters(), "encrypt: no current pseudonym key in the keyring"),
        (
            ProfileParameters(keyring=Keyring(pseudonym_keys={"k1": K1}, current_pseudonym_key="k9")),
            "encrypt: the current pseudonym key 'k9' is not in the keyring",
        ),
        (
            ProfileParameters(keyring=Keyring(pseudonym_keys={"k1": b"x" * 16}, current_pseudonym_key="k1")),
            "encrypt: pseudonym key 'k1' must be 32, 48 or 64 bytes, not 16",
        ),
        (
            ProfileParameters(keyring=Keyring(pseudonym_keys={"K_1": K1}, current_pseudonym_key="K_1")),
            "encrypt: pseudonym key id 'K_1' must match [a-z0-9]{1,8}",
        ),
    ],
)
def test_config_errors(params: ProfileParameters, problem: str) -> None:
    with pytest.raises(MethodConfigError) as caught:
        build({}, params)
    assert caught.value.problems == [problem]


def test_unknown_settings_are_problems_in_both_modes() -> None:
    for params in (NATIVE, ProfileParameters(mode="compatibility", encrypt_key=AES_KEY)):
        with pytest.raises(MethodConfigError, match="unknown setting 'key'"):
            build({"key": "x"}, params)


# The pseudonym codec.


@pytest.mark.parametrize(
    "plaintext", ["123", UUID, UUID.upper(), "A", "AAAA", "a.b-c", "", "héllo wörld", "x" * 200]
)
def test_round_trip(plaintext: str) -> None:
    token = encode(plaintext, "k1", K1)
    assert decode(token, {"k1": K1}) == plaintext
    assert token == encode(plaintext, "k1", K1)


def test_uuids_and_short_ids_fit_the_id_limit() -> None:
    assert len(encode_id(UUID, "abcdefgh", K1)) == 62
    assert max_id_length("abcdefgh") == 22
    assert max_id_length("k1") == 28


def test_rotation_keeps_old_pseudonyms_decodable() -> None:
    old = encode("123", "k1", K1)
    new = encode("123", "k2", K2)
    keyring = {"k1": K1, "k2": K2}
    assert old != new
    assert new.startswith("k2.")
    assert decode(old, keyring) == decode(new, keyring) == "123"
    with pytest.raises(PseudonymError, match="unknown pseudonym key id 'k1'"):
        decode(old, {"k2": K2})


def test_every_single_character_change_is_detected() -> None:
    token = encode("patient-42", "k1", K1)
    alphabet = string.ascii_lowercase + "234567" + "0189"
    for index, char in enumerate(token):
        if char == ".":
            continue
        forged = token[:index] + alphabet[(alphabet.index(char) + 1) % len(alphabet)] + token[index + 1 :]
        with pytest.raises(PseudonymError):
            decode(forged, {"k1": K1, "l1": K1, "k2": K1})


def test_key_id_is_authenticated() -> None:
    token = encode("123", "k1", K1)
    with pytest.raises(PseudonymError, match="failed authentication"):
        decode("k2" + token[2:], {"k2": K1})


@pytest.mark.parametrize(
    "token", ["", "k1", "k1.", "K1.abc", "k1.abc!", "k1.abc=", "k1.a", "toolongkid.abcd"]
)
def test_malformed_tokens(token: str) -> None:
    with pytest.raises(PseudonymError):
        decode(token, {"k1": K1})


def test_codec_refuses_bad_keys() -> None:
    with pytest.raises(ValueError, match="key id"):
        PseudonymCodec("K1", K1)
    with pytest.raises(ValueError, match="32, 48 or 64 bytes"):
        PseudonymCodec("k1", b"x" * 16)
    with pytest.raises(PseudonymError, match="32, 48 or 64 bytes"):
        decode(encode("1", "k1", K1), {"k1": b"x" * 16})


def test_too_long_error_is_a_pseudonym_error() -> None:
    with pytest.raises(PseudonymTooLongError):
        encode_id("x" * 23, "abcdefgh", K1)
    assert issubclass(PseudonymTooLongError, PseudonymError)


KEY_IDS = st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True)


@given(key_id=KEY_IDS, data=st.data())
def test_ids_up_to_the_limit_round_trip_to_valid_ids(key_id: str, data: st.DataObject) -> None:
    ident = data.draw(st.text(ID_CHARS, min_size=1, max_size=max_id_length(key_id)))
    token = encode_id(ident, key_id, K1)
    assert is_valid_id(token)
    assert decode(token, {key_id: K1}) == ident


@given(key_id=KEY_IDS, uuid=st.uuids(), upper=st.booleans())
def test_uuid_ids_round_trip_to_valid_ids(key_id: str, uuid: object, upper: bool) -> None:
    ident = str(uuid).upper() if upper else str(uuid)
    token = encode_id(ident, key_id, K1)
    assert is_valid_id(token)
    assert decode(token, {key_id: K1}) == ident


@given(text=st.text())
def test_any_text_round_trips(text: str) -> None:
    assert decode(encode(text, "k1", K1), {"k1": K1}) == text


def test_random_keys_give_unrelated_pseudonyms() -> None:
    assert encode("123", "k1", os.urandom(32)) != encode("123", "k1", os.urandom(32))

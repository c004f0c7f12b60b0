"""cryptoHash: HMAC-SHA256 hex, reference-aware.

Spec (masking.md, "cryptoHash"): HMAC-SHA256 with the UTF-8 key over the UTF-8 value, 64 lower-case hex;
empty stays empty. In a Reference's ``reference`` only the id is hashed (relative ``Type/id``, absolute URLs
with a known resource type, ``/_history/n`` kept), ``#local`` -> ``#`` + hash, ``urn:uuid:``/``urn:oid:``
keep the prefix; anything else is hashed whole. Key ``"123"``: ``abc`` -> ``8f16771f...b6ae``.
Reference vectors below are the MS anonymizer's own (ReferenceUtility tests), with ``@ID`` for the hash.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import date
from typing import Any

import pytest

from masking.methods import KEEP, Keyring, Leaf, MaskContext, MethodConfigError, ProfileParameters
from masking.methods.crypto_hash import ReferencePatterns, build, transform_reference

CTX = MaskContext("Patient", "p1", today=date(2024, 6, 1))
ABC = "8f16771f9f8851b26f4d460fa17de93e2711c7e51337cb8a608a0f81e1c1b6ae"
COMPAT = "compatibility"
UUID = "c8973a22-2b5b-4e76-9c66-00639c99e61b"


def hmac_hex(text: str, key: bytes = b"123") -> str:
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def leaf(value: Any, name: str = "value", parent: str = "Identifier", type_name: str = "string") -> Leaf:
    return Leaf(value, type_name, name, parent, "Patient")


def ref(value: str) -> Leaf:
    return leaf(value, "reference", "Reference")


@pytest.mark.parametrize("mode", ["native", COMPAT])
def test_vector(mode: str) -> None:
    method = build({}, ProfileParameters(mode=mode, crypto_hash_key=b"123"))
    assert method.apply(leaf("abc"), CTX) == ABC
    assert method.apply(leaf(""), CTX) is KEEP
    assert method.apply(leaf("abc", "id", "Patient", "id"), CTX) == ABC


@pytest.mark.parametrize(("value", "text"), [(True, "true"), (12, "12"), (12.5, "12.5"), ("ünï", "ünï")])
def test_non_string_values_hash_their_json_text(value: Any, text: str) -> None:
    method = build({}, ProfileParameters(crypto_hash_key=b"123"))
    assert method.apply(leaf(value), CTX) == hmac_hex(text)


def test_labels() -> None:
    assert build({}, ProfileParameters(crypto_hash_key=b"k")).label == "PSEUDED"
    assert build({}, ProfileParameters(mode=COMPAT, crypto_hash_key=b"k")).label == "CRYTOHASH"


BOTH_MODES = [
    ("#p1", "#@ID"),
    ("#", "#@ID"),
    ("Patient/034AB16", "Patient/@ID"),
    (
        f"http://fhir.hl7.org/svc/StructureDefinition/{UUID}",
        "http://fhir.hl7.org/svc/StructureDefinition/@ID",
    ),
    (
        "http://example.org/fhir/Observation/apo89654/_history/2",
        "http://example.org/fhir/Observation/@ID/_history/2",
    ),
    ("Observation/1/_history/7", "Observation/@ID/_history/7"),
    ("urn:uuid:C757873D-EC9A-4326-A141-556F43239520", "urn:uuid:@ID"),
    ("urn:oid:1.2.3.4.5", "urn:oid:@ID"),
    ("034AB16", "@ID"),
    ("Patient/AbcŴΉЙ", "@ID"),
    (f"http://fhir.hl7.org/svc/StructureDefinitionTest/{UUID}", "@ID"),
    ("wwurn:uuid:c757873d-ec9a-4326-a141-556f43239520", "@ID"),
    ("urn:oid:1.2.3=4.5", "@ID"),
    ("Unknown/1", "@ID"),
    ("xPatient/1", "@ID"),
]
MODE_SPECIFIC = [
    # MS: URL characters are [A-Za-z0-9\/.:%$] only, and the type may end a path segment.
    ("https://my-server.org/fhir/Patient/1", "@ID", "https://my-server.org/fhir/Patient/@ID"),
    ("http://x/MyPatient/1", "http://x/MyPatient/@ID", "@ID"),
    ("http://x/a.Patient/1", "http://x/a.Patient/@ID", "@ID"),
    ("ftp://x/Patient/1", "@ID", "ftp://x/Patient/@ID"),
]


@pytest.mark.parametrize(("reference", "expected"), BOTH_MODES)
@pytest.mark.parametrize("compat", [True, False])
def test_reference_id_part(reference: str, expected: str, compat: bool) -> None:
    transformed = transform_reference(reference, lambda _: "@ID", ReferencePatterns(compat=compat))
    assert transformed == expected


@pytest.mark.parametrize(("reference", "compat", "native"), MODE_SPECIFIC)
def test_reference_patterns_per_mode(reference: str, compat: str, native: str) -> None:
    assert transform_reference(reference, lambda _: "@ID", ReferencePatterns(compat=True)) == compat
    assert transform_reference(reference, lambda _: "@ID", ReferencePatterns(compat=False)) == native


@pytest.mark.parametrize("mode", ["native", COMPAT])
def test_references_hash_the_id_like_the_id_itself(mode: str) -> None:
    method = build({}, ProfileParameters(mode=mode, crypto_hash_key=b"123"))
    assert method.apply(ref("Patient/abc"), CTX) == f"Patient/{ABC}"
    assert (
        method.apply(ref("http://x/fhir/Patient/abc/_history/2"), CTX)
        == f"http://x/fhir/Patient/{ABC}/_history/2"
    )
    assert method.apply(ref("#abc"), CTX) == f"#{ABC}"
    assert method.apply(ref("Patient/"), CTX) == hmac_hex("Patient/")


def test_reference_handling_needs_a_reference_parent() -> None:
    method = build({}, ProfileParameters(crypto_hash_key=b"123"))
    assert method.apply(leaf("Patient/abc", "reference", "Extension"), CTX) == hmac_hex("Patient/abc")


def test_full_urls_are_reference_aware_natively_only() -> None:
    full_url = leaf("http://x/fhir/Patient/abc", "fullUrl", "BackboneElement", "uri")
    native = build({}, ProfileParameters(crypto_hash_key=b"123"))
    compat = build({}, ProfileParameters(mode=COMPAT, crypto_hash_key=b"123"))
    assert native.apply(full_url, CTX) == f"http://x/fhir/Patient/{ABC}"
    assert compat.apply(full_url, CTX) == hmac_hex("http://x/fhir/Patient/abc")


def test_native_key_setting_names_a_keyring_secret() -> None:
    keyring = Keyring(secrets={"ids": b"123", "other": b"456"})
    method = build({"key": "ids"}, ProfileParameters(crypto_hash_key=b"456", keyring=keyring))
    assert method.apply(leaf("abc"), CTX) == ABC


def test_results_stay_right_past_the_cache_size() -> None:
    method = build({}, ProfileParameters(crypto_hash_key=b"123"))
    values = [f"v{i}" for i in range(5000)]
    assert [method.apply(leaf(v), CTX) for v in values] == [hmac_hex(v) for v in values]
    assert method.apply(leaf("abc"), CTX) == ABC


@pytest.mark.parametrize(
    ("settings", "params", "problem"),
    [
        ({}, ProfileParameters(), "cryptoHash: no key (set the cryptoHashKey parameter)"),
        ({}, ProfileParameters(crypto_hash_key=b""), "cryptoHash: the key is empty"),
        ({"key": "missing"}, ProfileParameters(), "cryptoHash: key 'missing' is not in the keyring"),
        ({"key": 5}, ProfileParameters(), "cryptoHash: key 5 is not in the keyring"),
        (
            {"key": "a"},
            ProfileParameters(mode=COMPAT, crypto_hash_key=b"k"),
            "cryptoHash: unknown setting 'key'",
        ),
        ({"salt": "x"}, ProfileParameters(crypto_hash_key=b"k"), "cryptoHash: unknown setting 'salt'"),
    ],
)
def test_config_errors(settings: dict[str, Any], params: ProfileParameters, problem: str) -> None:
    with pytest.raises(MethodConfigError) as caught:
        build(settings, params)
    assert caught.value.problems == [problem]


@pytest.mark.parametrize("compat", [True, False])
@pytest.mark.parametrize(
    "reference",
    ["http://" + "a" * 200_000, "http://" + "a/" * 100_000, "http://x/" + "_history/" * 20_000 + "1"],
)
def test_long_references_are_read_in_linear_time(compat: bool, reference: str) -> None:
    started = time.perf_counter()
    assert ReferencePatterns(compat=compat).split(reference) is None
    assert time.perf_counter() - started < 0.5

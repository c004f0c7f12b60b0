"""Bundles masked by their entry array's bytes (``masking.bundles``) equal the whole-document walk exactly.

Every Synthea Bundle in ``examples/data/synthea-r4`` (and in ``$FHIRWALL_SYNTHEA_DIR`` when set) is masked as
sent (a transaction), as 50-entry searchsets (mixed types, the Patient included, so ``urn:uuid`` references
resolve to it; and per resource type) and as a batch-response (``response.lastModified`` is shifted with the
Bundle's own context), by every deterministic built-in profile: once through the cache (a miss, then hits
with new paging-link nonces and other Bundle ids) and once by a profile without a cache. Masked bytes and
masking stats must be identical. Contained resources, ``_x`` primitive extensions, nested Bundles and
dropped entries are covered by a hand-made Bundle.
"""

from __future__ import annotations

import gzip
import os
import secrets
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from masking.builtin import builtin_profile_names, load_builtin_profile
from masking.bundles import mask_bundle
from masking.cache import CachedEntries, CachedMask, MaskCache
from masking.compiler import CompiledProfile, compile_profile
from masking.engine import MaskingError, MaskStats
from masking.profile import parse_profile
from masking.rewrite import InputRewrite

Json = dict[str, Any]

KEYS = {"hash": b"h" * 32, "date-shift": b"d" * 32, "pseudonym": b"p" * 64}
TODAY = date(2025, 1, 1)
PAGE = 50
BASE = "http://fhir.example/r4"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data" / "synthea-r4"


def synthea_folders() -> list[Path]:
    folders = [EXAMPLES]
    extra = os.environ.get("FHIRWALL_SYNTHEA_DIR")
    if extra and Path(extra).is_dir() and Path(extra).resolve() != EXAMPLES.resolve():
        folders.append(Path(extra))
    return folders


def synthea_bundles() -> list[tuple[str, Json]]:
    found = []
    for folder in synthea_folders():
        for path in sorted(folder.iterdir()):
            if path.name.endswith((".json", ".json.gz")):
                raw = path.read_bytes()
                data = orjson.loads(gzip.decompress(raw) if path.name.endswith(".gz") else raw)
                if isinstance(data, dict) and data.get("resourceType") == "Bundle":
                    found.append((path.name, data))
    return found


def deterministic_builtins() -> list[str]:
    return [name for name in builtin_profile_names() if compiled(name, cache=False).deterministic]


def compiled(name: str, *, cache: bool) -> CompiledProfile:
    profile = compile_profile(load_builtin_profile(name), KEYS)
    if cache:
        assert profile.enable_cache(100_000, 256 * 2**20)
    return profile


def links(nonce: str) -> list[Json]:
    return [
        {"relation": "self", "url": f"{BASE}/Observation?subject=Patient/123&name=Roe&_count={PAGE}"},
        {"relation": "next", "url": f"{BASE}/_page?token={nonce}"},
    ]


def searchset(entries: list[Json], nonce: str, bundle_id: str) -> Json:
    page = [
        {"fullUrl": entry["fullUrl"], "resource": entry["resource"], "search": {"mode": "match"}}
        for entry in entries
    ]
    return {
        "resourceType": "Bundle",
        "id": bundle_id,
        "meta": {"lastUpdated": "2024-05-01T10:00:00.000Z"},
        "type": "searchset",
        "total": len(page),
        "link": links(nonce),
        "entry": page,
    }


def batch_response(bundle: Json, nonce: str, bundle_id: str) -> Json:
    entries = [
        {
            "fullUrl": entry["fullUrl"],
            "resource": entry["resource"],
            "response": {
                "status": "201 Created",
                "location": f"{entry['resource']['resourceType']}/{entry['resource']['id']}/_history/1",
                "etag": 'W/"1"',
                "lastModified": "2024-05-01T10:00:00.000+00:00",
            },
        }
        for entry in bundle["entry"][:PAGE]
    ]
    return {
        "resourceType": "Bundle",
        "id": bundle_id,
        "type": "batch-response",
        "link": links(nonce),
        "entry": entries,
    }


def variants(bundle: Json) -> Iterator[tuple[str, Any]]:
    """(label, make(nonce, bundle_id) -> Bundle) for each way a Synthea Bundle is served."""
    entries = bundle["entry"]
    yield "transaction", lambda nonce, bundle_id: {**bundle, "id": bundle_id, "link": links(nonce)}
    for start in range(0, len(entries), PAGE):
        chunk = entries[start : start + PAGE]
        yield f"mixed@{start}", lambda nonce, bundle_id, chunk=chunk: searchset(chunk, nonce, bundle_id)
    by_type: dict[str, list[Json]] = {}
    for entry in entries:
        by_type.setdefault(entry["resource"]["resourceType"], []).append(entry)
    for resource_type, typed in sorted(by_type.items()):
        chunk = typed[:PAGE]
        yield f"{resource_type}", lambda nonce, bundle_id, chunk=chunk: searchset(chunk, nonce, bundle_id)
    yield "batch-response", lambda nonce, bundle_id: batch_response(bundle, nonce, bundle_id)


def masked(profile: CompiledProfile, body: bytes) -> tuple[bytes, tuple[int, int, int, dict[str, int]]]:
    stats = MaskStats()
    result = profile.mask_json(body, stats=stats, today=TODAY)
    return result, (stats.resources, stats.changed, stats.dropped, dict(sorted(stats.by_method.items())))


def split(profile: CompiledProfile, body: bytes) -> tuple[bytes, tuple[int, int, int, dict[str, int]]]:
    """Through ``mask_bundle`` itself, so a silent fall-back to the whole-document walk fails the test."""
    stats = MaskStats()
    assert profile._cache is not None
    result = mask_bundle(profile._walker, body, stats, TODAY, None, profile._cache)
    assert result is not None, "the Bundle was not split"
    return result, (stats.resources, stats.changed, stats.dropped, dict(sorted(stats.by_method.items())))


def cached_entries(profile: CompiledProfile) -> list[CachedEntries]:
    assert profile._cache is not None
    return [value for value in profile._cache._entries.values() if isinstance(value, CachedEntries)]


def assert_same(fast: CompiledProfile, whole: CompiledProfile, body: bytes) -> None:
    assert split(fast, body) == masked(whole, body)


@pytest.mark.parametrize("name", deterministic_builtins())
def test_split_bundles_equal_the_whole_walk_for_synthea(name: str) -> None:
    bundles = synthea_bundles()
    assert bundles
    fast, whole = compiled(name, cache=True), compiled(name, cache=False)
    cases = 0
    for file_name, bundle in bundles:
        for label, make in variants(bundle):
            first_id, other_id = secrets.token_hex(8), secrets.token_hex(8)
            served = [(first_id, secrets.token_urlsafe(24)) for _ in range(2)] + [(other_id, "n")]
            for bundle_id, nonce in served:
                body = orjson.dumps(make(nonce, bundle_id))
                try:
                    assert_same(fast, whole, body)
                except AssertionError as error:
                    raise AssertionError(f"{name}: {file_name} as {label}") from error
                cases += 1
    assert cached_entries(fast)
    assert cases >= 3 * len(bundles) * 3


def test_a_result_that_read_the_bundle_id_is_reused_only_for_that_id() -> None:
    fast, whole = compiled("safe-harbor", cache=True), compiled("safe-harbor", cache=False)
    _, bundle = synthea_bundles()[0]
    shifted = set()
    for bundle_id in ("one", "two", "one"):
        body = orjson.dumps(batch_response(bundle, "n", bundle_id))
        assert_same(fast, whole, body)
        shifted.add(orjson.loads(masked(whole, body)[0])["entry"][0]["response"]["lastModified"])
    assert len(shifted) == 2  # the Bundle's own dates move with its id
    bound = [value.bound for value in cached_entries(fast)]
    assert bound
    assert all(pair is not None for pair in bound)


def test_a_searchset_result_holds_for_any_bundle_id() -> None:
    fast = compiled("safe-harbor", cache=True)
    _, bundle = synthea_bundles()[0]
    for bundle_id in ("one", "two"):
        split(fast, orjson.dumps(searchset(bundle["entry"][:PAGE], secrets.token_urlsafe(24), bundle_id)))
    assert [value.bound for value in cached_entries(fast)] == [None]


PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "birthDate": "1970-03-04",
    "_birthDate": {
        "extension": [{"url": "http://example.org/time", "valueDateTime": "1970-03-04T10:00:00Z"}]
    },
    "name": [{"family": "Roe", "given": ["Ann", "B"], "_given": [None, {"id": "g2"}]}],
    "telecom": [{"system": "phone", "value": "555-0100"}],
}
OBSERVATION = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "_status": {"extension": [{"url": "http://example.org/note", "valueString": "checked by Dr Who"}]},
    "code": {"text": "weight"},
    "subject": {"reference": "urn:uuid:p1"},
    "performer": [{"reference": "#pr1"}],
    "contained": [{"resourceType": "Practitioner", "id": "pr1", "name": [{"family": "Who"}]}],
    "effectiveDateTime": "2020-01-02T03:04:05Z",
    "valueQuantity": {"value": 72.50, "unit": "kg"},
}


def kitchen_sink(nonce: str) -> Json:
    nested = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": "urn:uuid:p9", "resource": {**PATIENT, "id": "p9"}}],
    }
    return {
        "resourceType": "Bundle",
        "id": "b1",
        "_type": {"extension": [{"url": "http://example.org/kind", "valueString": "page"}]},
        "type": "searchset",
        "link": links(nonce),
        "entry": [
            {"fullUrl": "urn:uuid:p1", "resource": PATIENT, "search": {"mode": "match"}},
            {"fullUrl": "urn:uuid:o1", "resource": OBSERVATION, "search": {"mode": "include", "score": 0.5}},
            {"fullUrl": "urn:uuid:n1", "resource": nested, "link": [{"relation": "x", "url": "Patient/p1"}]},
            {
                "fullUrl": "urn:uuid:e1",
                "extension": [{"url": "http://example.org/e", "valueDate": "2020-01-01"}],
            },
        ],
        "signature": {
            "when": "2024-01-01T00:00:00Z",
            "who": {"reference": "Patient/p1", "display": "Ann Roe"},
        },
    }


@pytest.mark.parametrize("name", builtin_profile_names())
def test_contained_extensions_and_nested_bundles_split_the_same(name: str) -> None:
    fast, whole = compiled(name, cache=True), compiled(name, cache=False)
    for _ in range(2):
        assert_same(fast, whole, orjson.dumps(kitchen_sink(secrets.token_urlsafe(24))))


def custom(rules: list[Json], **extra: Any) -> tuple[CompiledProfile, CompiledProfile]:
    data = {
        "name": "custom",
        "rules": rules,
        "keys": {"hash": {"value": "hash-key"}, "shift": {"value": "shift-key"}},
        "parameters": {"crypto_hash_key": "hash", "date_shift": {"key": "shift"}},
        **extra,
    }
    fast, whole = compile_profile(parse_profile(data)), compile_profile(parse_profile(data))
    assert fast.enable_cache(1000)
    return fast, whole


def test_compatibility_date_shifts_of_the_bundle_follow_its_id() -> None:
    fast, whole = custom([{"path": "nodesByType('instant')", "method": "dateShift"}], mode="compatibility")
    _, bundle = synthea_bundles()[0]
    for bundle_id in ("one", "two", "one", "two"):
        assert_same(fast, whole, orjson.dumps(batch_response(bundle, "n", bundle_id)))


def test_random_methods_never_split_nor_cache() -> None:
    data = {
        "name": "random",
        "rules": [{"path": "Observation.valueQuantity.value", "method": "perturb", "span": 1}],
    }
    profile = compile_profile(parse_profile(data))
    assert not profile.enable_cache(1000)
    body = orjson.dumps(kitchen_sink("n"))
    assert profile.mask_json(body, today=TODAY) != profile.mask_json(body, today=TODAY)


def test_dropped_entries_count_the_same() -> None:
    fast, whole = custom([{"path": "Observation.status", "method": "redact"}], processing_errors="skip")
    bundle = kitchen_sink("n")
    bundle["entry"][1]["resource"] = {**OBSERVATION, "status": {"not": "a code"}}
    body = orjson.dumps(bundle)
    result, stats = split(fast, body)
    assert (result, stats) == masked(whole, body)
    assert stats[2] == 1  # the Observation could not be masked and went; the rest stays
    assert b'"not"' not in result


def test_a_failing_bundle_still_fails_and_is_never_released() -> None:
    fast, _ = custom([{"path": "Resource.id", "method": "cryptoHash"}])
    bad = kitchen_sink("n")
    bad["entry"].append({"resource": {"resourceType": "NoSuchType"}})
    body = orjson.dumps(bad)
    assert split_or_none(fast, body) is None
    with pytest.raises(MaskingError):
        fast.mask_json(body)


def split_or_none(profile: CompiledProfile, body: bytes) -> bytes | None:
    assert profile._cache is not None
    return mask_bundle(profile._walker, body, MaskStats(), TODAY, None, profile._cache)


@pytest.mark.parametrize(
    "body",
    [
        b'{"resourceType": "Patient", "id": "p1"}',
        b'{"resourceType": "Bundle", "type": "searchset"}',
        b'{"resourceType": "Bundle", "type": "searchset", "entry": {"resource": 1}}',
        b'{"resourceType": "Bundle", "entry": [}',
        b'["entry"]',
    ],
)
def test_what_is_not_a_bundle_with_an_entry_array_takes_the_whole_walk(body: bytes) -> None:
    fast, _ = custom([{"path": "Resource.id", "method": "cryptoHash"}])
    assert split_or_none(fast, body) is None


def test_fhirpath_rules_on_bundles_mask_them_whole() -> None:
    fast, whole = custom([{"path": "Bundle.entry.where(fullUrl.exists()).fullUrl", "method": "cryptoHash"}])
    body = orjson.dumps(kitchen_sink("n"))
    assert fast.mask_json(body, today=TODAY) == whole.mask_json(body, today=TODAY)
    assert not cached_entries(fast)  # marks are found over the whole Bundle: it is masked as one document


# ---- the cache's bounds --------------------------------------------------------------------------------


def fragment(size: int) -> CachedMask:
    return CachedMask(orjson.Fragment(b"0"), MaskStats(), size)


def test_cache_is_bounded_by_bytes_least_recently_used_first() -> None:
    cache = MaskCache(100, 1000)
    for name in (b"a", b"b", b"c"):
        cache.put(name, fragment(300))
    assert cache.get(b"a") is not None  # a is now the most recently used
    cache.put(b"d", fragment(300))
    assert cache.get(b"b") is None
    assert cache.get(b"a") is not None
    assert (len(cache), cache.size) == (3, 900)
    cache.put(b"a", fragment(100))  # replacing counts the new size only
    assert cache.size == 700


def test_cache_is_bounded_by_entries_and_skips_results_larger_than_the_bound() -> None:
    cache = MaskCache(2, 1000)
    for name in (b"a", b"b", b"c"):
        cache.put(name, fragment(10))
    assert cache.get(b"a") is None
    cache.put(b"huge", fragment(1001))
    assert cache.get(b"huge") is None
    assert len(cache) == 2


def test_zero_bytes_turns_the_cache_off() -> None:
    profile = compiled("safe-harbor", cache=False)
    assert not profile.enable_cache(100, 0)
    assert profile.enable_cache(100, 1)


# ---- a rewrite applied before masking (the proxy's URL rebasing) -----------------------------------------


def rebase(public: str) -> InputRewrite:
    old, new = b'"' + BASE.encode(), b'"' + public.encode()
    return InputRewrite(f"rebase:{public}", lambda text: text.replace(old, new))


def absolute_page(bundle: Json, nonce: str) -> bytes:
    """A searchset whose entries' fullUrls are absolute URLs under BASE (so the rewrite reaches the array)."""
    entries = [
        {**entry, "fullUrl": f"{BASE}/{entry['resource']['resourceType']}/{entry['resource']['id']}"}
        for entry in bundle["entry"][:PAGE]
    ]
    return orjson.dumps(searchset(entries, nonce, "b1"))


@pytest.mark.parametrize("name", deterministic_builtins())
def test_a_rewrite_before_masking_equals_masking_the_rewritten_text(name: str) -> None:
    fast, whole = compiled(name, cache=True), compiled(name, cache=False)
    _, bundle = synthea_bundles()[0]
    for public in ("https://one.example/fhir", "https://two.example/fhir", "https://one.example/fhir"):
        rewrite = rebase(public)
        body = absolute_page(bundle, secrets.token_urlsafe(24))
        stats, expected_stats = MaskStats(), MaskStats()
        result = fast.mask_json(body, stats=stats, today=TODAY, rewrite=rewrite)
        expected = whole.mask_json(rewrite.apply(body), stats=expected_stats, today=TODAY)
        assert result == expected
        assert (stats.resources, stats.changed, stats.by_method) == (
            expected_stats.resources,
            expected_stats.changed,
            expected_stats.by_method,
        )
        assert BASE.encode() not in result
        assert public.encode() in result
    assert len(cached_entries(fast)) == 2  # one masked array per rewrite name, reused for the third page
    patient = orjson.dumps({**PATIENT, "link": [{"other": {"reference": f"{BASE}/Patient/p2"}}]})
    rewrite = rebase("https://one.example/fhir")
    assert fast.mask_json(patient, today=TODAY, rewrite=rewrite) == whole.mask_json(
        rewrite.apply(patient), today=TODAY
    )


def test_entry_arrays_with_the_same_sampled_key_are_told_apart_by_their_bytes() -> None:
    fast, whole = compiled("safe-harbor", cache=True), compiled("safe-harbor", cache=False)
    decode = msgspec.json.Decoder(dict[str, msgspec.Raw])
    for pad in range(2):  # one of two alignments leaves the changed digit between sampled bytes
        observation = {**OBSERVATION, "id": "o1" + "x" * pad, "subject": {"reference": "Patient/p1"}}
        first, second = (
            orjson.dumps(searchset([{"fullUrl": "urn:uuid:o1", "resource": resource}], "n", "b1"))
            for resource in (observation, {**observation, "valueQuantity": {"value": 72.6, "unit": "kg"}})
        )
        raw = [bytes(decode.decode(body)["entry"]) for body in (first, second)]
        if MaskCache.entries_key(raw[0], TODAY, None) == MaskCache.entries_key(raw[1], TODAY, None):
            break
    else:
        raise AssertionError("no alignment gave both arrays the same key")
    for body in (first, second, first, second):
        assert split(fast, body) == masked(whole, body)
    assert b"72.6" in split(fast, second)[0]
    assert b"72.6" not in split(fast, first)[0]

"""Response filtering: dropped entries, totals, nested Bundles, byte fidelity, and the fast searchset path."""

from __future__ import annotations

from typing import Any

import orjson

from proxy.policy.fast_bundle import fast_patient_searchset
from proxy.policy.filtering import filter_bundle

A, B = "pat-a", "pat-b"


def observation(patient: str, value: str = "1.50") -> bytes:
    return (
        b'{"resourceType":"Observation","id":"o-'
        + patient.encode()
        + b'","subject":{"reference":"Patient/'
        + patient.encode()
        + b'"},"valueQuantity":{"value":'
        + value.encode()
        + b"}}"
    )


def searchset(*resources: bytes, total: int | None = None, links_first: bool = True) -> bytes:
    entries = b",".join(b'{"fullUrl":"http://up/fhir/x","resource":' + r + b"}" for r in resources)
    links = b'"link":[{"relation":"next","url":"http://up/fhir/Observation?_offset=2"}]'
    head = b'{"resourceType":"Bundle","type":"searchset",'
    total_part = b'"total":%d,' % total if total is not None else b""
    if links_first:
        return head + total_part + links + b',"entry":[' + entries + b"]}"
    return head + total_part + b'"entry":[' + entries + b"]," + links + b"}"


def visible_to_a(resource: dict[str, Any]) -> bool:
    return bool(resource.get("subject", {}).get("reference") == f"Patient/{A}")


def test_nothing_dropped_returns_the_same_bytes() -> None:
    body = searchset(observation(A), observation(A), total=2)
    result = filter_bundle(body, visible_to_a, keep_total=True, seal_links=None)
    assert result.body is body
    assert result.dropped == 0


def test_dropped_entries_fix_total_and_keep_bytes() -> None:
    body = searchset(observation(A, "1.50"), observation(B, "2.0"), total=2)
    for slim in (False, True):
        result = filter_bundle(body, visible_to_a, keep_total=True, seal_links=None, slim=slim)
        assert result.dropped == 1
        assert b"pat-b" not in result.body
        assert b'"value":1.50' in result.body  # decimal precision kept: the entry is the upstream's bytes
        assert "total" not in orjson.loads(result.body)


def test_inexact_total_is_removed_even_when_nothing_is_dropped() -> None:
    body = searchset(observation(A), total=40)
    result = filter_bundle(body, visible_to_a, keep_total=False, seal_links=None)
    assert "total" not in orjson.loads(result.body)


def test_nested_bundles_are_filtered() -> None:
    inner = searchset(observation(A), observation(B), total=2)
    outer = (
        b'{"resourceType":"Bundle","type":"batch-response","entry":[{"resource":'
        + inner
        + b',"response":{"status":"200"}},{"response":{"status":"201","location":"Patient/x"}}]}'
    )
    result = filter_bundle(outer, visible_to_a, keep_total=True, seal_links=None, slim=True)
    document = orjson.loads(result.body)
    assert result.dropped == 1
    assert len(document["entry"]) == 2
    assert [e["resource"]["subject"]["reference"] for e in document["entry"][0]["resource"]["entry"]] == [
        f"Patient/{A}"
    ]


def test_history_entries_without_resource_are_withheld() -> None:
    body = (
        b'{"resourceType":"Bundle","type":"history","entry":[{"resource":'
        + observation(A)
        + b'},{"request":{"method":"DELETE","url":"Observation/o-pat-b"}}]}'
    )
    result = filter_bundle(body, visible_to_a, keep_total=True, seal_links=None)
    assert result.dropped == 1


def test_links_are_sealed() -> None:
    body = searchset(observation(A))
    result = filter_bundle(
        body,
        visible_to_a,
        keep_total=True,
        seal_links=lambda links: [{**link, "url": "sealed"} for link in links],
    )
    assert orjson.loads(result.body)["link"][0]["url"] == "sealed"


def seal(links: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**link, "url": "https://proxy/fhir/_page?token=t&rel=" + link["relation"]} for link in links]


def test_fast_path_proves_own_patient_searchsets() -> None:
    body = searchset(observation(A), observation(A), total=2)
    proof = fast_patient_searchset(body, "Observation", A, seal, total_allowed=True)
    assert proof is not None
    assert (proof.patient, proof.labelled) == (A, False)
    out = proof.body
    document = orjson.loads(out)
    assert document["link"][0]["url"].startswith("https://proxy/fhir/_page")
    assert (
        out.replace(b"https://proxy/fhir/_page?token=t&rel=next", b"http://up/fhir/Observation?_offset=2")
        == body
    )


def test_fast_path_declines_anything_unproven() -> None:
    assert (
        fast_patient_searchset(
            searchset(observation(A), observation(B)), "Observation", A, seal, total_allowed=True
        )
        is None
    )
    assert (
        fast_patient_searchset(
            searchset(observation(A), links_first=False), "Observation", A, seal, total_allowed=True
        )
        is None
    )
    spaced = searchset(observation(A), total=1).replace(b'"total":1', b'"total": 1')
    assert fast_patient_searchset(spaced, "Observation", A, seal, total_allowed=False) is None
    other_type = b'{"resourceType":"Condition","id":"c","subject":{"reference":"Patient/pat-a"}}'
    assert fast_patient_searchset(searchset(other_type), "Observation", A, seal, total_allowed=True) is None
    absolute = (
        b'{"resourceType":"Observation","id":"o","subject":{"reference":"http://up/fhir/Patient/pat-a"}}'
    )
    assert fast_patient_searchset(searchset(absolute), "Observation", A, seal, total_allowed=True) is None
    assert (
        fast_patient_searchset(
            b'{"resourceType":"Bundle","type":"searchset","entry":[{]}',
            "Observation",
            A,
            seal,
            total_allowed=True,
        )
        is None
    )


def test_fast_path_removes_an_inexact_total() -> None:
    body = searchset(observation(A), total=7)
    proof = fast_patient_searchset(body, "Observation", A, None, total_allowed=False)
    assert proof is not None
    document = orjson.loads(proof.body)
    assert "total" not in document
    assert len(document["entry"]) == 1


def test_fast_path_tells_whether_any_entry_is_labelled() -> None:
    label = b'"meta":{"security":[{"system":"http://terminology.hl7.org/CodeSystem/v3-Confidentiality","code":"R"}]},'
    labelled = observation(A).replace(
        b'{"resourceType":"Observation",', b'{"resourceType":"Observation",' + label
    )
    assert labelled != observation(A)
    empty = observation(A).replace(
        b'{"resourceType":"Observation",', b'{"resourceType":"Observation","meta":{"security":[]},'
    )
    cases = [
        ((observation(A), observation(A)), False),
        ((observation(A), labelled), True),
        ((empty,), False),
        ((), False),
    ]
    for entries, expected in cases:
        proof = fast_patient_searchset(searchset(*entries), "Observation", A, None, total_allowed=True)
        assert proof is not None
        assert proof.labelled is expected
    # a label not under meta.security (an extension's value, say) is not a label
    extension = observation(A).replace(
        b'"id":', b'"extension":[{"url":"x","valueString":"security"}],"id":', 1
    )
    proof = fast_patient_searchset(searchset(extension), "Observation", A, None, total_allowed=True)
    assert proof is not None
    assert proof.labelled is False

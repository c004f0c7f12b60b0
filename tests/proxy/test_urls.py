"""Base-URL rewriting: anchored at JSON string starts and path boundaries; every other byte untouched."""

from __future__ import annotations

import orjson
import pytest

from proxy.fhir.urls import BaseUrlRewriter, rebase_url, to_upstream

UP = "http://up:8090/fhir"
PUBLIC = "https://api.example.org/fhir"


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (f'{{"fullUrl":"{UP}/Patient/1"}}', f'{{"fullUrl":"{PUBLIC}/Patient/1"}}'),
        (f'{{"url":"{UP}?_count=1"}}', f'{{"url":"{PUBLIC}?_count=1"}}'),
        (f'{{"url":"{UP}"}}', f'{{"url":"{PUBLIC}"}}'),
        (f'{{"url":"{UP}#x"}}', f'{{"url":"{PUBLIC}#x"}}'),
        (f'{{"url":"{UP}2/Patient/1"}}', f'{{"url":"{UP}2/Patient/1"}}'),  # another base, not a prefix
        (f'{{"text":"see {UP}/Patient/1"}}', f'{{"text":"see {UP}/Patient/1"}}'),  # not at string start
        ('{"reference":"Patient/1"}', '{"reference":"Patient/1"}'),
        ('{"v":1.50,"w":1e2,"u":"\\u00e9"}', '{"v":1.50,"w":1e2,"u":"\\u00e9"}'),  # bytes kept as sent
        (
            '{"url":"http:\\/\\/up:8090\\/fhir\\/Patient\\/1"}',
            '{"url":"https:\\/\\/api.example.org\\/fhir\\/Patient\\/1"}',
        ),
    ],
)
def test_to_public(before: str, after: str) -> None:
    rewriter = BaseUrlRewriter([UP])
    assert rewriter.to_public(before.encode(), PUBLIC) == after.encode()


def test_rewritten_bundle_is_still_json() -> None:
    bundle = {
        "resourceType": "Bundle",
        "link": [{"relation": "self", "url": f"{UP}/Observation?code=a%7Cb"}],
        "entry": [
            {
                "fullUrl": f"{UP}/Observation/{i}",
                "resource": {"resourceType": "Observation", "subject": {"reference": f"{UP}/Patient/9"}},
            }
            for i in range(3)
        ],
    }
    out = orjson.loads(BaseUrlRewriter([UP]).to_public(orjson.dumps(bundle), PUBLIC))
    assert out["link"][0]["url"] == f"{PUBLIC}/Observation?code=a%7Cb"
    assert [e["fullUrl"] for e in out["entry"]] == [f"{PUBLIC}/Observation/{i}" for i in range(3)]
    assert out["entry"][0]["resource"]["subject"]["reference"] == f"{PUBLIC}/Patient/9"


def test_several_upstreams_longest_base_first() -> None:
    rewriter = BaseUrlRewriter([UP, UP + "/tenant"])
    body = f'["{UP}/tenant/Patient/1","{UP}/Patient/2"]'.encode()
    assert rewriter.to_public(body, PUBLIC) == f'["{PUBLIC}/Patient/1","{PUBLIC}/Patient/2"]'.encode()


def test_the_named_rewrite_for_masking_follows_the_bases() -> None:
    rewriter = BaseUrlRewriter([UP])
    body = f'{{"fullUrl":"{UP}/Patient/1","other":"{UP}2/Patient/1"}}'.encode()
    first = rewriter.rewrite_to_public(PUBLIC)
    assert first.apply(body) == rewriter.to_public(body, PUBLIC)
    assert rewriter.rewrite_to_public(PUBLIC) is first
    assert rewriter.rewrite_to_public(PUBLIC + "2").name != first.name
    rewriter.add_base(UP + "2")  # an upstream announcing another base: cached masking results must not match
    second = rewriter.rewrite_to_public(PUBLIC)
    assert second.name != first.name
    assert second.apply(body) == f'{{"fullUrl":"{PUBLIC}/Patient/1","other":"{PUBLIC}/Patient/1"}}'.encode()


def test_header_urls() -> None:
    assert rebase_url(f"{UP}/Patient/1/_history/2", [UP], PUBLIC) == f"{PUBLIC}/Patient/1/_history/2"
    assert rebase_url(f"{UP}x/Patient/1", [UP], PUBLIC) == f"{UP}x/Patient/1"
    assert rebase_url("Patient/1", [UP], PUBLIC) == "Patient/1"


def test_request_bodies_go_back_to_the_upstream_base() -> None:
    body = f'{{"subject":{{"reference":"{PUBLIC}/Patient/1"}},"note":"{PUBLIC}/x"}}'.encode()
    assert (
        to_upstream(body, PUBLIC, UP)
        == f'{{"subject":{{"reference":"{UP}/Patient/1"}},"note":"{UP}/x"}}'.encode()
    )

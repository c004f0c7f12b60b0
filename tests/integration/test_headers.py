"""Header hygiene against the real upstream: what it receives is read back from its own traffic log."""

from __future__ import annotations

import time
import uuid

import httpx

from tests.conftest import RunningProxy, SeededUpstream, upstream_traffic


def test_only_allowed_request_headers_reach_the_upstream(
    client: httpx.Client, upstream: SeededUpstream
) -> None:
    request_id = "hyg-" + uuid.uuid4().hex
    sent = {
        "X-Request-Id": request_id,
        "Authorization": "Bearer client-token-must-not-travel",
        "Cookie": "session=abc",
        "X-Forwarded-For": "203.0.113.9",
        "X-Forwarded-Host": "evil.example",
        "Forwarded": "for=203.0.113.9;host=evil.example",
        "X-User-Id": "spoofed-admin",
        "X-Audit-User": "someone-else",
        "Proxy-Authorization": "Basic eDp5",
        "If-None-Match": 'W/"999"',
        "Prefer": "handling=strict",
        "Accept-Language": "de",
        "Accept": "application/json",
        "TE": "trailers",
    }
    response = client.get(f"/Patient/{upstream.first('Patient')}", headers=sent)
    assert response.status_code == 200
    [seen] = upstream_traffic(upstream.server, request_id)
    received = set(seen["headers"])
    for forbidden in (
        "authorization",
        "cookie",
        "x-forwarded-for",
        "x-forwarded-host",
        "forwarded",
        "x-user-id",
        "x-audit-user",
        "proxy-authorization",
        "te",
    ):
        assert forbidden not in received
    assert seen["headers"]["if-none-match"] == 'W/"999"'
    assert seen["headers"]["prefer"] == "handling=strict"
    assert seen["headers"]["accept-language"] == "de"
    assert seen["headers"]["accept"] == "application/fhir+json"
    assert seen["headers"]["x-request-id"] == request_id


def test_connection_listed_headers_are_dropped(client: httpx.Client, upstream: SeededUpstream) -> None:
    request_id = "hop-" + uuid.uuid4().hex
    headers = {"X-Request-Id": request_id, "Connection": "keep-alive, Prefer", "Prefer": "return=minimal"}
    assert client.get(f"/Patient/{upstream.first('Patient')}", headers=headers).status_code == 200
    [seen] = upstream_traffic(upstream.server, request_id)
    assert "prefer" not in seen["headers"]


def test_only_allowed_response_headers_come_back(client: httpx.Client, upstream: SeededUpstream) -> None:
    patient_id = upstream.first("Patient")
    direct = httpx.get(f"{upstream.base_url}/Patient/{patient_id}")
    assert "vary" in direct.headers  # the upstream sends it ...
    response = client.get(f"/Patient/{patient_id}")
    assert "vary" not in response.headers  # ... the proxy does not pass it on
    assert set(response.headers) <= {
        "date",
        "content-length",
        "content-type",
        "etag",
        "last-modified",
        "x-request-id",
    }
    assert response.headers["content-type"] == "application/fhir+json; charset=utf-8"


def test_bad_requests_never_reach_the_upstream(client: httpx.Client, upstream: SeededUpstream) -> None:
    request_id = "bad-" + uuid.uuid4().hex
    headers = {"X-Request-Id": request_id, "content-type": "application/fhir+json"}
    client.post("/Patient", content=b"{broken", headers=headers)
    client.get("/patient/1", headers=headers)
    client.get("/Patient/1", headers={**headers, "accept": "application/fhir+xml"})
    client.post(
        "/Patient", json={"resourceType": "Patient"}, headers={**headers, "X-HTTP-Method-Override": "DELETE"}
    )
    client.post(
        "",
        json={
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [{"request": {"method": "GET", "url": "Patient/.."}}],
        },
        headers=headers,
    )
    time.sleep(0.3)
    assert upstream_traffic(upstream.server, request_id, expect_at_least=0) == []


def test_well_formed_request_ids_are_kept(client: httpx.Client, proxy: RunningProxy) -> None:
    kept = client.get("/metadata", headers={"X-Request-Id": "abc-123"})
    assert kept.headers["x-request-id"] == "abc-123"
    replaced = client.get("/metadata", headers={"X-Request-Id": "bad id\twith spaces"})
    assert replaced.headers["x-request-id"] != "bad id\twith spaces"
    assert len(replaced.headers["x-request-id"]) == 32

"""Every kind of bad input gets an OperationOutcome with the right status, and is not forwarded."""

from __future__ import annotations

import socket
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import RunningProxy, SeededUpstream, make_settings

FHIR_JSON = {"content-type": "application/fhir+json"}


def assert_outcome(response: httpx.Response, status: int, code: str | None = None) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    issue = outcome["issue"][0]
    assert issue["severity"] == "error"
    if code is not None:
        assert issue["code"] == code
    return str(issue["diagnostics"])


def raw_request(proxy: RunningProxy, request_line: str, extra: str = "") -> tuple[int, bytes]:
    """Send a request byte-for-byte (httpx would normalise the path)."""
    port = proxy.settings.server.port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"{request_line}\r\nHost: 127.0.0.1:{port}\r\n{extra}Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


def test_malformed_json_is_400(client: httpx.Client) -> None:
    response = client.post("/Patient", content=b'{"resourceType": "Patient",', headers=FHIR_JSON)
    assert_outcome(response, 400, "structure")


def test_non_object_json_is_400(client: httpx.Client) -> None:
    assert_outcome(client.post("/Patient", content=b"[1, 2]", headers=FHIR_JSON), 400)


def test_body_type_must_match_url(client: httpx.Client) -> None:
    message = assert_outcome(
        client.post("/Patient", json={"resourceType": "Observation"}, headers=FHIR_JSON), 400
    )
    assert "does not match" in message
    mismatch = client.put("/Patient/a1", json={"resourceType": "Patient", "id": "b2"}, headers=FHIR_JSON)
    assert_outcome(mismatch, 400)


def test_unsupported_media_type_is_415(client: httpx.Client) -> None:
    xml = client.post("/Patient", content=b"<Patient/>", headers={"content-type": "application/fhir+xml"})
    assert_outcome(xml, 415)
    missing = client.post("/Patient", content=b"{}")
    assert_outcome(missing, 415)
    form = client.post("/Patient/_search", content=b'{"a":1}', headers=FHIR_JSON)
    assert_outcome(form, 415)


def test_body_over_limit_is_413(upstream: SeededUpstream, run_proxy: Callable[..., RunningProxy]) -> None:
    proxy = run_proxy(make_settings(upstream.base_url, **{"limits.max_body_bytes": 2048}))
    big = {"resourceType": "Patient", "name": [{"family": "x" * 4096}]}
    with proxy.client() as client:
        assert_outcome(client.post("/Patient", json=big, headers=FHIR_JSON), 413, "too-costly")

        def chunks() -> object:
            for _ in range(10):
                yield b" " * 1024

        chunked = client.post("/Patient", content=chunks(), headers=FHIR_JSON)  # type: ignore[arg-type]
        assert_outcome(chunked, 413)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/fhir/patient/1", 400),
        ("/fhir/Patient/..", 400),
        ("/fhir/Patient/%2e%2e", 400),
        ("/fhir/Patient/1%2F..%2FObservation", 400),
        ("/fhir/Patient//1", 400),
        ("/fhir/Patient/1/", 400),
        ("/fhir/Patient/" + "x" * 65, 400),
        ("/fhir/P%61tient/1", 400),
        ("/fhir/Foo/1", 404),
        ("/fhir/Patient/1/_history/1/extra", 404),
        ("/nothing-here", 404),
    ],
)
def test_invalid_paths(proxy: RunningProxy, path: str, status: int) -> None:
    got, body = raw_request(proxy, f"GET {path} HTTP/1.1")
    assert got == status
    assert b'"resourceType":"OperationOutcome"' in body


def test_unicode_lookalike_type_is_400(proxy: RunningProxy) -> None:
    got, _ = raw_request(proxy, "GET /fhir/P%D0%B0tient/1 HTTP/1.1")
    assert got == 400


def test_unknown_interaction(client: httpx.Client) -> None:
    assert_outcome(client.post("/Patient/123"), 405)
    assert_outcome(client.delete("/metadata"), 405)
    assert_outcome(client.request("PUT", "/_history"), 405)
    assert_outcome(client.get("/Patient/_search"), 405)
    assert_outcome(client.delete("/Patient"), 400)  # conditional delete without criteria


def test_xml_is_406(client: httpx.Client, upstream: SeededUpstream) -> None:
    patient_id = upstream.first("Patient")
    message = assert_outcome(
        client.get(f"/Patient/{patient_id}", headers={"accept": "application/fhir+xml"}), 406
    )
    assert "JSON" in message
    assert_outcome(client.get(f"/Patient/{patient_id}", params={"_format": "xml"}), 406)
    assert_outcome(client.get("/Patient", params={"_format": "application/fhir+xml"}), 406)
    assert_outcome(client.post("/Patient/_search", data={"_format": "xml"}), 406)
    assert_outcome(client.get("/Patient", params={"_format": "ttl"}), 406)
    ok = client.get(f"/Patient/{patient_id}", params={"_format": "json"}, headers={"accept": "*/*"})
    assert ok.status_code == 200


def test_method_override_headers_are_refused(client: httpx.Client) -> None:
    for header in ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override", "X-Original-URL"):
        response = client.post(
            "/Patient", json={"resourceType": "Patient"}, headers={**FHIR_JSON, header: "DELETE"}
        )
        assert_outcome(response, 400, "security")


def test_invalid_batch_bodies(client: httpx.Client) -> None:
    assert_outcome(client.post("", json={"resourceType": "Patient"}, headers=FHIR_JSON), 400)
    not_batch = {"resourceType": "Bundle", "type": "collection"}
    assert_outcome(client.post("", json=not_batch, headers=FHIR_JSON), 400)
    bad_entry = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": "patient/1"}}],
    }
    message = assert_outcome(client.post("", json=bad_entry, headers=FHIR_JSON), 400)
    assert "entry[0]" in message
    foreign = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": "http://other/fhir/Patient"}}],
    }
    assert_outcome(client.post("", json=foreign, headers=FHIR_JSON), 400)


def test_invalid_json_patch(client: httpx.Client) -> None:
    headers = {"content-type": "application/json-patch+json"}
    assert_outcome(client.patch("/Patient/1", content=b'{"op": "x"}', headers=headers), 400)
    assert_outcome(client.patch("/Patient/1", content=b"[{", headers=headers), 400)


def test_bad_host_header(proxy: RunningProxy) -> None:
    port = proxy.settings.server.port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"GET /fhir/metadata HTTP/1.1\r\nHost: evil.example/<script>\r\nConnection: close\r\n\r\n"
        )
        data = sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 400")

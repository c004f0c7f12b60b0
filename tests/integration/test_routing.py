"""Routing by resource type to a second real upstream, and public-base handling of forwarded headers."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest

from proxy.embedded_upstream import EmbeddedUpstream
from tests.conftest import RunningProxy, SeededUpstream, free_port, make_settings

FHIR_JSON = {"content-type": "application/fhir+json"}


@pytest.fixture(scope="module")
def governance() -> Iterator[EmbeddedUpstream]:
    server = EmbeddedUpstream(free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def routed_proxy(
    upstream: SeededUpstream, governance: EmbeddedUpstream, run_proxy: Callable[..., RunningProxy]
) -> RunningProxy:
    return run_proxy(
        make_settings(
            upstream.base_url,
            upstreams=[
                {"name": "clinical", "url": upstream.base_url},
                {
                    "name": "governance",
                    "url": governance.base_url,
                    "resource_types": ["Consent", "AuditEvent"],
                },
            ],
        )
    )


def consent(patient_id: str) -> dict[str, object]:
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient_id}"},
        "identifier": [{"system": "urn:fhirwall:test", "value": uuid.uuid4().hex}],
    }


def test_consent_goes_to_its_own_upstream(
    routed_proxy: RunningProxy, upstream: SeededUpstream, governance: EmbeddedUpstream
) -> None:
    with routed_proxy.client() as client:
        created = client.post("/Consent", json=consent(upstream.first("Patient")), headers=FHIR_JSON)
        assert created.status_code == 201
        assert created.headers["location"].startswith(routed_proxy.base_url + "/Consent/")
        consent_id = created.json()["id"]
        read = client.get(f"/Consent/{consent_id}")
        assert read.status_code == 200
        search = client.get("/Consent", params={"patient": upstream.first("Patient")})
        assert any(entry["resource"]["id"] == consent_id for entry in search.json()["entry"])
        assert all(entry["fullUrl"].startswith(routed_proxy.base_url) for entry in search.json()["entry"])
        assert client.get("/Observation", params={"_count": 1}).json()["entry"]
    assert httpx.get(f"{governance.base_url}/Consent/{consent_id}").status_code == 200
    assert httpx.get(f"{upstream.base_url}/Consent/{consent_id}").status_code == 404


def test_batch_spanning_upstreams_is_refused(routed_proxy: RunningProxy, upstream: SeededUpstream) -> None:
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Patient/{upstream.first('Patient')}"}},
            {"request": {"method": "GET", "url": "Consent?_count=1"}},
        ],
    }
    with routed_proxy.client() as client:
        response = client.post("", json=batch, headers=FHIR_JSON)
        assert response.status_code == 501
        assert response.json()["resourceType"] == "OperationOutcome"
        only_governance = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [{"request": {"method": "GET", "url": "Consent?_count=1"}}],
        }
        assert client.post("", json=only_governance, headers=FHIR_JSON).status_code == 200


def test_metadata_is_answered_for_the_proxy(routed_proxy: RunningProxy) -> None:
    with routed_proxy.client() as client:
        statement = client.get("/metadata").json()
    assert statement["implementation"]["url"] == routed_proxy.base_url
    types = [entry["type"] for rest in statement["rest"] for entry in rest.get("resource", [])]
    assert types.count("Consent") == 1
    assert "Observation" in types


def test_forwarded_headers_from_a_trusted_proxy(
    upstream: SeededUpstream, run_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = run_proxy(make_settings(upstream.base_url, **{"server.trusted_proxies": ["127.0.0.1/32"]}))
    headers = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "fhir.example.org",
        "X-Forwarded-Prefix": "/api",
        "X-Forwarded-For": "198.51.100.7",
    }
    with proxy.client() as client:
        bundle = client.get("/Patient", params={"_count": 1}, headers=headers).json()
    assert bundle["link"][0]["url"].startswith("https://fhir.example.org/api/fhir/Patient?")
    assert bundle["entry"][0]["fullUrl"].startswith("https://fhir.example.org/api/fhir/Patient/")


def test_forwarded_headers_from_anyone_else_are_ignored(client: httpx.Client, proxy: RunningProxy) -> None:
    headers = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.example",
        "Forwarded": "proto=https;host=evil.example",
    }
    bundle = client.get("/Patient", params={"_count": 1}, headers=headers).json()
    assert bundle["link"][0]["url"].startswith(proxy.base_url + "/Patient?")
    assert "evil.example" not in str(bundle)


def test_configured_public_base_wins(
    upstream: SeededUpstream, run_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = run_proxy(
        make_settings(
            upstream.base_url,
            **{
                "server.public_base_url": "https://ehr.example.org/fhir",
                "server.trusted_proxies": ["127.0.0.1/32"],
            },
        )
    )
    with proxy.client() as client:
        bundle = client.get("/Patient", params={"_count": 1}, headers={"X-Forwarded-Host": "other"}).json()
        statement = client.get("/metadata").json()
    assert bundle["entry"][0]["fullUrl"].startswith("https://ehr.example.org/fhir/Patient/")
    assert statement["implementation"]["url"] == "https://ehr.example.org/fhir"

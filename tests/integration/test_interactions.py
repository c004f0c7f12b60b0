"""Every FHIR REST interaction through the proxy against the real upstream: status, headers, bodies."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.conftest import RunningProxy, SeededUpstream

FHIR_JSON = {"content-type": "application/fhir+json"}


def new_patient(family: str = "Proxytest") -> dict[str, Any]:
    marker = uuid.uuid4().hex[:12]
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:fhirwall:test", "value": marker}],
        "name": [{"family": family, "given": ["Ada"]}],
        "gender": "female",
    }


def create(client: httpx.Client, resource: dict[str, Any]) -> httpx.Response:
    response = client.post(f"/{resource['resourceType']}", json=resource, headers=FHIR_JSON)
    assert response.status_code == 201, response.text
    return response


def assert_fhir_json(response: httpx.Response) -> None:
    assert response.headers["content-type"].startswith("application/fhir+json")


def test_capabilities_name_the_proxy(client: httpx.Client, proxy: RunningProxy) -> None:
    response = client.get("/metadata")
    assert response.status_code == 200
    statement = response.json()
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["implementation"]["url"] == proxy.base_url
    assert statement["format"] == ["application/fhir+json", "json"]
    assert "127.0.0.1:" + str(proxy.settings.server.port) in response.text


def test_read_preserves_etag_and_last_modified(client: httpx.Client, upstream: SeededUpstream) -> None:
    patient_id = upstream.first("Patient")
    response = client.get(f"/Patient/{patient_id}")
    direct = httpx.get(f"{upstream.base_url}/Patient/{patient_id}")
    assert response.status_code == 200
    assert_fhir_json(response)
    assert response.json() == direct.json()
    assert response.headers["etag"] == direct.headers["etag"]
    assert response.headers["last-modified"] == direct.headers["last-modified"]
    assert "x-request-id" in response.headers


def test_create_read_vread_update_patch_delete_cycle(client: httpx.Client, proxy: RunningProxy) -> None:
    created = create(client, new_patient())
    location = created.headers["location"]
    assert location.startswith(proxy.base_url + "/Patient/")
    assert created.headers["etag"] == 'W/"1"'
    patient = created.json()
    patient_id = patient["id"]

    assert client.get(f"/Patient/{patient_id}/_history/1").json()["id"] == patient_id

    patient["gender"] = "other"
    updated = client.put(f"/Patient/{patient_id}", json=patient, headers={**FHIR_JSON, "If-Match": 'W/"1"'})
    assert updated.status_code == 200
    assert updated.headers["etag"] == 'W/"2"'

    stale = client.put(f"/Patient/{patient_id}", json=patient, headers={**FHIR_JSON, "If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert stale.json()["resourceType"] == "OperationOutcome"

    json_patch = [{"op": "replace", "path": "/gender", "value": "male"}]
    patched = client.patch(
        f"/Patient/{patient_id}", json=json_patch, headers={"content-type": "application/json-patch+json"}
    )
    assert patched.status_code == 200
    assert patched.json()["gender"] == "male"

    fhirpath_patch = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "operation",
                "part": [
                    {"name": "type", "valueCode": "replace"},
                    {"name": "path", "valueString": "Patient.gender"},
                    {"name": "value", "valueCode": "female"},
                ],
            }
        ],
    }
    patched = client.patch(f"/Patient/{patient_id}", json=fhirpath_patch, headers=FHIR_JSON)
    assert patched.status_code == 200
    assert patched.json()["gender"] == "female"

    history = client.get(f"/Patient/{patient_id}/_history")
    assert history.json()["type"] == "history"
    assert len(history.json()["entry"]) == 4

    assert client.delete(f"/Patient/{patient_id}").status_code in (200, 204)
    gone = client.get(f"/Patient/{patient_id}")
    assert gone.status_code == 410
    assert gone.json()["resourceType"] == "OperationOutcome"


def test_update_as_create(client: httpx.Client) -> None:
    patient_id = "fw-" + uuid.uuid4().hex[:16]
    response = client.put(
        f"/Patient/{patient_id}", json={**new_patient(), "id": patient_id}, headers=FHIR_JSON
    )
    assert response.status_code == 201
    assert response.headers["location"].endswith(f"/Patient/{patient_id}/_history/1")


def test_conditional_create_update_delete(client: httpx.Client) -> None:
    patient = new_patient()
    criteria = f"identifier=urn:fhirwall:test|{patient['identifier'][0]['value']}"
    headers = {**FHIR_JSON, "If-None-Exist": criteria}
    first = client.post("/Patient", json=patient, headers=headers)
    second = client.post("/Patient", json=patient, headers=headers)
    assert first.status_code == 201
    assert second.status_code == 200
    assert first.headers["location"] == second.headers["location"]

    patient["gender"] = "unknown"
    updated = client.put(f"/Patient?{criteria}", json=patient, headers=FHIR_JSON)
    assert updated.status_code == 200
    assert updated.json()["gender"] == "unknown"

    assert client.delete(f"/Patient?{criteria}").status_code in (200, 204)
    assert client.get("/Patient", params={"identifier": criteria.split("=", 1)[1]}).json().get("total") == 0


def test_if_none_match_gives_304(client: httpx.Client, upstream: SeededUpstream) -> None:
    patient_id = upstream.first("Patient")
    etag = client.get(f"/Patient/{patient_id}").headers["etag"]
    response = client.get(f"/Patient/{patient_id}", headers={"If-None-Match": etag})
    assert response.status_code == 304
    assert response.content == b""


def test_prefer_return_minimal(client: httpx.Client) -> None:
    response = client.post("/Patient", json=new_patient(), headers={**FHIR_JSON, "Prefer": "return=minimal"})
    assert response.status_code == 201
    assert response.content == b""
    assert "location" in response.headers


def test_search_get_and_post(client: httpx.Client, upstream: SeededUpstream, proxy: RunningProxy) -> None:
    patient_id = upstream.first("Patient")
    got = client.get("/Observation", params={"patient": patient_id, "_count": 5})
    posted = client.post("/Observation/_search", data={"patient": patient_id, "_count": "5"})
    for response in (got, posted):
        bundle = response.json()
        assert response.status_code == 200
        assert bundle["type"] == "searchset"
        assert len(bundle["entry"]) == 5
        assert all(link["url"].startswith(proxy.base_url) for link in bundle["link"])
        assert all(entry["fullUrl"].startswith(proxy.base_url + "/Observation/") for entry in bundle["entry"])
    assert got.json()["total"] == posted.json()["total"]


def test_paging_links_work_through_the_proxy(client: httpx.Client, upstream: SeededUpstream) -> None:
    page = client.get("/Observation", params={"patient": upstream.first("Patient"), "_count": 3}).json()
    next_url = next(link["url"] for link in page["link"] if link["relation"] == "next")
    second = httpx.get(next_url, timeout=30)
    assert second.status_code == 200
    first_ids = {entry["resource"]["id"] for entry in page["entry"]}
    second_ids = {entry["resource"]["id"] for entry in second.json()["entry"]}
    assert first_ids.isdisjoint(second_ids)


def test_system_search_and_compartment_search(client: httpx.Client, upstream: SeededUpstream) -> None:
    patient_id = upstream.first("Patient")
    # The upstream does not implement system-level search: its answer must reach the client unchanged.
    for proxied, direct in (
        (
            client.post("/_search", data={"_type": "Patient"}),
            httpx.post(f"{upstream.base_url}/_search", data={"_type": "Patient"}),
        ),
        (
            client.get("", params={"_type": "Patient"}),
            httpx.get(upstream.base_url, params={"_type": "Patient"}),
        ),
    ):
        assert proxied.status_code == direct.status_code
        assert proxied.json()["issue"] == direct.json()["issue"]
    compartment = client.get(f"/Patient/{patient_id}/Observation", params={"_count": 2})
    assert compartment.status_code == 200
    assert all(e["resource"]["resourceType"] == "Observation" for e in compartment.json()["entry"])


def test_history_type_and_system(client: httpx.Client) -> None:
    for path in ("/Patient/_history", "/_history"):
        response = client.get(path, params={"_count": 2})
        assert response.status_code == 200
        assert response.json()["type"] == "history"


def test_transaction_and_batch(client: httpx.Client, proxy: RunningProxy, upstream: SeededUpstream) -> None:
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:" + str(uuid.uuid4()),
                "resource": new_patient(),
                "request": {"method": "POST", "url": "Patient"},
            }
        ],
    }
    response = client.post("", json=transaction, headers=FHIR_JSON)
    assert response.status_code == 200
    result = response.json()
    assert result["type"] == "transaction-response"
    assert result["entry"][0]["response"]["location"].startswith(proxy.base_url + "/Patient/")

    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Patient/{upstream.first('Patient')}"}},
            {"request": {"method": "GET", "url": f"{proxy.base_url}/Observation?_count=1"}},
        ],
    }
    response = client.post("/", json=batch, headers=FHIR_JSON)
    assert response.status_code == 200
    assert [entry["response"]["status"][:3] for entry in response.json()["entry"]] == ["200", "200"]


def test_operations_at_each_level(client: httpx.Client, upstream: SeededUpstream) -> None:
    patient_id = upstream.first("Patient")
    everything = client.get(f"/Patient/{patient_id}/$everything", params={"_count": 5})
    assert everything.status_code == 200
    assert everything.json()["type"] == "searchset"
    validated = client.post("/Patient/$validate", json={"resourceType": "Patient"}, headers=FHIR_JSON)
    assert validated.status_code == 200
    assert validated.json()["resourceType"] == "OperationOutcome"
    unknown = client.get("/$no-such-operation")
    assert unknown.status_code in (400, 404, 501)
    assert unknown.json()["resourceType"] == "OperationOutcome"


def test_upstream_operation_outcomes_pass_through(client: httpx.Client) -> None:
    missing = client.get("/Patient/does-not-exist-" + uuid.uuid4().hex[:8])
    assert missing.status_code == 404
    assert_fhir_json(missing)
    assert missing.json()["resourceType"] == "OperationOutcome"

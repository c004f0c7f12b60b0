"""One test per threat class of the threat model: a patient-A token trying to reach patient B.

Real proxy, real upstream (Synthea patients A and B with Observations, Conditions, Encounters,
MedicationRequests, ...), real signed tokens. Every test asserts that nothing of B comes back.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from proxy.fhir.compartment import PATIENT_COMPARTMENT_TYPES
from tests.conftest import SeededUpstream, SmartSetup

FHIR_JSON = {"content-type": "application/fhir+json"}


def b_ids(upstream: SeededUpstream, smart: SmartSetup) -> set[str]:
    """The ids of everything in patient B's compartment."""
    resources = upstream.by_patient[smart.patient_b]
    return {rid for rtype, ids in resources.items() if rtype in PATIENT_COMPARTMENT_TYPES for rid in ids}


def assert_nothing_of_b(response: httpx.Response, upstream: SeededUpstream, smart: SmartSetup) -> None:
    text = response.text
    leaked = [rid for rid in b_ids(upstream, smart) if rid in text]
    assert not leaked, f"{len(leaked)} of patient B's ids came back"


def first(upstream: SeededUpstream, patient: str, resource_type: str) -> str:
    return upstream.by_patient[patient][resource_type][0]


def outcome_status(response: httpx.Response, *statuses: int) -> None:
    assert response.status_code in statuses, response.text
    assert response.json()["resourceType"] == "OperationOutcome"


# 1. reverse chaining -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "param",
    [
        "_has:Observation:patient:code",
        "_has:Observation:subject:_id",
        "_has:Observation:patient:code:text",
        "_has:Condition:patient:code",
    ],
)
def test_01_reverse_chaining_is_refused(smart: SmartSetup, upstream: SeededUpstream, param: str) -> None:
    with smart.patient_client() as client:
        response = client.get("/Patient", params={param: "x"})
    outcome_status(response, 403)
    assert_nothing_of_b(response, upstream, smart)


# 2. _include / _revinclude ------------------------------------------------------------------------------


def test_02_includes_never_pull_other_patients(smart: SmartSetup, upstream: SeededUpstream) -> None:
    encounter_b = first(upstream, smart.patient_b, "Encounter")
    with smart.patient_client() as client:
        queries = [
            {"_id": encounter_b, "_include": "Encounter:subject"},
            {"_revinclude": "Observation:subject", "_count": "200"},
            {"_include": "Observation:subject", "_include:iterate": "Patient:link", "_count": "100"},
        ]
        for path, params in zip(["/Encounter", "/Patient", "/Observation"], queries, strict=True):
            response = client.get(path, params=params)
            assert response.status_code == 200
            assert_nothing_of_b(response, upstream, smart)
            for entry in response.json().get("entry", []):
                assert (
                    entry["resource"]["resourceType"] != "Patient"
                    or entry["resource"]["id"] == smart.patient_a
                )


def test_02_include_of_a_type_without_scope_is_dropped(smart: SmartSetup, upstream: SeededUpstream) -> None:
    token = smart.token("patient/Observation.rs", smart.patient_a)
    with smart.client(token) as client:
        response = client.get("/Observation", params={"_include": "Observation:subject", "_count": "5"})
    assert response.status_code == 200
    types = {entry["resource"]["resourceType"] for entry in response.json()["entry"]}
    assert types == {"Observation"}


# 3. chained search --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "param",
    ["subject:Patient.name", "patient.identifier", "subject.family", "encounter.subject:Patient.name"],
)
def test_03_chained_search_is_refused(smart: SmartSetup, upstream: SeededUpstream, param: str) -> None:
    with smart.patient_client() as client:
        response = client.get("/Observation", params={param: "x"})
    outcome_status(response, 403)


# 4. compartment URLs and operations ---------------------------------------------------------------------


def test_04_compartment_urls_and_operations(smart: SmartSetup, upstream: SeededUpstream) -> None:
    b = smart.patient_b
    with smart.patient_client() as client:
        refused = [
            client.get(f"/Patient/{b}/Observation"),
            client.get(f"/Patient/{b}/$everything"),
            client.get("/Observation/$lastn", params={"patient": b}),
            client.get("/$graphql"),
            client.get(f"/Patient/{smart.patient_a}/$unknown-op"),
            client.get("/Patient/$export"),
            client.post("/$process-message", json={"resourceType": "Bundle"}, headers=FHIR_JSON),
        ]
        for response in refused:
            outcome_status(response, 403, 404)
            assert_nothing_of_b(response, upstream, smart)
        own = client.get(f"/Patient/{smart.patient_a}/$everything", params={"_count": "50"})
        assert own.status_code == 200
        assert_nothing_of_b(own, upstream, smart)
        own_compartment = client.get(f"/Patient/{smart.patient_a}/Observation", params={"_count": "5"})
        assert own_compartment.status_code == 200
        assert own_compartment.json()["entry"]


# 5. paging ----------------------------------------------------------------------------------------------


def next_link(bundle: dict[str, Any]) -> str:
    return str(next(link["url"] for link in bundle["link"] if link["relation"] == "next"))


def test_05_paging_links_are_sealed_and_bound(smart: SmartSetup, upstream: SeededUpstream) -> None:
    with smart.patient_client() as client_a:
        page = client_a.get("/Observation", params={"_count": "3"}).json()
        link = next_link(page)
        assert "_page?token=" in link
        assert "_offset" not in link
        assert upstream.base_url not in str(page)
        second = client_a.get(link)
        assert second.status_code == 200
        assert_nothing_of_b(second, upstream, smart)
        assert {e["resource"]["id"] for e in second.json()["entry"]}.isdisjoint(
            {e["resource"]["id"] for e in page["entry"]}
        )
        tampered = link[:-4] + ("AAAA" if not link.endswith("AAAA") else "BBBB")
        outcome_status(client_a.get(tampered), 400)
    with smart.patient_client(smart.patient_b) as client_b:
        outcome_status(client_b.get(link), 403)


def test_05_crafted_upstream_paging_parameters_do_not_escape(
    smart: SmartSetup, upstream: SeededUpstream
) -> None:
    with smart.patient_client() as client:
        response = client.get(
            "/Observation", params={"_count": "50", "_offset": "0", "patient": smart.patient_b}
        )
    outcome_status(response, 403)


# 6. counts and existence --------------------------------------------------------------------------------


def test_06_counts_and_existence(smart: SmartSetup, upstream: SeededUpstream) -> None:
    observation_b = first(upstream, smart.patient_b, "Observation")
    with smart.patient_client() as client:
        outcome_status(client.get("/Observation", params={"_summary": "count"}), 403)
        forbidden = client.get(f"/Observation/{observation_b}")
        missing = client.get(f"/Observation/no-such-{uuid.uuid4().hex[:8]}")
        assert forbidden.status_code == missing.status_code == 404
        assert forbidden.json()["issue"][0]["code"] == missing.json()["issue"][0]["code"]
        total = client.get("/Observation", params={"_total": "accurate", "_count": "1"}).json().get("total")
    own_count = len(upstream.by_patient[smart.patient_a]["Observation"])
    assert total in (None, own_count)
    lab = smart.token(
        "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/"
        "observation-category|laboratory",
        smart.patient_a,
    )
    with smart.client(lab) as client:
        bundle = client.get("/Observation", params={"_total": "accurate", "_count": "200"}).json()
    categories = {
        coding["code"]
        for entry in bundle.get("entry", [])
        for category in entry["resource"].get("category", [])
        for coding in category["coding"]
    }
    assert categories <= {"laboratory"}
    assert bundle.get("total") in (None, len(bundle.get("entry", [])))


# 7. batch / transaction --------------------------------------------------------------------------------


def test_07_batch_and_transaction_entries(smart: SmartSetup, upstream: SeededUpstream) -> None:
    b = smart.patient_b
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Patient/{smart.patient_a}"}},
            {"request": {"method": "GET", "url": f"Condition/{first(upstream, b, 'Condition')}"}},
        ],
    }
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:" + str(uuid.uuid4()),
                "request": {"method": "POST", "url": "Observation"},
                "resource": observation_for(smart.patient_a),
            },
            {
                "fullUrl": "urn:uuid:" + str(uuid.uuid4()),
                "request": {"method": "POST", "url": "Observation"},
                "resource": observation_for(b),
            },
        ],
    }
    before = observation_count(upstream, b)
    with smart.patient_client() as client:
        answered = client.post("", json=batch, headers=FHIR_JSON)
        refused = client.post("", json=transaction, headers=FHIR_JSON)
        search_entry = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [{"request": {"method": "GET", "url": f"Observation?patient={b}"}}],
        }
        refused_search = client.post("", json=search_entry, headers=FHIR_JSON)
    assert answered.status_code == 200
    assert_nothing_of_b(answered, upstream, smart)
    outcome_status(refused, 403)
    outcome_status(refused_search, 403)
    assert observation_count(upstream, b) == before


def observation_for(patient: str, **changes: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "identifier": [{"system": "urn:fhirwall:test", "value": uuid.uuid4().hex}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "valueQuantity": {"value": 72.50, "unit": "/min"},
        **changes,
    }


def observation_count(upstream: SeededUpstream, patient: str) -> int:
    bundle = httpx.get(
        f"{upstream.base_url}/Observation", params={"patient": patient, "_summary": "count"}
    ).json()
    return int(bundle["total"])


# 8. conditional operations ------------------------------------------------------------------------------


def test_08_conditional_operations(smart: SmartSetup, upstream: SeededUpstream) -> None:
    b = smart.patient_b
    with smart.patient_client() as client:
        outcome_status(
            client.put(f"/Observation?patient={b}", json=observation_for(b), headers=FHIR_JSON), 403
        )
        outcome_status(client.delete("/Observation", params={"patient": b}), 403)
        outcome_status(
            client.patch(
                f"/Observation?patient={b}", json=[], headers={"content-type": "application/json-patch+json"}
            ),
            403,
        )
        b_identifier = identifier_of(upstream, "Observation", first(upstream, b, "Observation"))
        created = client.post(
            "/Observation",
            json=observation_for(smart.patient_a),
            headers={**FHIR_JSON, "If-None-Exist": f"identifier={b_identifier}"},
        )
    assert created.status_code == 201  # B's matching Observation is invisible: a new one is created for A
    assert created.json()["subject"]["reference"] == f"Patient/{smart.patient_a}"


def identifier_of(upstream: SeededUpstream, resource_type: str, rid: str) -> str:
    resource = httpx.get(f"{upstream.base_url}/{resource_type}/{rid}").json()
    identifier = resource.get("identifier", [{"system": "urn:none", "value": rid}])[0]
    return f"{identifier.get('system', '')}|{identifier['value']}"


# 9. direct reads of non-Patient resources --------------------------------------------------------------


@pytest.mark.parametrize(
    "resource_type", ["Observation", "Condition", "Encounter", "MedicationRequest", "DiagnosticReport"]
)
def test_09_direct_reads_check_what_came_back(
    smart: SmartSetup, upstream: SeededUpstream, resource_type: str
) -> None:
    ids_b = upstream.by_patient[smart.patient_b][resource_type]
    ids_a = upstream.by_patient[smart.patient_a][resource_type]
    with smart.patient_client() as client:
        forbidden = client.get(f"/{resource_type}/{ids_b[0]}")
        allowed = client.get(f"/{resource_type}/{ids_a[0]}")
        other_patient = client.get(f"/Patient/{smart.patient_b}")
    outcome_status(forbidden, 404)
    assert_nothing_of_b(forbidden, upstream, smart)
    assert allowed.status_code == 200
    outcome_status(other_patient, 404)


def test_09_ids_are_compared_exactly(smart: SmartSetup, upstream: SeededUpstream) -> None:
    prefix = smart.patient_a[:-1]
    with smart.patient_client(prefix) as client:
        outcome_status(client.get(f"/Patient/{smart.patient_a}"), 404)
        bundle = client.get("/Observation", params={"_count": "5"}).json()
    assert not bundle.get("entry")


# 10. format and projection tricks ----------------------------------------------------------------------


def test_10_format_and_projection(smart: SmartSetup, upstream: SeededUpstream) -> None:
    with smart.patient_client() as client:
        outcome_status(client.get(f"/Patient/{smart.patient_b}", params={"_format": "xml"}), 406)
        outcome_status(client.get("/Observation", headers={"accept": "application/fhir+xml"}), 406)
        for params in (
            {"_elements": "id"},
            {"_summary": "true"},
            {"_summary": "data"},
            {"_contained": "true"},
        ):
            outcome_status(client.get("/Observation", params=params), 403)


# 11. GraphQL and other query languages -----------------------------------------------------------------


@pytest.mark.parametrize("path", ["/$graphql", f"/Patient/{'{a}'}/$graphql", "/Observation/$graphql"])
def test_11_graphql_is_refused(smart: SmartSetup, upstream: SeededUpstream, path: str) -> None:
    with smart.patient_client() as client:
        response = client.post(
            path.format(a=smart.patient_a),
            content=b'{"query":"{PatientList{id}}"}',
            headers={"content-type": "application/json"},
        )
    outcome_status(response, 403)
    with smart.patient_client() as client:
        outcome_status(client.get("/Observation", params={"_filter": "subject eq x"}), 403)
        outcome_status(client.get("/Observation", params={"_query": "anything"}), 403)


# 12. history -------------------------------------------------------------------------------------------


def test_12_history_never_returns_other_compartments(smart: SmartSetup, upstream: SeededUpstream) -> None:
    clinician = smart.token("user/*.cruds")
    with smart.patient_client() as client_a:
        created = client_a.post("/Observation", json=observation_for(smart.patient_a), headers=FHIR_JSON)
        assert created.status_code == 201
        moved = created.json()
    moved["subject"] = {"reference": f"Patient/{smart.patient_b}"}
    with smart.client(clinician) as client_c:
        assert client_c.put(f"/Observation/{moved['id']}", json=moved, headers=FHIR_JSON).status_code == 200
    with smart.patient_client() as client_a:
        history = client_a.get(f"/Observation/{moved['id']}/_history")
        assert history.status_code == 200
        versions = [entry["resource"]["meta"]["versionId"] for entry in history.json().get("entry", [])]
        assert versions == ["1"]
        assert "total" not in history.json()
        outcome_status(client_a.get(f"/Observation/{moved['id']}"), 404)
        outcome_status(client_a.get(f"/Observation/{moved['id']}/_history/2"), 404)
        assert client_a.get(f"/Observation/{moved['id']}/_history/1").status_code == 200
        type_history = client_a.get("/Observation/_history", params={"_count": "50"})
        assert type_history.status_code == 200
        assert_nothing_of_b(type_history, upstream, smart)
        assert moved["id"] not in type_history.text or all(
            e["resource"]["subject"]["reference"].endswith(smart.patient_a)
            for e in type_history.json().get("entry", [])
            if e.get("resource", {}).get("id") == moved["id"]
        )


# 13. method override and header smuggling --------------------------------------------------------------


def test_13_header_smuggling(smart: SmartSetup, upstream: SeededUpstream) -> None:
    with smart.patient_client() as client:
        outcome_status(
            client.get(f"/Patient/{smart.patient_b}", headers={"X-HTTP-Method-Override": "GET"}), 400
        )
        spoofed = client.get(
            "/Observation",
            params={"_count": "20"},
            headers={
                "X-Patient-Id": smart.patient_b,
                "X-Forwarded-User": "admin",
                "X-Forwarded-For": "10.0.0.1",
                "Forwarded": "for=10.0.0.1",
            },
        )
    assert spoofed.status_code == 200
    assert_nothing_of_b(spoofed, upstream, smart)


# 14. type and id tricks --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/observation/{b}",
        "/Observation/..%2F{b}",
        "/Patient/{b}%2F",
        "/Patient//{b}",
        "/Patient/{b}/",
        "/Patient/%2e%2e/Patient/{b}",
    ],
)
def test_14_type_and_id_tricks(smart: SmartSetup, upstream: SeededUpstream, path: str) -> None:
    import socket

    port = smart.proxy.settings.server.port
    token = smart.token("patient/*.rs", smart.patient_a)
    target = "/fhir" + path.format(b=smart.patient_b)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.split(b" ", 2)[1] in (b"400", b"404")
    body = data.split(b"\r\n\r\n", 1)[1]
    assert b"OperationOutcome" in body
    assert smart.patient_b.encode() not in body  # diagnostics never echo request values


# 15. token weaknesses ----------------------------------------------------------------------------------


def test_15_token_weaknesses(smart: SmartSetup, upstream: SeededUpstream) -> None:
    path = f"/Patient/{smart.patient_b}"
    expired = smart.issuer.mint(
        {"scope": "patient/*.rs", "patient": smart.patient_b}, audience=smart.proxy.base_url, lifetime=-3600
    )
    wrong_aud = smart.issuer.mint(
        {"scope": "patient/*.rs", "patient": smart.patient_b}, audience="https://other.example.org/fhir"
    )
    header, payload, _ = smart.token("patient/*.rs", smart.patient_b).split(".")
    unsigned = f"eyJhbGciOiJub25lIn0.{payload}."
    for token in (expired, wrong_aud, unsigned, f"{header}.{payload}.AAAA", None):
        with smart.client(token) as client:
            response = client.get(path)
        outcome_status(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert_nothing_of_b(response, upstream, smart)
    with smart.client(smart.token("patient/*.dr", smart.patient_b)) as client:
        outcome_status(client.get(path), 403)
    with smart.proxy.client() as client:
        assert client.get("/metadata").status_code == 200
        assert client.get("/.well-known/smart-configuration").status_code == 200


# 16. write-side compartment escape --------------------------------------------------------------------


def test_16_writes_cannot_escape_the_compartment(smart: SmartSetup, upstream: SeededUpstream) -> None:
    b = smart.patient_b
    with smart.patient_client() as client:
        outcome_status(client.post("/Observation", json=observation_for(b), headers=FHIR_JSON), 403)
        both = observation_for(smart.patient_a, performer=[{"reference": f"Patient/{b}"}])
        outcome_status(client.post("/Observation", json=both, headers=FHIR_JSON), 403)
        own = client.post("/Observation", json=observation_for(smart.patient_a), headers=FHIR_JSON).json()
        moved = {**own, "subject": {"reference": f"Patient/{b}"}}
        outcome_status(client.put(f"/Observation/{own['id']}", json=moved, headers=FHIR_JSON), 403)
        patch = [{"op": "replace", "path": "/subject/reference", "value": f"Patient/{b}"}]
        outcome_status(
            client.patch(
                f"/Observation/{own['id']}",
                json=patch,
                headers={"content-type": "application/json-patch+json"},
            ),
            403,
        )
        b_observation = first(upstream, b, "Observation")
        takeover = observation_for(smart.patient_a, id=b_observation)
        outcome_status(
            client.put(f"/Observation/{b_observation}", json=takeover, headers=FHIR_JSON), 403, 404
        )
        outcome_status(client.delete(f"/Observation/{b_observation}"), 403, 404)
        consent = {
            "resourceType": "Consent",
            "status": "active",
            "patient": {"reference": f"Patient/{smart.patient_a}"},
            "scope": {"coding": [{"code": "patient-privacy"}]},
            "category": [{"coding": [{"code": "x"}]}],
        }
        outcome_status(client.post("/Consent", json=consent, headers=FHIR_JSON), 403)
        fine = [{"op": "replace", "path": "/status", "value": "amended"}]
        patched = client.patch(
            f"/Observation/{own['id']}", json=fine, headers={"content-type": "application/json-patch+json"}
        )
        assert patched.status_code == 200
        assert patched.json()["status"] == "amended"
    assert httpx.get(f"{upstream.base_url}/Observation/{b_observation}").status_code == 200
    current = httpx.get(f"{upstream.base_url}/Observation/{own['id']}").json()
    assert current["subject"]["reference"] == f"Patient/{smart.patient_a}"

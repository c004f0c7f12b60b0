"""The access-policy layer against the real upstream: two departments, department isolation for reads,
searches (with _include), history and writes, operation limits, role conditions (lab results only), and
a PractitionerRole that ends losing its rights within the attribute TTL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from proxy.auth.dev_issuer import DevIssuer, load_or_create_key
from proxy.demo_rights import departments_bundle
from proxy.embedded_upstream import EmbeddedUpstream
from tests.conftest import REPO_ROOT, RunningProxy, free_port, make_settings

POLICY = REPO_ROOT / "examples" / "access" / "hospital-policy.yaml"
ROLE_SYSTEM = "http://terminology.hl7.org/CodeSystem/practitioner-role"
FHIR_JSON = {"content-type": "application/fhir+json"}


@dataclass
class Hospital:
    upstream: EmbeddedUpstream
    proxy: RunningProxy
    issuer: DevIssuer

    def as_staff(self, practitioner: str, scope: str = "user/*.cruds", **claims: Any) -> httpx.Client:
        token = self.issuer.mint(
            {
                "sub": f"user-{practitioner}",
                "client_id": "ward-app",
                "scope": scope,
                "fhirUser": f"Practitioner/{practitioner}",
                **claims,
            },
            audience=self.proxy.base_url,
        )
        return self.proxy.client(headers={"authorization": f"Bearer {token}"})


def policy_file(folder: Path, **changes: Any) -> Path:
    """The example hospital policy with top-level sections changed (e.g. shorter cache times)."""
    data = yaml.safe_load(POLICY.read_text())
    data["revocation"] = {"file": str(folder / "revocations.jsonl"), "refresh_seconds": 0.5}
    for section, values in changes.items():
        data[section] = {**data.get(section, {}), **values}
    path = folder / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def start_proxy(upstream: EmbeddedUpstream, folder: Path, policy: Path) -> tuple[RunningProxy, DevIssuer]:
    key_file = folder / "issuer-key.pem"
    port = free_port()
    issuer_url = f"http://127.0.0.1:{port}/_dev"
    settings = make_settings(
        upstream.base_url,
        **{
            "server.port": port,
            "auth.dev_issuer.enabled": True,
            "auth.dev_issuer.key_file": str(key_file),
            "auth.dev_issuer.issuer": issuer_url,
            "policy.hide_existence": False,
            "access.policy_file": str(policy),
        },
    )
    return RunningProxy(settings).start(), DevIssuer(load_or_create_key(key_file), issuer_url)


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hospital]:
    upstream = EmbeddedUpstream(free_port())
    upstream.start()
    folder = tmp_path_factory.mktemp("hospital")
    try:
        response = httpx.post(upstream.base_url, json=departments_bundle(), headers=FHIR_JSON, timeout=30)
        response.raise_for_status()
        proxy, issuer = start_proxy(upstream, folder, policy_file(folder))
        try:
            yield Hospital(upstream, proxy, issuer)
        finally:
            proxy.stop()
    finally:
        upstream.stop()


def ids(bundle: dict[str, Any], resource_type: str | None = None) -> set[str]:
    return {
        f"{entry['resource']['resourceType']}/{entry['resource']['id']}"
        for entry in bundle.get("entry", [])
        if resource_type is None or entry["resource"]["resourceType"] == resource_type
    }


def test_clinician_reads_only_patients_in_department_care(hospital: Hospital) -> None:
    with hospital.as_staff("dr-heart") as heart, hospital.as_staff("dr-onco") as onco:
        assert heart.get("/Patient/pt-cardio-inpatient").status_code == 200
        assert heart.get("/Observation/obs-vitals-pt-cardio-inpatient").status_code == 200
        for patient in ("pt-onco-recent", "pt-cardio-old", "pt-onco-careteam"):
            refused = heart.get(f"/Patient/{patient}")
            assert refused.status_code == 403, patient
            assert refused.json()["resourceType"] == "OperationOutcome"
        assert heart.get("/Condition/cond-pt-onco-recent").status_code == 403
        assert onco.get("/Patient/pt-onco-recent").status_code == 200  # discharged 5 days ago: recent
        assert onco.get("/Patient/pt-onco-careteam").status_code == 200  # CareTeam member
        assert onco.get("/Patient/pt-cardio-inpatient").status_code == 403


def test_searches_return_only_patients_in_care(hospital: Hospital) -> None:
    with hospital.as_staff("dr-heart") as heart, hospital.as_staff("dr-onco") as onco:
        found = heart.get("/Observation", params={"_count": 100}).json()
        assert ids(found) == {
            "Observation/obs-vitals-pt-cardio-inpatient",
            "Observation/obs-lab-pt-cardio-inpatient",
        }
        assert "total" not in found  # other pages could hold withheld entries
        other = heart.get("/Condition", params={"patient": "pt-onco-recent"}).json()
        assert ids(other) == set()
        for params in ({"patient": "pt-cardio-inpatient"}, {"subject": "Patient/pt-cardio-inpatient"}):
            one = heart.get("/Observation", params=params).json()  # one patient's search: decided once
            assert len(ids(one)) == 2
            assert "total" not in one
        compartment = heart.get("/Patient/pt-onco-recent/Observation").json()
        assert ids(compartment) == set()
        assert ids(onco.get("/Patient", params={"_count": 100}).json()) == {
            "Patient/pt-onco-recent",
            "Patient/pt-onco-careteam",
        }


def test_included_resources_are_checked_too(hospital: Hospital) -> None:
    with hospital.as_staff("dr-heart") as heart:
        found = heart.get("/Encounter", params={"_include": "Encounter:subject", "_count": 100}).json()
        assert ids(found, "Patient") == {"Patient/pt-cardio-inpatient"}
        assert ids(found, "Encounter") == {"Encounter/enc-pt-cardio-inpatient"}


def test_history_is_isolated(hospital: Hospital) -> None:
    with hospital.as_staff("dr-heart") as heart:
        own = heart.get("/Observation/obs-lab-pt-cardio-inpatient/_history")
        assert own.status_code == 200
        assert ids(own.json()) == {"Observation/obs-lab-pt-cardio-inpatient"}
        other = heart.get("/Observation/obs-lab-pt-onco-recent/_history")
        assert other.status_code == 200
        assert ids(other.json()) == set()


def test_writes_are_isolated_and_limited_by_operation(hospital: Hospital) -> None:
    new = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "Blood pressure"},
        "subject": {"reference": "Patient/pt-cardio-inpatient"},
    }
    with hospital.as_staff("dr-heart") as heart:
        created = heart.post("/Observation", json=new, headers=FHIR_JSON)
        assert created.status_code == 201, created.text
        outsider = {**new, "subject": {"reference": "Patient/pt-onco-recent"}}
        assert heart.post("/Observation", json=outsider, headers=FHIR_JSON).status_code == 403
        stored = heart.get("/Condition/cond-pt-cardio-inpatient").json()
        assert (
            heart.put("/Condition/cond-pt-cardio-inpatient", json=stored, headers=FHIR_JSON).status_code
            == 200
        )
        moved = {**stored, "subject": {"reference": "Patient/pt-onco-recent"}}
        assert (
            heart.put("/Condition/cond-pt-cardio-inpatient", json=moved, headers=FHIR_JSON).status_code == 403
        )
        # the stored resource is checked as well: an out-of-care record cannot be overwritten
        foreign = {**stored, "id": "cond-pt-onco-recent"}
        assert heart.put("/Condition/cond-pt-onco-recent", json=foreign, headers=FHIR_JSON).status_code == 403
        denied = heart.delete(f"/Observation/{created.json()['id']}")
        assert denied.status_code == 403
        assert "no right to delete" in denied.json()["issue"][0]["diagnostics"]
    with hospital.as_staff("records-clerk") as clerk:
        assert clerk.delete(f"/Observation/{created.json()['id']}").status_code in (200, 204)


def test_lab_technician_sees_lab_results_only(hospital: Hospital) -> None:
    with hospital.as_staff("lab-tech") as lab:
        found = lab.get("/Observation", params={"_count": 100}).json()
        assert ids(found) == {f"Observation/obs-lab-{p}" for p in (
            "pt-cardio-inpatient", "pt-onco-recent", "pt-cardio-old", "pt-onco-careteam"
        )}  # fmt: skip
        assert lab.get("/Observation/obs-lab-pt-onco-recent").status_code == 200
        assert lab.get("/Observation/obs-vitals-pt-onco-recent").status_code == 403
        refused = lab.get("/Condition", params={"patient": "pt-onco-recent"})
        assert refused.status_code == 403
        assert "lab-technician" in refused.json()["issue"][0]["diagnostics"]
        vitals = {
            "resourceType": "Observation",
            "status": "final",
            "category": [{"coding": [{"code": "vital-signs"}]}],
            "code": {"text": "Heart rate"},
            "subject": {"reference": "Patient/pt-onco-recent"},
        }
        assert lab.post("/Observation", json=vitals, headers=FHIR_JSON).status_code == 403
        lab_result = {**vitals, "category": [{"coding": [{"code": "laboratory"}]}]}
        assert lab.post("/Observation", json=lab_result, headers=FHIR_JSON).status_code == 201


def test_staff_without_roles_get_nothing(hospital: Hospital) -> None:
    with hospital.as_staff("nobody") as stranger:
        refused = stranger.get("/Observation")
        assert refused.status_code == 403
        assert "roles held (none)" in refused.json()["issue"][0]["diagnostics"]


def test_scopes_still_bound_the_policy(hospital: Hospital) -> None:
    with hospital.as_staff("dr-heart", scope="user/Patient.rs") as heart:
        assert heart.get("/Patient/pt-cardio-inpatient").status_code == 200
        assert heart.get("/Observation/obs-vitals-pt-cardio-inpatient").status_code == 403


def test_an_ended_practitioner_role_stops_granting_within_the_ttl_on_every_replica(
    hospital: Hospital, tmp_path: Path
) -> None:
    role = {
        "resourceType": "PractitionerRole",
        "id": "role-dr-locum",
        "active": True,
        "practitioner": {"reference": "Practitioner/dr-locum"},
        "organization": {"reference": "Organization/dept-cardiology"},
        "code": [{"coding": [{"system": ROLE_SYSTEM, "code": "doctor"}]}],
    }
    upstream = hospital.upstream.base_url
    assert httpx.put(f"{upstream}/PractitionerRole/role-dr-locum", json=role, headers=FHIR_JSON).is_success
    policy = policy_file(tmp_path, attributes={"cache_seconds": 1})
    replica_a, issuer_a = start_proxy(hospital.upstream, tmp_path, policy)
    replica_b, issuer_b = start_proxy(hospital.upstream, tmp_path, policy)
    try:
        replicas = [
            Hospital(hospital.upstream, replica_a, issuer_a),
            Hospital(hospital.upstream, replica_b, issuer_b),
        ]
        clients = [replica.as_staff("dr-locum") for replica in replicas]
        for client in clients:
            assert client.get("/Patient/pt-cardio-inpatient").status_code == 200  # attributes now cached
        ended = {**role, "active": False}
        assert httpx.put(
            f"{upstream}/PractitionerRole/role-dr-locum", json=ended, headers=FHIR_JSON
        ).is_success
        deadline = time.monotonic() + 5
        for client in clients:
            while client.get("/Patient/pt-cardio-inpatient").status_code == 200:
                assert time.monotonic() < deadline, "the ended role still grants after its TTL"
                time.sleep(0.2)
            assert client.get("/Patient/pt-cardio-inpatient").status_code == 403
        for client in clients:
            client.close()
    finally:
        replica_a.stop()
        replica_b.stop()

"""The SMART reference Python client (``fhirclient``) works through the proxy with a dev-issuer token."""

from __future__ import annotations

import httpx
from fhirclient import client as smart_client
from fhirclient.auth import FHIROAuth2Auth
from fhirclient.models.observation import Observation
from fhirclient.models.patient import Patient
from fhirclient.server import FHIRNotFoundException

from tests.conftest import SmartSetup


def test_reference_smart_client_reads_and_searches_within_its_patient(smart: SmartSetup) -> None:
    settings = {"app_id": "fhirwall-test-app", "api_base": smart.proxy.base_url}
    app = smart_client.FHIRClient(settings=settings)
    app.server.get_capability()
    assert isinstance(app.server.auth, FHIROAuth2Auth), "the CapabilityStatement must announce SMART OAuth"
    discovery = httpx.get(smart.proxy.base_url + "/.well-known/smart-configuration").json()
    granted = httpx.post(
        discovery["token_endpoint"],
        data={
            "grant_type": "client_credentials",
            "client_id": "demo-patient-app",
            "patient": smart.patient_a,
        },
    )
    assert granted.status_code == 200
    assert granted.json()["patient"] == smart.patient_a
    app.server.auth.access_token = granted.json()["access_token"]

    patient = Patient.read(smart.patient_a, app.server)
    assert patient.id == smart.patient_a
    observations = list(Observation.where(struct={"_count": "10"}).perform_resources_iter(app.server))
    assert observations
    assert {obs.subject.reference for obs in observations} == {f"Patient/{smart.patient_a}"}
    try:
        Patient.read(smart.patient_b, app.server)
    except FHIRNotFoundException:
        pass
    else:
        raise AssertionError("the other patient must not be readable")

"""The demo's consent scenario: Consents and labelled data seeded in the embedded upstream, and the
requests that show their effect (an opt-out patient with break-glass, a patient refusing one clinician,
psychiatric data withheld from clinicians but not from the patient)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from proxy.auth.dev_issuer import DevIssuer

__all__ = [
    "BREAK_GLASS_ROLE",
    "ConsentScenario",
    "consent_requests",
    "consent_tokens",
    "seed_consent_scenario",
]

BREAK_GLASS_ROLE = "emergency-physician"
_JSON = {"content-type": "application/fhir+json"}
_PSY = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}
_ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"


@dataclass(frozen=True)
class ConsentScenario:
    """Ids the consent requests use."""

    opted_out_observation: str
    refusing_observation: str
    psy_observation: str
    refused_practitioner: str
    other_practitioner: str


def _create(client: httpx.Client, base: str, resource: dict[str, Any]) -> str:
    response = client.post(f"{base}/{resource['resourceType']}", json=resource, headers=_JSON)
    response.raise_for_status()
    return str(response.json()["id"])


def _observation(patient: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "subject": {"reference": f"Patient/{patient}"},
        "code": {"text": "demo observation"},
        "effectiveDateTime": "2025-06-01",
        **extra,
    }


def _consent(patient: str, provision: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "status": "active",
        "patient": {"reference": f"Patient/{patient}"},
        "scope": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "dateTime": "2025-01-01T00:00:00Z",
        "provision": provision,
    }


def seed_consent_scenario(
    upstream_base: str, patients: list[str], practitioners: list[str]
) -> ConsentScenario:
    """Patient 2 opts out; patient 3 refuses practitioner 1; patient 1 has a PSY-labelled Observation."""
    first, opted_out, refusing = patients[:3]
    refused, other = practitioners[:2]
    with httpx.Client(timeout=30) as client:
        _create(client, upstream_base, _consent(opted_out, {"type": "deny"}))
        _create(
            client,
            upstream_base,
            _consent(
                refusing,
                {
                    "type": "permit",
                    "provision": [
                        {"type": "deny", "actor": [{"reference": {"reference": f"Practitioner/{refused}"}}]}
                    ],
                },
            ),
        )
        return ConsentScenario(
            opted_out_observation=_create(client, upstream_base, _observation(opted_out)),
            refusing_observation=_create(client, upstream_base, _observation(refusing)),
            psy_observation=_create(client, upstream_base, _observation(first, meta={"security": [_PSY]})),
            refused_practitioner=refused,
            other_practitioner=other,
        )


def consent_tokens(
    issuer: DevIssuer, audience: str, scenario: ConsentScenario, lifetime: int
) -> dict[str, str]:
    """Extra demo tokens: a second clinician, and the first clinician breaking the glass."""
    clinician = {"client_id": "demo-ehr", "scope": "openid fhirUser user/*.cruds"}
    return {
        "CLINICIAN_2_TOKEN": issuer.mint(
            {**clinician, "sub": "clinician-2", "fhirUser": f"Practitioner/{scenario.other_practitioner}"},
            audience=audience,
            lifetime=lifetime,
        ),
        "CLINICIAN_BTG_TOKEN": issuer.mint(
            {
                **clinician,
                "sub": "clinician-user",
                "fhirUser": f"Practitioner/{scenario.refused_practitioner}",
                "roles": [BREAK_GLASS_ROLE],
                "btg_reason": "unconscious patient in the emergency department",
                "extensions": {"ihe_iua": {"purpose_of_use": [{"system": _ACT_REASON, "code": "BTG"}]}},
            },
            audience=audience,
            lifetime=lifetime,
        ),
    }


def consent_requests(base: str, scenario: ConsentScenario) -> list[tuple[str, str, str]]:
    """(token variable, URL, expected outcome) for each consent effect."""
    return [
        (
            "CLINICIAN_TOKEN",
            f"{base}/Observation/{scenario.opted_out_observation}",
            "404: this patient opted out (Consent deny): hidden from the clinician",
        ),
        (
            "CLINICIAN_BTG_TOKEN",
            f"{base}/Observation/{scenario.opted_out_observation}",
            "200: break-glass (purpose BTG, emergency role, justification) overrides it, and is logged",
        ),
        (
            "CLINICIAN_TOKEN",
            f"{base}/Observation/{scenario.refusing_observation}",
            "404: this patient's Consent refuses this clinician",
        ),
        (
            "CLINICIAN_2_TOKEN",
            f"{base}/Observation/{scenario.refusing_observation}",
            "200: another clinician may see it",
        ),
        (
            "CLINICIAN_TOKEN",
            f"{base}/Observation/{scenario.psy_observation}",
            "404: psychiatric (PSY-labelled) data needs an explicit consent",
        ),
        (
            "PATIENT_APP_TOKEN",
            f"{base}/Observation/{scenario.psy_observation}",
            "200: the patient sees their own record",
        ),
    ]

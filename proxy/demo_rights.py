"""The access-policy scenario: a hospital with two departments, seeded into the embedded upstream.

Cardiology and oncology each have a physician; the laboratory a technician; a privacy officer approves
sensitive requests. Patients: one cardiology in-patient, one oncology patient discharged five days ago, one
cardiology patient last seen 400 days ago (outside the 30-day window), one patient followed by an oncology
CareTeam only. Each has a vital-sign Observation, a laboratory Observation and a Condition. Ids are fixed
(written with PUT) and dates are relative to the seeding time, so the scenario is the same every run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from proxy.auth.dev_issuer import DevIssuer

__all__ = [
    "CARE_PATIENTS",
    "HOSPITAL_POLICY",
    "PRACTITIONERS",
    "STAFF_ROLE_SYSTEM",
    "DemoRequest",
    "departments_bundle",
    "hospital_requests",
    "hospital_tokens",
    "request_approval",
]

STAFF_ROLE_SYSTEM = "https://fhirwall.org/fhir/CodeSystem/demo-staff-role"
_PRACTITIONER_ROLE = "http://terminology.hl7.org/CodeSystem/practitioner-role"
_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

PRACTITIONERS = {
    "dr-heart": ("dept-cardiology", "ward-cardiology", _PRACTITIONER_ROLE, "doctor"),
    "dr-onco": ("dept-oncology", "ward-oncology", _PRACTITIONER_ROLE, "doctor"),
    "lab-tech": ("hospital-lab", None, STAFF_ROLE_SYSTEM, "lab-technician"),
    "privacy-officer": ("hospital-admin", None, STAFF_ROLE_SYSTEM, "privacy-officer"),
    "records-clerk": ("hospital-admin", None, STAFF_ROLE_SYSTEM, "records-officer"),
}
"""Practitioner id -> (organisation, location, role code system, role code)."""

CARE_PATIENTS = {
    "pt-cardio-inpatient": "in cardiology now (Encounter in progress)",
    "pt-onco-recent": "discharged from oncology 5 days ago",
    "pt-cardio-old": "last seen in cardiology 400 days ago (outside the window)",
    "pt-onco-careteam": "no encounter; followed by an oncology CareTeam with dr-onco",
}


def departments_bundle(now: datetime | None = None) -> dict[str, Any]:
    """A transaction Bundle (PUTs with fixed ids) holding the whole scenario."""
    now = now or datetime.now(UTC)
    resources = [*_organizations(), *_staff(), *_patients(now)]
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": resource,
                "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"},
            }
            for resource in resources
        ],
    }


def _organizations() -> list[dict[str, Any]]:
    names = {
        "dept-cardiology": "Cardiology",
        "dept-oncology": "Oncology",
        "hospital-lab": "Laboratory",
        "hospital-admin": "Administration",
    }
    organizations = [
        {"resourceType": "Organization", "id": key, "active": True, "name": name}
        for key, name in names.items()
    ]
    wards = [
        {
            "resourceType": "Location",
            "id": f"ward-{name}",
            "name": f"{name.title()} ward",
            "managingOrganization": {"reference": f"Organization/dept-{name}"},
        }
        for name in ("cardiology", "oncology")
    ]
    return organizations + wards


def _staff() -> list[dict[str, Any]]:
    resources: list[dict[str, Any]] = []
    for practitioner, (organization, location, system, code) in PRACTITIONERS.items():
        resources.append({"resourceType": "Practitioner", "id": practitioner, "active": True})
        role: dict[str, Any] = {
            "resourceType": "PractitionerRole",
            "id": f"role-{practitioner}",
            "active": True,
            "period": {"start": "2020-01-01"},
            "practitioner": {"reference": f"Practitioner/{practitioner}"},
            "organization": {"reference": f"Organization/{organization}"},
            "code": [{"coding": [{"system": system, "code": code}]}],
        }
        if location:
            role["location"] = [{"reference": f"Location/{location}"}]
        resources.append(role)
    return resources


def _patients(now: datetime) -> list[dict[str, Any]]:
    day = timedelta(days=1)
    encounters = {
        "pt-cardio-inpatient": ("in-progress", "cardiology", now - 2 * day, None),
        "pt-onco-recent": ("finished", "oncology", now - 9 * day, now - 5 * day),
        "pt-cardio-old": ("finished", "cardiology", now - 404 * day, now - 400 * day),
    }
    resources: list[dict[str, Any]] = []
    for patient in CARE_PATIENTS:
        resources.append({"resourceType": "Patient", "id": patient, "active": True, "gender": "unknown"})
        resources += _clinical(patient, now)
        if patient in encounters:
            resources.append(_encounter(patient, *encounters[patient]))
    resources.append(
        {
            "resourceType": "CareTeam",
            "id": "careteam-onco",
            "status": "active",
            "subject": {"reference": "Patient/pt-onco-careteam"},
            "participant": [{"member": {"reference": "Practitioner/dr-onco"}}],
            "managingOrganization": [{"reference": "Organization/dept-oncology"}],
        }
    )
    return resources


def _encounter(
    patient: str, status: str, department: str, start: datetime, end: datetime | None
) -> dict[str, Any]:
    period = {"start": start.isoformat(timespec="seconds")}
    if end is not None:
        period["end"] = end.isoformat(timespec="seconds")
    return {
        "resourceType": "Encounter",
        "id": f"enc-{patient}",
        "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": f"Patient/{patient}"},
        "serviceProvider": {"reference": f"Organization/dept-{department}"},
        "location": [{"location": {"reference": f"Location/ward-{department}"}}],
        "period": period,
    }


def _clinical(patient: str, now: datetime) -> list[dict[str, Any]]:
    when = (now - timedelta(days=1)).isoformat(timespec="seconds")
    subject = {"reference": f"Patient/{patient}"}
    return [
        {
            "resourceType": "Observation",
            "id": f"obs-vitals-{patient}",
            "status": "final",
            "category": [{"coding": [{"system": _CATEGORY, "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}], "text": "Heart rate"},
            "subject": subject,
            "effectiveDateTime": when,
            "valueQuantity": {"value": 72, "unit": "/min"},
        },
        {
            "resourceType": "Observation",
            "id": f"obs-lab-{patient}",
            "status": "final",
            "category": [{"coding": [{"system": _CATEGORY, "code": "laboratory"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}], "text": "Hemoglobin"},
            "subject": subject,
            "effectiveDateTime": when,
            "valueQuantity": {"value": 13.5, "unit": "g/dL"},
        },
        {
            "resourceType": "Condition",
            "id": f"cond-{patient}",
            "clinicalStatus": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
                ]
            },
            "code": {"text": "Demo condition"},
            "subject": subject,
        },
    ]


HOSPITAL_POLICY = Path(__file__).resolve().parent.parent / "examples" / "access" / "hospital-policy.yaml"


@dataclass(frozen=True)
class DemoRequest:
    """One printed request: who sends it (a token variable), what, and what it shows."""

    method: str
    url: str
    token: str | None
    expect: str
    body: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


def hospital_tokens(issuer: DevIssuer, base: str, lifetime: int) -> dict[str, str]:
    """Token variable -> token for the scenario's staff (roles and wards come from PractitionerRoles)."""
    staff = {
        "DR_HEART_TOKEN": ("dr-heart", {}),
        "DR_HEART_BTG_TOKEN": ("dr-heart", {"extensions": {"ihe_iua": {"purpose_of_use": ["BTG"]}}}),
        "DR_ONCO_TOKEN": ("dr-onco", {}),
        "LAB_TECH_TOKEN": ("lab-tech", {}),
        "PRIVACY_OFFICER_TOKEN": ("privacy-officer", {}),
    }
    tokens = {
        variable: issuer.mint(
            {
                "sub": f"user-{practitioner}",
                "client_id": "ward-app",
                "scope": "user/*.cruds",
                "fhirUser": f"Practitioner/{practitioner}",
                **extra,
            },
            audience=base,
            lifetime=lifetime,
        )
        for variable, (practitioner, extra) in staff.items()
    }
    hr_claims = {"sub": "hr-system", "client_id": "hr-system", "scope": "system/Patient.r"}
    tokens["HR_SYSTEM_TOKEN"] = issuer.mint(hr_claims, audience=base, lifetime=lifetime)
    return tokens


def request_approval(root: str, token: str) -> str:
    """Create a pending break-glass approval request as dr-heart (the demo prints its id)."""
    answer = httpx.post(
        f"{root}/admin/approval-requests",
        json={"rule": "break-glass", "reason": "unconscious patient from oncology arrives in the ER"},
        headers={"authorization": f"Bearer {token}"},
        timeout=10,
    )
    answer.raise_for_status()
    return str(answer.json()["id"])


def hospital_requests(root: str, approval: str) -> list[tuple[str, list[DemoRequest]]]:
    """The scenario's printed requests, in sections, in the order they must be run."""
    base = f"{root}/fhir"
    approve = f"{root}/admin/approval-requests/{approval}/approve"
    with_approval = (("X-Fhirwall-Approval", approval),)
    revocation = '{"kind":"user","value":"user-lab-tech","reason":"left the laboratory"}'
    return [
        (
            "Department isolation (patients in the department's care: Encounter, EpisodeOfCare or CareTeam):",
            [
                DemoRequest(
                    "GET",
                    f"{base}/Patient/pt-cardio-inpatient",
                    "DR_HEART_TOKEN",
                    "200: cardiology in-patient",
                ),
                DemoRequest(
                    "GET", f"{base}/Patient/pt-onco-recent", "DR_HEART_TOKEN", "403: an oncology patient"
                ),
                DemoRequest(
                    "GET", f"{base}/Patient/pt-onco-recent", "DR_ONCO_TOKEN", "200: discharged 5 days ago"
                ),
                DemoRequest(
                    "GET",
                    f"{base}/Observation?_count=20",
                    "DR_HEART_TOKEN",
                    "200: only cardiology's patients",
                ),
            ],
        ),
        (
            "Operation limits (roles x resource types x operations, FHIRPath conditions):",
            [
                DemoRequest(
                    "GET", f"{base}/Observation?_count=20", "LAB_TECH_TOKEN", "200: lab results only"
                ),
                DemoRequest("GET", f"{base}/Condition", "LAB_TECH_TOKEN", "403: no right on Condition"),
                DemoRequest(
                    "DELETE",
                    f"{base}/Observation/obs-vitals-pt-cardio-inpatient",
                    "DR_HEART_TOKEN",
                    "403: no delete",
                ),
            ],
        ),
        (
            f"Two-person review (break-glass outside the department; approval request {approval} waits):",
            [
                DemoRequest(
                    "GET", f"{base}/Patient/pt-onco-recent", "DR_HEART_BTG_TOKEN", "403: approval required"
                ),
                DemoRequest("POST", approve, "DR_HEART_TOKEN", "403: self-approval is refused", "{}"),
                DemoRequest(
                    "POST", approve, "PRIVACY_OFFICER_TOKEN", "200: approved by a second person", "{}"
                ),
                DemoRequest(
                    "GET",
                    f"{base}/Patient/pt-onco-recent",
                    "DR_HEART_BTG_TOKEN",
                    "200: approved",
                    None,
                    with_approval,
                ),
                DemoRequest(
                    "GET",
                    f"{base}/Patient/pt-onco-recent",
                    "DR_HEART_BTG_TOKEN",
                    "403: used",
                    None,
                    with_approval,
                ),
            ],
        ),
        (
            "Revocation (immediate; shared through Redis by every replica when redis.url is set):",
            [
                DemoRequest(
                    "POST", f"{root}/admin/revocations", "HR_SYSTEM_TOKEN", "201: revoked", revocation
                ),
                DemoRequest("GET", f"{base}/Observation?_count=5", "LAB_TECH_TOKEN", "401: revoked"),
                DemoRequest(
                    "DELETE", f"{root}/admin/revocations/user/user-lab-tech", "HR_SYSTEM_TOKEN", "204: lifted"
                ),
            ],
        ),
    ]

"""Which patient a resource belongs to, for per-patient date shifting (native mode).

A Patient is its own patient; any other resource belongs to the first patient its Patient-compartment
references name: ``Patient/<id>`` (relative, absolute or versioned) or, inside a Bundle, a ``urn:uuid:`` full
URL of a Patient entry. Resources outside every patient compartment have no patient (their own id is used).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.fhir.compartment import compartment_references, patient_id_of_reference

__all__ = ["patient_of"]


def patient_of(resource: Mapping[str, Any], bundle_patients: Mapping[str, str]) -> str | None:
    """The id of the patient ``resource`` belongs to (``bundle_patients``: Patient entry fullUrl -> id)."""
    if resource.get("resourceType") == "Patient":
        own_id = resource.get("id")
        return own_id if isinstance(own_id, str) else None
    for reference in compartment_references(resource):
        patient_id = patient_id_of_reference(reference) or bundle_patients.get(reference)
        if patient_id:
            return patient_id
    return None

"""FHIR references reduced to the relative ``Type/id`` form (pure; no I/O).

The proxy fronts one FHIR server, so a reference is known by its ``Type/id``: relative (``Practitioner/1``),
absolute (``https://host/fhir/Practitioner/1``, read by its last two segments) and version-specific
(``Practitioner/1/_history/3``, the version dropped) all become ``Practitioner/1``. Contained (``#x``),
``urn:`` (``urn:uuid:...``), conditional (``Type?search``) and identifier-only references have no such form
and give None.
"""

from __future__ import annotations

from typing import Any

from proxy.fhir.resource_types import is_type_name, is_valid_id

__all__ = ["patient_id_in", "reference_in", "relative_reference"]


def relative_reference(reference: str) -> str | None:
    """``Type/id`` for a ``Reference.reference`` string, or None when it has no such form."""
    if reference.startswith(("#", "urn:")) or any(char in reference for char in "?# \t\r\n"):
        return None
    segments = reference.split("/")
    if len(segments) >= 4 and segments[-2] == "_history":
        segments = segments[:-2]
    if "://" not in reference and len(segments) != 2:
        return None
    if len(segments) < 2 or not is_type_name(segments[-2]) or not is_valid_id(segments[-1]):
        return None
    return f"{segments[-2]}/{segments[-1]}"


def reference_in(value: Any) -> str | None:
    """``Type/id`` for a JSON ``Reference`` object, or None (no ``reference``, or one without that form)."""
    reference = value.get("reference") if isinstance(value, dict) else None
    return relative_reference(reference) if isinstance(reference, str) else None


def patient_id_in(value: Any) -> str | None:
    """The id of the Patient a JSON ``Reference`` points to, or None when it points elsewhere."""
    reference = reference_in(value)
    if reference is None or not reference.startswith("Patient/"):
        return None
    return reference.removeprefix("Patient/")

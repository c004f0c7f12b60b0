"""What consent rules look at in one resource, read once per resource (pure; no I/O).

* **codes**: the codings of the top-level elements ``code``, ``category``, ``type``, ``class``,
  ``vaccineCode`` and ``medicationCodeableConcept`` — the elements that say what a clinical resource is
  about (Observation/Condition/Procedure ``code`` and ``category``, DocumentReference and Composition
  ``type`` and ``category``, Encounter ``class`` and ``type``, Immunization ``vaccineCode``, the Medication*
  resources' coded medication). Only ``Coding`` / ``CodeableConcept`` values count (``Bundle.type``, a plain
  code, does not); nested elements (Observation components, values) do not.
* **labels**: ``meta.security``, normalised (see ``consent.labels``).
* **data date**: the first of these that is present — ``effectiveDateTime``, ``effectivePeriod.start``,
  ``effectiveInstant``, ``onsetDateTime``, ``onsetPeriod.start``, ``authoredOn``, ``recordedDate``,
  ``issued``, ``date``, ``period.start``, ``occurrenceDateTime``, ``occurrencePeriod.start``,
  ``performedDateTime``, ``performedPeriod.start`` — the clinically relevant date, else ``meta.lastUpdated``.
  It is kept at its own precision (``2024-03`` is all of March 2024). A date that does not parse leaves the
  data undated: a ``dataPeriod`` rule then cannot be shown to match.
* **references**: every literal reference anywhere in the resource (contained resources included), as
  ``Type/id``; **authors**: those in ``recorder``, ``asserter``, ``author``, ``requester`` and ``performer``
  (or ``performer.actor``, for the resources whose performer is a backbone element).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from consent.coding import Coding, codings_in
from consent.dates import FhirDateError, Period, instant_range
from consent.labels import Labels, resource_labels
from proxy.fhir.references import reference_in, relative_reference
from proxy.fhir.resource_types import is_type_name, is_valid_id

__all__ = ["AUTHOR_ELEMENTS", "CODE_ELEMENTS", "DATE_PATHS", "ResourceFacts", "data_date", "facts_of"]

CODE_ELEMENTS: tuple[str, ...] = (
    "code",
    "category",
    "type",
    "class",
    "vaccineCode",
    "medicationCodeableConcept",
)
DATE_PATHS: tuple[tuple[str, ...], ...] = (
    ("effectiveDateTime",),
    ("effectivePeriod", "start"),
    ("effectiveInstant",),
    ("onsetDateTime",),
    ("onsetPeriod", "start"),
    ("authoredOn",),
    ("recordedDate",),
    ("issued",),
    ("date",),
    ("period", "start"),
    ("occurrenceDateTime",),
    ("occurrencePeriod", "start"),
    ("performedDateTime",),
    ("performedPeriod", "start"),
    ("meta", "lastUpdated"),
)
AUTHOR_ELEMENTS: tuple[str, ...] = ("recorder", "asserter", "author", "requester", "performer")


@dataclass(frozen=True, slots=True)
class ResourceFacts:
    """The consent-relevant facts of one resource (``reference`` is ``Type/id``, None without an id)."""

    resource_type: str
    id: str | None
    reference: str | None
    codes: frozenset[Coding]
    labels: Labels
    data_date: Period | None
    references: frozenset[str]
    authors: frozenset[str]


def facts_of(resource: dict[str, Any]) -> ResourceFacts:
    """Read the facts of ``resource`` (parsed JSON); raises ``ValueError`` when it is not a resource."""
    resource_type = resource.get("resourceType") if isinstance(resource, dict) else None
    if not isinstance(resource_type, str) or not is_type_name(resource_type):
        raise ValueError("not a FHIR resource (no resourceType)")
    raw_id = resource.get("id")
    resource_id = raw_id if isinstance(raw_id, str) and is_valid_id(raw_id) else None
    return ResourceFacts(
        resource_type=resource_type,
        id=resource_id,
        reference=None if resource_id is None else f"{resource_type}/{resource_id}",
        codes=frozenset(coding for key in CODE_ELEMENTS for coding in codings_in(resource.get(key))),
        labels=resource_labels(resource),
        data_date=data_date(resource),
        references=frozenset(_references(resource)),
        authors=frozenset(_authors(resource)),
    )


def data_date(resource: dict[str, Any]) -> Period | None:
    """The instants the resource's data date stands for (see the module doc), or None."""
    for path in DATE_PATHS:
        value: Any = resource
        for step in path:
            value = value.get(step) if isinstance(value, dict) else None
        if value is not None:
            try:
                return instant_range(value)
            except FhirDateError:
                return None
    return None


def _references(resource: dict[str, Any]) -> Iterator[str]:
    """Every literal reference in the resource (walked without recursion: depth is not bounded)."""
    stack: list[Any] = [resource]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            reference = node.get("reference")
            if isinstance(reference, str) and (relative := relative_reference(reference)) is not None:
                yield relative
            stack.extend(value for value in node.values() if isinstance(value, dict | list))


def _authors(resource: dict[str, Any]) -> Iterator[str]:
    for key in AUTHOR_ELEMENTS:
        value = resource.get(key)
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, dict):
                continue
            reference = reference_in(item) or reference_in(item.get("actor"))
            if reference is not None:
                yield reference

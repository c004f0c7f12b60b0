"""The FHIR R4 Patient compartment: which patients a resource belongs to (pure; no I/O at request time).

The rules come from ``data/r4-patient-compartment.json``, distilled from the R4 (4.0.1) Patient
CompartmentDefinition by ``data/build_tables.py`` and loaded once at import. A resource is in the compartment
of patient ``P`` when one of the parameters the definition lists for its type holds a reference to
``Patient/P``; a Patient is also in its own compartment and, through ``link``, in those of the patients it
links to. Types the definition lists with no parameters are never in the compartment.

References count only when their type is ``Patient``: relative (``Patient/123``), absolute
(``https://any/base/Patient/123``) or version-specific (``Patient/123/_history/2``). Contained (``#x``),
``urn:`` (``urn:uuid:...``) and logical (identifier-only) references never count, and ids are compared
exactly (``Patient/12`` is not ``Patient/123``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import orjson

from proxy.fhir.references import relative_reference
from proxy.fhir.resource_types import is_valid_id
from proxy.fhir.search_params import ALL_TARGETS, ANY_TARGET, values_at

__all__ = [
    "PATIENT_COMPARTMENT_TYPES",
    "compartment_params",
    "compartment_references",
    "compartment_root_elements",
    "compartment_search_params",
    "in_patient_compartment",
    "patient_id_of_reference",
    "patient_references",
]


@dataclass(frozen=True, slots=True)
class _CompartmentParam:
    name: str
    paths: tuple[str, ...]
    targets: tuple[str, ...]

    @property
    def can_hold_patient(self) -> bool:
        """True when the parameter can point to a Patient (and its paths are known)."""
        return "Patient" in self.targets and bool(self.paths)


def _param(raw: Mapping[str, Any]) -> _CompartmentParam:
    targets = tuple(raw.get("targets", ()))
    paths = () if raw.get("complex") else tuple(raw["paths"])
    return _CompartmentParam(str(raw["param"]), paths, ALL_TARGETS if targets == (ANY_TARGET,) else targets)


def _load() -> dict[str, tuple[_CompartmentParam, ...]]:
    raw = orjson.loads((files("proxy.fhir") / "data" / "r4-patient-compartment.json").read_bytes())
    return {resource_type: tuple(_param(item) for item in params) for resource_type, params in raw.items()}


_COMPARTMENT = _load()
_PATIENT_PARAMS = {
    resource_type: tuple(param for param in params if param.can_hold_patient)
    for resource_type, params in _COMPARTMENT.items()
}


def _paths_by_type() -> dict[str, tuple[tuple[str, tuple[str, ...] | None], ...]]:
    """Per type, each compartment path as (top-level element, None when the path is just that element,
    else the full path for the generic walk) — plain top-level references are checked without walking."""
    table: dict[str, tuple[tuple[str, tuple[str, ...] | None], ...]] = {}
    for resource_type, params in _PATIENT_PARAMS.items():
        entries = []
        for param in params:
            for path in param.paths:
                element = path.split(".", 1)[0].split("[", 1)[0]
                entries.append((element, None if path == element else (path,)))
        table[resource_type] = tuple(dict.fromkeys(entries))
    return table


_PATHS_BY_TYPE = _paths_by_type()

PATIENT_COMPARTMENT_TYPES: frozenset[str] = frozenset(name for name, params in _COMPARTMENT.items() if params)
"""The resource types that can be in a Patient compartment (the definition lists parameters for them)."""


def compartment_root_elements(resource_type: str | None = None) -> tuple[str, ...]:
    """The top-level elements the compartment parameter paths start from (``subject``, ...), for one type
    or (``None``) for every type."""
    params = _PATIENT_PARAMS.values() if resource_type is None else [_PATIENT_PARAMS.get(resource_type, ())]
    roots = {
        path.split(".", 1)[0].split("[", 1)[0] for group in params for param in group for path in param.paths
    }
    return tuple(sorted(roots))


def compartment_params(resource_type: str) -> tuple[str, ...]:
    """The parameter names the Patient CompartmentDefinition lists for ``resource_type`` (empty: never in)."""
    return tuple(param.name for param in _COMPARTMENT.get(resource_type, ()))


def compartment_search_params(resource_type: str) -> tuple[str, ...]:
    """The compartment parameters usable as ``param=Patient/{id}`` to narrow a search to one patient.

    In the definition's order (``Observation`` -> ``("subject", "performer")``). Each one alone selects a
    subset of the compartment; a proxy narrowing a search adds the first (usually ``patient`` or
    ``subject``) and still checks every returned resource with :func:`in_patient_compartment`.
    """
    return tuple(param.name for param in _PATIENT_PARAMS.get(resource_type, ()))


def patient_id_of_reference(reference: str) -> str | None:
    """The id of the Patient that a ``Reference.reference`` string points to, or None if it is not one."""
    relative = relative_reference(reference)
    return (
        relative.removeprefix("Patient/")
        if relative is not None and relative.startswith("Patient/")
        else None
    )


def _compartment_references(resource: Mapping[str, Any], resource_type: str) -> Iterator[str]:
    """Every ``Reference.reference`` string at the type's compartment paths (plain top-level elements are
    read directly; nested paths are walked)."""
    for element, nested in _PATHS_BY_TYPE.get(resource_type, ()):
        node = resource.get(element)
        if node is None:
            continue
        values = (
            (node if isinstance(node, list) else (node,)) if nested is None else values_at(resource, nested)
        )
        for value in values:
            reference = value.get("reference") if isinstance(value, dict) else None
            if isinstance(reference, str):
                yield reference


def compartment_references(resource: Mapping[str, Any]) -> Iterator[str]:
    """Every reference string at the compartment paths of ``resource``'s type, as written (``urn:uuid:``
    and contained references included); callers decide which of them name a patient."""
    resource_type = resource.get("resourceType")
    if isinstance(resource_type, str):
        yield from _compartment_references(resource, resource_type)


def _patient_id(reference: str) -> str | None:
    """``patient_id_of_reference`` with a quick path for the common ``Patient/<id>``."""
    if reference.startswith("Patient/") and reference.count("/") == 1:
        candidate = reference[8:]
        return candidate if is_valid_id(candidate) else None
    return patient_id_of_reference(reference)


def patient_references(resource: Mapping[str, Any]) -> set[str]:
    """The ids of the patients whose compartment ``resource`` (parsed JSON) is in."""
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        return set()
    found = {
        patient_id
        for reference in _compartment_references(resource, resource_type)
        if (patient_id := _patient_id(reference)) is not None
    }
    own_id = resource.get("id")
    if resource_type == "Patient" and isinstance(own_id, str) and is_valid_id(own_id):
        found.add(own_id)
    return found


def in_patient_compartment(resource: Mapping[str, Any], patient_id: str) -> bool:
    """True when ``resource`` is in the compartment of the patient with id ``patient_id`` (exact match).

    Stops at the first reference to that patient (the hot path of response filtering)."""
    resource_type = resource.get("resourceType")
    if resource_type == "Patient" and resource.get("id") == patient_id and is_valid_id(patient_id):
        return True
    if not isinstance(resource_type, str):
        return False
    relative = "Patient/" + patient_id
    for reference in _compartment_references(resource, resource_type):
        if patient_id in reference and (reference == relative or _patient_id(reference) == patient_id):
            return True
    return False

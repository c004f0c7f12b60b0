"""FHIR Consent resources (R4 and R5) parsed once into an immutable directive tree (pure; no I/O).

A ``ConsentDirective`` holds the Consent's status, patient, validity period and a tree of ``Provision``s:
the root states the base rule and each nested level holds exceptions to the level above. Every provision
carries its effective ``kind`` (permit or deny), whichever FHIR version it came from:

* **R4**: the root is ``Consent.provision`` with its ``type``; nested provisions state their own ``type``.
* **R5**: ``Consent.decision`` is the base rule; the root provision carries it, with ``Consent.grantee`` as
  its actors (no role). The ``Consent.provision`` list holds its exceptions: nested provisions have no
  ``type`` and negate their parent level, so the first level is the opposite of ``decision``, the next the
  opposite of that, and so on. ``resourceType`` codes become ``classes``; ``documentType`` is kept apart
  (``document_types``) because R5 ANDs it with ``resourceType``.

The version is told by the top-level elements only one version has (R4: ``patient``, ``dateTime``,
``scope``, ``policyRule``, ``policy``, ``performer``, ``organization``, a single ``provision`` object; R5:
``subject``, ``date``, ``period``, ``decision``, ``grantor``, ``grantee``, ``manager``, ``controller``,
``regulatoryBasis``, ``policyBasis``, ``policyText``, a ``provision`` list), R4 when there are none; a
Consent mixing both is refused, and so is a provision holding an element of the other version (a ``type``
in R5, a ``resourceType`` in R4). Provisions may nest ``MAX_DEPTH`` levels deep.

A Consent the proxy cannot fully understand raises ``ConsentParseError`` instead of being half-read, so the
caller can fail closed: unknown statuses, unknown or misspelt provision elements, modifier extensions and
``implicitRules`` (which FHIR forbids ignoring), R5 ``expression`` rules, actors or data without a
resolvable ``Type/id`` reference, coded elements holding no code, malformed dates and periods, and an
``active`` Consent stating no rule at all (only a policy reference, which the proxy cannot read).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

from consent.coding import Coding, coding_of, codings_in
from consent.dates import FhirDateError, Period, instant_range, parse_period
from consent.labels import normalise_label
from consent.purpose import ACT_REASON_SYSTEM
from proxy.fhir.references import patient_id_in, reference_in
from proxy.fhir.resource_types import is_type_name

__all__ = [
    "CONSENT_ACTION_SYSTEM",
    "DATA_MEANINGS",
    "MAX_DEPTH",
    "RESOURCE_TYPES_SYSTEM",
    "ActorRule",
    "ConsentDirective",
    "ConsentParseError",
    "DataReference",
    "Kind",
    "Provision",
    "parse_consent",
    "reads_resource",
    "resource_independent",
]

Kind = Literal["permit", "deny"]
Version = Literal["R4", "R5"]
DataMeaning = Literal["instance", "related", "dependents", "authoredby"]

RESOURCE_TYPES_SYSTEM = "http://hl7.org/fhir/resource-types"
CONSENT_ACTION_SYSTEM = "http://terminology.hl7.org/CodeSystem/consentaction"
_MEANINGS: dict[str, DataMeaning] = {meaning: meaning for meaning in get_args(DataMeaning)}
DATA_MEANINGS: frozenset[str] = frozenset(_MEANINGS)

_TYPE_SYSTEMS = frozenset({"", RESOURCE_TYPES_SYSTEM, "http://hl7.org/fhir/fhir-types"})
_PURPOSE_SYSTEMS = frozenset({"", ACT_REASON_SYSTEM, "urn:oid:2.16.840.1.113883.5.8"})
_STATUSES: dict[Version, frozenset[str]] = {
    "R4": frozenset({"draft", "proposed", "active", "rejected", "inactive", "entered-in-error"}),
    "R5": frozenset({"draft", "active", "inactive", "not-done", "entered-in-error", "unknown"}),
}
_R4_MARKERS = ("patient", "dateTime", "scope", "policyRule", "policy", "performer", "organization")
_R5_MARKERS = ("subject", "date", "period", "decision", "grantor", "grantee", "manager", "controller",
               "regulatoryBasis", "policyBasis", "policyText")  # fmt: skip
_COMMON_PROVISION = frozenset(
    {"id", "extension", "period", "actor", "action", "securityLabel", "purpose", "code", "dataPeriod", "data"}
)
_PROVISION_ELEMENTS: dict[Version, frozenset[str]] = {
    "R4": _COMMON_PROVISION | {"type", "class", "provision"},
    "R5": _COMMON_PROVISION | {"resourceType", "documentType", "provision"},
}
_OPPOSITE: dict[Kind, Kind] = {"permit": "deny", "deny": "permit"}
MAX_DEPTH = 16
"""The deepest provision nesting accepted (real directives use two or three levels)."""


class ConsentParseError(ValueError):
    """A Consent the proxy cannot understand (and so must not enforce as if it said nothing)."""


@dataclass(frozen=True, slots=True)
class ActorRule:
    """A party a provision is about: ``reference`` (``Type/id``); ``roles`` are kept for audit only."""

    roles: tuple[Coding, ...]
    reference: str


@dataclass(frozen=True, slots=True)
class DataReference:
    """A specific resource a provision is about, and how the reference is read."""

    meaning: DataMeaning
    reference: str


@dataclass(frozen=True, slots=True)
class Provision:
    """One rule of a Consent. Empty elements are no constraint; ``children`` are its exceptions.

    ``actions`` and ``purposes`` are plain codes for the standard systems (``consentaction``,
    ``v3-ActReason``) and ``system|code`` otherwise; ``security_labels`` are normalised labels; ``classes``
    are resource types (system ``RESOURCE_TYPES_SYSTEM``) or other class codings.
    """

    kind: Kind
    period: Period | None = None
    actors: tuple[ActorRule, ...] = ()
    actions: tuple[str, ...] = ()
    security_labels: tuple[Coding, ...] = ()
    purposes: tuple[str, ...] = ()
    classes: tuple[Coding, ...] = ()
    document_types: tuple[Coding, ...] = ()
    codes: tuple[Coding, ...] = ()
    data_period: Period | None = None
    data: tuple[DataReference, ...] = ()
    children: tuple[Provision, ...] = ()


@dataclass(frozen=True, slots=True)
class ConsentDirective:
    """A parsed Consent. ``root`` is None only for a Consent that is not ``active`` and states no rule."""

    id: str | None
    status: str
    patient: str | None
    period: Period | None
    root: Provision | None
    scopes: tuple[Coding, ...]
    policies: tuple[str, ...]
    policy_rules: tuple[Coding, ...]
    version: Version
    recorded: datetime | None

    @property
    def active(self) -> bool:
        """True when the status is ``active`` (the only status that is enforced)."""
        return self.status == "active"


def parse_consent(resource: Any, version: Version | None = None) -> ConsentDirective:
    """Parse a Consent resource (JSON object); ``version`` forces R4 or R5 instead of telling it."""
    if not isinstance(resource, dict) or resource.get("resourceType") != "Consent":
        raise ConsentParseError("not a Consent resource")
    _refuse_modifiers(resource, "Consent")
    if "implicitRules" in resource:
        raise ConsentParseError("Consent.implicitRules: rules the proxy does not know must not be ignored")
    version = version or _version_of(resource)
    status = resource.get("status")
    if not isinstance(status, str) or status not in _STATUSES[version]:
        raise ConsentParseError(f"Consent.status: not a known {version} Consent status")
    root = _r4_root(resource) if version == "R4" else _r5_root(resource)
    if root is None and status == "active":
        raise ConsentParseError("an active Consent states no provision or decision the proxy can enforce")
    return ConsentDirective(
        id=resource["id"] if isinstance(resource.get("id"), str) else None,
        status=status,
        patient=patient_id_in(resource.get("patient" if version == "R4" else "subject")),
        period=_period(resource, "period", "Consent"),
        root=root,
        scopes=tuple(codings_in(resource.get("scope"))),
        policies=_policies(resource, version),
        policy_rules=tuple(codings_in(resource.get("policyRule" if version == "R4" else "regulatoryBasis"))),
        version=version,
        recorded=_recorded(resource, "dateTime" if version == "R4" else "date"),
    )


# --- version, header ----------------------------------------------------------------------------------


def _version_of(resource: dict[str, Any]) -> Version:
    provision = resource.get("provision")
    r4 = any(key in resource for key in _R4_MARKERS) or isinstance(provision, dict)
    r5 = any(key in resource for key in _R5_MARKERS) or isinstance(provision, list)
    if r4 and r5:
        raise ConsentParseError("the Consent mixes R4 and R5 elements")
    return "R5" if r5 else "R4"


def _policies(resource: dict[str, Any], version: Version) -> tuple[str, ...]:
    if version == "R4":
        entries = _list(resource, "policy", "Consent")
        return tuple(
            entry["uri"] for entry in entries if isinstance(entry, dict) and isinstance(entry.get("uri"), str)
        )
    basis = resource.get("policyBasis")
    url = basis.get("url") if isinstance(basis, dict) else None
    return (url,) if isinstance(url, str) else ()


def _recorded(resource: dict[str, Any], key: str) -> datetime | None:
    value = resource.get(key)
    if value is None:
        return None
    try:
        return instant_range(value).start
    except FhirDateError as exc:
        raise ConsentParseError(f"Consent.{key}: {exc}") from exc


# --- provisions ---------------------------------------------------------------------------------------


def _r4_root(resource: dict[str, Any]) -> Provision | None:
    node = resource.get("provision")
    if node is None:
        return None
    if not isinstance(node, dict):
        raise ConsentParseError("Consent.provision: must be an object in R4")
    return _r4_provision(node, "Consent.provision")


def _r4_provision(node: dict[str, Any], where: str) -> Provision:
    _check_elements(node, "R4", where)
    kind = node.get("type")
    if kind not in ("permit", "deny"):
        raise ConsentParseError(f"{where}.type: an R4 provision must say permit or deny")
    classes = tuple(_resource_type_or_class(coding, where) for coding in _codings(node, "class", where))
    children = tuple(
        _r4_provision(child, f"{where}.provision[{index}]")
        for index, child in enumerate(_objects(node, "provision", where))
    )
    return _provision(node, kind, where, classes=classes, children=children)


def _r5_root(resource: dict[str, Any]) -> Provision | None:
    decision = resource.get("decision")
    nodes = _objects(resource, "provision", "Consent")
    if decision is None and not nodes:
        return None
    if decision not in ("permit", "deny"):
        raise ConsentParseError("Consent.decision: must be permit or deny when the Consent states rules")
    grantees = tuple(
        ActorRule((), _reference(grantee, f"Consent.grantee[{index}]"))
        for index, grantee in enumerate(_list(resource, "grantee", "Consent"))
    )
    children = tuple(
        _r5_provision(node, _OPPOSITE[decision], f"Consent.provision[{index}]")
        for index, node in enumerate(nodes)
    )
    return Provision(kind=decision, actors=grantees, children=children)


def _r5_provision(node: dict[str, Any], kind: Kind, where: str) -> Provision:
    _check_elements(node, "R5", where)
    classes = tuple(
        _resource_type_or_class(coding, where) for coding in _codings(node, "resourceType", where)
    )
    children = tuple(
        _r5_provision(child, _OPPOSITE[kind], f"{where}.provision[{index}]")
        for index, child in enumerate(_objects(node, "provision", where))
    )
    return _provision(
        node,
        kind,
        where,
        classes=classes,
        children=children,
        document_types=_codings(node, "documentType", where),
    )


def _provision(
    node: dict[str, Any],
    kind: Kind,
    where: str,
    *,
    classes: tuple[Coding, ...],
    children: tuple[Provision, ...],
    document_types: tuple[Coding, ...] = (),
) -> Provision:
    """The elements R4 and R5 provisions share, read the same way."""
    return Provision(
        kind=kind,
        period=_period(node, "period", where),
        actors=tuple(
            _actor(actor, f"{where}.actor[{index}]")
            for index, actor in enumerate(_objects(node, "actor", where))
        ),
        actions=_codes(_concepts(node, "action", where), CONSENT_ACTION_SYSTEM),
        security_labels=tuple(map(normalise_label, _codings(node, "securityLabel", where))),
        purposes=_codes(_codings(node, "purpose", where), ACT_REASON_SYSTEM),
        classes=classes,
        document_types=document_types,
        codes=_concepts(node, "code", where),
        data_period=_period(node, "dataPeriod", where),
        data=tuple(
            _data(item, f"{where}.data[{index}]") for index, item in enumerate(_objects(node, "data", where))
        ),
        children=children,
    )


def _check_elements(node: dict[str, Any], version: Version, where: str) -> None:
    if where.count(".provision") > MAX_DEPTH:
        raise ConsentParseError(f"provisions nested deeper than {MAX_DEPTH} levels")
    _refuse_modifiers(node, where)
    if version == "R5" and "expression" in node:
        raise ConsentParseError(f"{where}.expression: computable rules are not supported")
    unknown = sorted(
        key for key in node if key not in _PROVISION_ELEMENTS[version] and not key.startswith("_")
    )
    if unknown:
        raise ConsentParseError(
            f"{where}: element(s) {', '.join(unknown)} not understood in an {version} provision"
        )


def _actor(node: dict[str, Any], where: str) -> ActorRule:
    _refuse_modifiers(node, where)
    roles = tuple(codings_in(node.get("role")))
    return ActorRule(roles, _reference(node.get("reference"), f"{where}.reference"))


def _data(node: dict[str, Any], where: str) -> DataReference:
    _refuse_modifiers(node, where)
    raw = node.get("meaning")
    meaning = _MEANINGS.get(raw) if isinstance(raw, str) else None
    if meaning is None:
        raise ConsentParseError(f"{where}.meaning: must be one of {', '.join(sorted(DATA_MEANINGS))}")
    return DataReference(meaning, _reference(node.get("reference"), f"{where}.reference"))


def _reference(value: Any, where: str) -> str:
    reference = reference_in(value)
    if reference is None:
        raise ConsentParseError(f"{where}: needs a literal Type/id reference the proxy can compare")
    return reference


def _resource_type_or_class(coding: Coding, where: str) -> Coding:
    if coding.system not in _TYPE_SYSTEMS:
        return coding
    if not is_type_name(coding.code):
        raise ConsentParseError(f"{where}: a resource type class must name a resource type")
    return Coding(RESOURCE_TYPES_SYSTEM, coding.code)


def _codes(codings: tuple[Coding, ...], standard_system: str) -> tuple[str, ...]:
    """Plain codes for the standard system (or none given; the OID for purposes too), ``system|code`` else."""
    systems = _PURPOSE_SYSTEMS if standard_system == ACT_REASON_SYSTEM else frozenset({"", standard_system})
    return tuple(coding.code if coding.system in systems else str(coding) for coding in codings)


# --- JSON shapes --------------------------------------------------------------------------------------


def _refuse_modifiers(node: dict[str, Any], where: str) -> None:
    if node.get("modifierExtension"):
        raise ConsentParseError(f"{where}.modifierExtension: modifier extensions must not be ignored")


def _list(node: dict[str, Any], key: str, where: str) -> list[Any]:
    value = node.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConsentParseError(f"{where}.{key}: must be a list")
    return value


def _objects(node: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    items = _list(node, key, where)
    if not all(isinstance(item, dict) for item in items):
        raise ConsentParseError(f"{where}.{key}: every entry must be an object")
    return items


def _each(
    node: dict[str, Any], key: str, where: str, read: Callable[[Any], list[Coding]]
) -> tuple[Coding, ...]:
    found: list[Coding] = []
    for index, item in enumerate(_list(node, key, where)):
        codings = read(item)
        if not codings:
            raise ConsentParseError(f"{where}.{key}[{index}]: holds no code the proxy can compare")
        found += codings
    return tuple(found)


def _codings(node: dict[str, Any], key: str, where: str) -> tuple[Coding, ...]:
    """A ``Coding[]`` element: every entry must carry a code."""
    return _each(node, key, where, lambda item: [coding] if (coding := coding_of(item)) is not None else [])


def _concepts(node: dict[str, Any], key: str, where: str) -> tuple[Coding, ...]:
    """A ``CodeableConcept[]`` element: every concept must carry at least one coded value."""
    return _each(
        node,
        key,
        where,
        lambda item: list(codings_in(item)) if isinstance(item, dict) and "coding" in item else [],
    )


def _period(node: dict[str, Any], key: str, where: str) -> Period | None:
    value = node.get(key)
    if value is None:
        return None
    try:
        return parse_period(value)
    except FhirDateError as exc:
        raise ConsentParseError(f"{where}.{key}: {exc}") from exc


def reads_resource(provision: Provision) -> bool:
    """True when the provision or an exception below it looks at the resource itself (class, document type,
    code, security label, data period or data reference); otherwise its decision is the same for every
    unlabelled resource of the patient, given the requester."""
    own = (
        provision.classes,
        provision.document_types,
        provision.codes,
        provision.security_labels,
        provision.data,
    )
    return any(own) or provision.data_period is not None or any(map(reads_resource, provision.children))


def resource_independent(directives: tuple[ConsentDirective, ...]) -> bool:
    """True when no rule of these Consents looks at the resource (see ``reads_resource``)."""
    return not any(directive.root is not None and reads_resource(directive.root) for directive in directives)

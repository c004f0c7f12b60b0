"""The FHIR type of every JSON element of every resource, for the masking engine's walk over resource dicts.

The table (``data/r4b-types.json``) is distilled by ``data/build_types.py`` from the ``fhir.resources.R4B``
models, i.e. FHIR R4B (4.3.0), and loaded once at import; every ``ElementInfo`` is built then and shared, so
the lookups below are plain dictionary reads. R4B was a limited release over R4 (4.0.1), the version the
proxy serves, and the two share the element definitions of the resources they have in common, except that
R4B redesigned ``Evidence`` and ``EvidenceVariable``, added ``subjectCanonical`` to ``ActivityDefinition``
and ``PlanDefinition`` and changed the open-type choices (``Extension.value[x]`` and the like; the table
lists R4's and R4B's types together). R4B also adds resources R4 lacks (``AdministrableProductDefinition``,
``Citation``, ``ClinicalUseDefinition``, ``EvidenceReport``, ``Ingredient``, ``ManufacturedItemDefinition``,
``MedicinalProductDefinition``, ``NutritionProduct``, ``PackagedProductDefinition``,
``RegulatedAuthorization``, ``SubscriptionStatus``, ``SubscriptionTopic``, ``SubstanceDefinition``) and drops
the R4 ones they replace (``MedicinalProduct*``, ``SubstanceNucleicAcid``, ``SubstancePolymer``,
``SubstanceProtein``, ``SubstanceReferenceInformation``, ``SubstanceSourceMaterial``,
``SubstanceSpecification``, ``EffectEvidenceSynthesis``, ``RiskEvidenceSynthesis``): those are unknown here.

A type is named by its *internal key*: a resource (``Patient``), a datatype (``HumanName``, ``Quantity``,
``Element``, ``BackboneElement``), a backbone element class (``PatientContact``, ``BundleEntry``,
``TimingRepeat``), ``Resource`` (any resource: descend with the value's ``resourceType``) or a primitive
(``date``, ``string``, ...). An element is found by its JSON key: ``valueQuantity`` for the choice element
``value[x]``, ``_birthDate`` for the primitive extension of ``birthDate`` (type ``Element``). A resource's
``resourceType`` is not an element (``ExampleScenario.instance.resourceType`` is: a ``code``). A backbone
class's FHIRPath type (``ElementInfo.fhir_type``, what ``nodesByType()`` matches) is ``BackboneElement``
inside a resource and ``Element`` inside a datatype. ``required`` is the element's minimum cardinality
(>= 1); every JSON key of a required choice element is marked required.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from types import MappingProxyType
from typing import Any, Final

import orjson

__all__ = [
    "DATE_TYPES",
    "FHIR_VERSION",
    "NUMBER_TYPES",
    "PRIMITIVE_TYPES",
    "QUANTITY_TYPES",
    "ElementInfo",
    "complex_type_graph",
    "element",
    "elements",
    "fhir_type_of",
    "fhir_types",
    "fhirpath_children",
    "is_known_type",
    "is_resource_type",
]


@dataclass(frozen=True, slots=True)
class ElementInfo:
    """One JSON key of one type: what it holds and how to descend into it."""

    name: str
    """The JSON key: ``valueQuantity``, ``_birthDate``."""
    type_name: str
    """The internal type key to descend with: ``Quantity``, ``PatientContact``, ``date``, ``Resource``, ..."""
    fhir_type: str
    """The FHIRPath type name (for ``nodesByType()``): ``Quantity``, ``BackboneElement``, ``date``, ..."""
    is_list: bool
    choice_of: str | None
    """The choice element's name (``value`` for ``valueQuantity``), else None."""
    required: bool
    """Minimum cardinality >= 1."""
    is_primitive: bool


# "Type", then flags (* list, ! required, + has a "_key" sibling), then "@choice" for a choice element.
_CODE = re.compile(r"([A-Za-z0-9]+)([*!+]*)(?:@([a-z][A-Za-z0-9]*))?")
_NESTED = "n"
_RESOURCE = "r"
_EMPTY: Mapping[str, ElementInfo] = {}


class _Loader:
    """Builds every type's elements once, inherited ``ElementInfo`` objects shared with the base type."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.version: str = raw["fhirVersion"]
        self.primitives: frozenset[str] = frozenset(raw["primitives"])
        self.types: dict[str, dict[str, Any]] = raw["types"]
        self.fhir_type = {
            name: (entry["b"] if entry["k"] == _NESTED else name) for name, entry in self.types.items()
        }
        self.fhir_type.update((name, name) for name in self.primitives)
        self.elements: dict[str, dict[str, ElementInfo]] = {}
        # The same key with the same code (``"status": "code!+"``) is the same ElementInfo in every type.
        self.shared: dict[tuple[str, str], tuple[ElementInfo, ...]] = {}

    def build(self, name: str, key: str, code: str) -> tuple[ElementInfo, ...]:
        """The element ``key`` with its ``_key`` sibling if it has one."""
        match = _CODE.fullmatch(code)
        if match is None or match[1] not in self.fhir_type:
            raise ValueError(f"r4b-types.json: {name}.{key} has the bad type {code!r}")
        type_name, flags, choice = match[1], match[2], match[3]
        is_list = "*" in flags
        info = ElementInfo(
            name=key,
            type_name=type_name,
            fhir_type=self.fhir_type[type_name],
            is_list=is_list,
            choice_of=choice,
            required="!" in flags,
            is_primitive=type_name in self.primitives,
        )
        if "+" not in flags:
            return (info,)
        return info, ElementInfo("_" + key, "Element", "Element", is_list, None, False, False)

    def resolve(self, name: str) -> dict[str, ElementInfo]:
        done = self.elements.get(name)
        if done is not None:
            return done
        entry = self.types[name]
        base = entry.get("b")
        result = dict(self.resolve(base)) if base else {}
        for key, code in entry["e"].items():
            infos = self.shared.get((key, code))
            if infos is None:
                infos = self.shared[key, code] = self.build(name, key, code)
            for info in infos:
                result[info.name] = info
        self.elements[name] = result
        return result


def _steps(infos: Mapping[str, ElementInfo]) -> dict[str, tuple[ElementInfo, ...]]:
    steps: dict[str, list[ElementInfo]] = {}
    for info in infos.values():
        if info.name.startswith("_"):
            continue
        steps.setdefault(info.name, []).append(info)
        if info.choice_of is not None:
            steps.setdefault(info.choice_of, []).append(info)
    return {step: tuple(found) for step, found in steps.items()}


def _load() -> _Loader:
    loader = _Loader(orjson.loads((files("masking.data") / "r4b-types.json").read_bytes()))
    for name in loader.types:
        loader.resolve(name)
    return loader


_LOADED = _load()

FHIR_VERSION: Final[str] = _LOADED.version
"""The FHIR version the table was distilled from (R4B)."""
PRIMITIVE_TYPES: Final[frozenset[str]] = _LOADED.primitives
"""The FHIR primitive types elements use: ``boolean``, ``string``, ``date``, ``decimal``, ``xhtml``, ..."""
DATE_TYPES: Final[frozenset[str]] = frozenset({"date", "dateTime", "instant"})
NUMBER_TYPES: Final[frozenset[str]] = (
    frozenset({"decimal", "integer", "positiveInt", "unsignedInt", "integer64"}) & PRIMITIVE_TYPES
)
QUANTITY_TYPES: Final[frozenset[str]] = frozenset(
    {"Quantity", "Age", "Count", "Duration", "Distance", "Money", "SimpleQuantity", "MoneyQuantity"}
) & frozenset(_LOADED.types)
"""``Quantity``, its specialisations and ``Money`` (``SimpleQuantity`` is a profile, typed ``Quantity``)."""

# Plain dicts, handed out as read-only Mappings: a MappingProxyType would double the cost of ``.get``.
_ELEMENTS: Final[dict[str, Mapping[str, ElementInfo]]] = dict(_LOADED.elements)
_STEPS: Final[dict[str, dict[str, tuple[ElementInfo, ...]]]] = {
    name: _steps(infos) for name, infos in _LOADED.elements.items()
}
_RESOURCE_TYPES: Final[frozenset[str]] = frozenset(
    name for name, entry in _LOADED.types.items() if entry["k"] == _RESOURCE
)
_KNOWN_TYPES: Final[frozenset[str]] = frozenset(_ELEMENTS) | PRIMITIVE_TYPES
_FHIR_TYPES: Final[frozenset[str]] = (
    frozenset(name for name, entry in _LOADED.types.items() if entry["k"] != _NESTED) | PRIMITIVE_TYPES
)
_NO_STEPS: Final[dict[str, tuple[ElementInfo, ...]]] = {}
_FHIR_TYPE_OF: Final[dict[str, str]] = dict(_LOADED.fhir_type)
_GRAPH: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        name: frozenset(
            info.type_name
            for info in infos.values()
            if not info.is_primitive and info.type_name != "Resource"
        )
        for name, infos in _LOADED.elements.items()
    }
)
del _LOADED


def element(type_name: str, key: str) -> ElementInfo | None:
    """The element ``key`` (a JSON key) of ``type_name``, or None if the type has no such element."""
    return _ELEMENTS.get(type_name, _EMPTY).get(key)


def elements(type_name: str) -> Mapping[str, ElementInfo]:
    """Every element of ``type_name`` by JSON key; empty for primitives and unknown types.

    The mapping is the table itself, shared by every caller: never modify it.
    """
    return _ELEMENTS.get(type_name, _EMPTY)


def is_resource_type(name: str) -> bool:
    """Whether ``name`` is a concrete resource type (a ``resourceType`` value); not ``Resource`` itself."""
    return name in _RESOURCE_TYPES


def is_known_type(name: str) -> bool:
    """Whether ``name`` is a resource, abstract resource, datatype, backbone class or primitive type."""
    return name in _KNOWN_TYPES


def fhirpath_children(type_name: str, step: str) -> tuple[ElementInfo, ...]:
    """The JSON elements a FHIRPath child step selects on ``type_name``.

    ``value`` on ``Observation`` gives every ``value[x]`` choice (``valueQuantity``, ``valueString``, ...); a
    plain element name, or a choice element's JSON key, gives that element (``name`` -> ``(name,)``); an
    unknown step or type gives ``()``.
    ``_key`` primitive extensions are never selected (FHIRPath reaches them through the primitive).
    """
    return _STEPS.get(type_name, _NO_STEPS).get(step, ())


def fhir_types() -> frozenset[str]:
    """Every FHIRPath type name ``nodesByType()`` can match: resources (and ``Resource``,
    ``DomainResource``), datatypes (with ``Element`` and ``BackboneElement``) and primitives."""
    return _FHIR_TYPES


def fhir_type_of(type_name: str) -> str:
    """The FHIRPath type name of an internal type key (``PatientContact`` -> ``BackboneElement``,
    ``TimingRepeat`` -> ``Element``, ``Patient`` -> ``Patient``); an unknown name is returned unchanged."""
    return _FHIR_TYPE_OF.get(type_name, type_name)


def complex_type_graph() -> Mapping[str, frozenset[str]]:
    """Every complex type (internal key) -> the complex types its elements hold, without ``Resource``: the
    edges of a walk that does not cross into contained or bundled resources (read-only, shared)."""
    return _GRAPH

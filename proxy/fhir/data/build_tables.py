"""Distil the FHIR R4 (4.0.1) search parameters and Patient compartment into the compact tables we ship.

Run offline against three files of the specification's R4 definitions download::

    python proxy/fhir/data/build_tables.py search-parameters.json compartmentdefinition-patient.json \\
        profiles-resources.json [OUT_DIR]

``search-parameters.json`` is the Bundle of every R4 SearchParameter, ``compartmentdefinition-patient.json``
the Patient CompartmentDefinition and ``profiles-resources.json`` the Bundle of resource StructureDefinitions
(used only to know which elements are choice elements ``x[x]`` and of which types). Only definitions whose
canonical URL is under ``http://hl7.org/fhir/`` and whose version is 4.0.1 are used, so redistributed copies
with local additions give the same output.

Outputs (in OUT_DIR, default: this folder):

* ``r4-search-params.json``: resource type -> {param name -> {"type", "paths", "targets"?, "complex"?}}.
  ``Resource`` and ``DomainResource`` hold the common parameters (``_id``, ``_lastUpdated``, ...).
* ``r4-patient-compartment.json``: resource type -> [{"param", "paths", "targets", "complex"?}], for every
  type the CompartmentDefinition lists (an empty list means "never in the compartment").

A path is a dotted list of JSON element names relative to the resource (``subject``, ``name.family``,
``effectiveDateTime``); a step may carry one equality filter on a child primitive, written
``telecom[system=email]``. Converted FHIRPath forms: ``Type.a.b``; choice elements, cast
(``(Type.x as dateTime)``, ``Type.x.as(Period)`` -> ``xDateTime``, ``xPeriod``) or not (expanded to every
allowed type); ``.where(resolve() is T)``, which narrows ``targets`` to ``T``; ``.where(field='value')``.
Anything else (other functions, indexes, ``exists()``, extensions, no expression), and the ``phonetic``
parameters (matched by an unspecified algorithm), keep the parameter with ``"paths": []`` and
``"complex": true``. ``targets`` lists the resource types a reference parameter can
point to; ``["*"]`` stands for "any resource type" (the specification spells out every R4 type).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

__all__ = [
    "Conversion",
    "ElementIndex",
    "build_compartment",
    "build_search_params",
    "convert_expression",
    "main",
]

FHIR_VERSION = "4.0.1"
CORE_PREFIX = "http://hl7.org/fhir/"
COMMON_BASES = ("Resource", "DomainResource")
# Parameters is an operation payload, never stored or searched; the CompartmentDefinition lists the others.
EXTRA_TYPES = ("Parameters",)
ANY_TARGET = "*"
_BACKBONE_TYPES = frozenset({"BackboneElement", "Element"})

_IDENTIFIER = re.compile(r"[a-z][A-Za-z0-9]*")
_AS_FUNCTION = re.compile(r"as\(([A-Za-z]+)\)")
_RESOLVE_IS = re.compile(r"where\(resolve\(\) is ([A-Z][A-Za-z]+)\)")
_EQUALS = re.compile(r"where\(([a-z][A-Za-z0-9]*)\s*=\s*'([A-Za-z0-9_.:/-]+)'\)")
_PAREN_CAST = re.compile(r"\((?P<inner>[^()]+?) as (?P<type>[A-Za-z]+)\)(?P<rest>(?:\.[a-z][A-Za-z0-9]*)*)")
_BARE_CAST = re.compile(r"(?P<inner>[^()]+?) as (?P<type>[A-Za-z]+)")


class ConversionError(ValueError):
    """An expression part uses a form these tables cannot express as simple paths."""


@dataclass(frozen=True, slots=True)
class Conversion:
    """The simple paths of one parameter on one resource type, or ``complex`` when they cannot be given."""

    paths: tuple[str, ...]
    restriction: tuple[str, ...] = ()
    complex: bool = False


COMPLEX = Conversion(paths=(), complex=True)


@dataclass(slots=True)
class _Step:
    name: str
    cast: str = ""
    filter: str = ""


@dataclass(frozen=True, slots=True)
class _Element:
    types: tuple[str, ...]
    choice: bool
    content_reference: str


class ElementIndex:
    """The elements of the R4 resource StructureDefinitions, by path (``Observation.effective``)."""

    def __init__(self, profiles: dict[str, Any]) -> None:
        self._elements: dict[str, _Element] = {}
        for definition in _core_resources(profiles, "StructureDefinition"):
            if definition.get("kind") == "resource":
                for element in definition.get("snapshot", {}).get("element", []):
                    self._add(element)

    def _add(self, element: dict[str, Any]) -> None:
        path = str(element["path"])
        types = tuple(str(item["code"]) for item in element.get("type", []))
        reference = str(element.get("contentReference", "")).lstrip("#")
        self._elements[path.removesuffix("[x]")] = _Element(types, path.endswith("[x]"), reference)

    def get(self, path: str) -> _Element | None:
        """The element at ``path`` (choice elements without their ``[x]``), or None."""
        return self._elements.get(path)


def split_union(expression: str) -> list[str]:
    """Split a FHIRPath expression on its top-level ``|`` operators."""
    return [part.strip() for part in _split_outside_parentheses(expression, "|")]


def _split_outside_parentheses(text: str, separator: str) -> list[str]:
    pieces: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        depth += (char == "(") - (char == ")")
        if char == separator and depth == 0:
            pieces.append("".join(current))
            current = []
        else:
            current.append(char)
    pieces.append("".join(current))
    return pieces


def _belongs_to(part: str, base: str) -> bool:
    match = re.match(r"\(*([A-Za-z][A-Za-z0-9]*)", part)
    head = match.group(1) if match else ""
    return head == base or head[:1].islower()  # a lower-case head is a path relative to the resource


def _capitalised(type_name: str) -> str:
    return type_name[:1].upper() + type_name[1:]


def _apply(text: str, steps: list[_Step], restriction: list[str]) -> None:
    if restriction:
        raise ConversionError("nothing is understood after a resolve() filter")
    if _IDENTIFIER.fullmatch(text):
        steps.append(_Step(text))
    elif (match := _AS_FUNCTION.fullmatch(text)) and steps and not steps[-1].cast:
        steps[-1].cast = match.group(1)
    elif (match := _RESOLVE_IS.fullmatch(text)) and steps:
        restriction.append(match.group(1))
    elif (match := _EQUALS.fullmatch(text)) and steps and not steps[-1].filter:
        steps[-1].filter = f"[{match.group(1)}={match.group(2)}]"
    else:
        raise ConversionError(f"unsupported FHIRPath step {text!r}")


def _parse_part(part: str, base: str) -> tuple[list[_Step], tuple[str, ...]]:
    cast = rest = ""
    if match := _PAREN_CAST.fullmatch(part):
        part, cast, rest = match.group("inner"), match.group("type"), match.group("rest")
    elif match := _BARE_CAST.fullmatch(part):
        part, cast = match.group("inner"), match.group("type")
    texts = _split_outside_parentheses(part.strip(), ".")
    if texts[0] == base:
        texts = texts[1:]
    steps: list[_Step] = []
    restriction: list[str] = []
    for text in texts:
        _apply(text, steps, restriction)
    if cast:
        if restriction or not steps or steps[-1].cast:
            raise ConversionError("unsupported cast")
        steps[-1].cast = cast
    steps.extend(_Step(name) for name in rest.split(".") if name)
    if not steps:
        raise ConversionError("the expression names no element")
    return steps, tuple(restriction)


def _names(step: _Step, element: _Element | None) -> list[str]:
    """The JSON names a step stands for: a choice element is named after its type (``valueQuantity``)."""
    if element is not None and element.choice:
        if step.cast:
            if step.cast not in element.types and step.cast[:1].lower() + step.cast[1:] not in element.types:
                raise ConversionError(f"{step.name} cannot be a {step.cast}")
            return [step.name + _capitalised(step.cast)]
        return [step.name + _capitalised(type_name) for type_name in element.types]
    if step.cast and element is not None and (step.cast,) != element.types:
        raise ConversionError(f"{step.name} is not a choice element")
    return [step.name + _capitalised(step.cast) if element is None and step.cast else step.name]


def _resolve(steps: list[_Step], base: str, index: ElementIndex) -> list[str]:
    """Concrete JSON paths for ``steps``; inside the resource, checked against its StructureDefinition."""
    scope: str | None = base  # None once the path has entered a data type (HumanName, Reference, ...)
    alternatives: list[list[str]] = []
    for position, step in enumerate(steps):
        element = index.get(f"{scope}.{step.name}") if scope is not None else None
        if scope is not None and element is None:
            raise ConversionError(f"{scope}.{step.name} is not an element")
        names = _names(step, element)
        if len(names) > 1 and position < len(steps) - 1:
            raise ConversionError("a choice element without a cast must end the path")
        alternatives.append([name + step.filter for name in names])
        scope = _next_scope(scope, step, element)
    return [".".join(combination) for combination in product(*alternatives)]


def _next_scope(scope: str | None, step: _Step, element: _Element | None) -> str | None:
    if scope is None or element is None:
        return None
    if element.content_reference:
        return element.content_reference
    if set(element.types) <= _BACKBONE_TYPES:
        return f"{scope}.{step.name}"
    return None


def convert_expression(expression: str | None, base: str, index: ElementIndex) -> Conversion:
    """Convert the parts of ``expression`` that apply to resource type ``base`` into simple paths."""
    if not expression:
        return COMPLEX
    parts = [part for part in split_union(expression) if _belongs_to(part, base)]
    try:
        parsed = [_parse_part(part, base) for part in parts]
        paths = [path for steps, _ in parsed for path in _resolve(steps, base, index)]
    except ConversionError:
        return COMPLEX
    restrictions = {restriction for _, restriction in parsed}
    if len(restrictions) != 1:
        return COMPLEX  # no part, or parts narrowed by resolve() differently: not expressible per parameter
    return Conversion(paths=tuple(dict.fromkeys(paths)), restriction=restrictions.pop())


def _targets(declared: list[str], restriction: tuple[str, ...], every_type: frozenset[str]) -> list[str]:
    if restriction:
        narrowed = [target for target in declared if target in restriction]
        return narrowed or list(restriction)
    if declared and every_type <= set(declared):
        return [ANY_TARGET]
    return list(declared)


def _core_resources(bundle: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    resources = [entry.get("resource", {}) for entry in bundle.get("entry", [])]
    return [
        resource
        for resource in resources
        if resource.get("resourceType") == resource_type
        and str(resource.get("url", "")).startswith(CORE_PREFIX)
        and resource.get("version", FHIR_VERSION) == FHIR_VERSION
    ]


def _listed_types(definition: dict[str, Any]) -> frozenset[str]:
    return frozenset(resource["code"] for resource in definition.get("resource", []))


def build_search_params(
    bundle: dict[str, Any], definition: dict[str, Any], index: ElementIndex
) -> dict[str, dict[str, Any]]:
    """Build the type -> {param -> definition} table from the R4 SearchParameter bundle.

    The CompartmentDefinition supplies the list of resource types (it names every stored R4 type), so that
    types without parameters of their own still get an (empty) entry.
    """
    every_type = _listed_types(definition)
    parameters = _core_resources(bundle, "SearchParameter")
    bases = {base for parameter in parameters for base in parameter["base"]}
    names = sorted((every_type | bases | set(EXTRA_TYPES)) - set(COMMON_BASES))
    table: dict[str, dict[str, Any]] = {name: {} for name in (*COMMON_BASES, *names)}
    for parameter in parameters:
        for base in parameter["base"]:
            if parameter["code"] in table[base]:
                raise ValueError(f"duplicate search parameter {base}.{parameter['code']}")
            table[base][parameter["code"]] = _entry(parameter, base, index, every_type)
    return {name: dict(sorted(params.items())) for name, params in table.items()}


def _entry(
    parameter: dict[str, Any], base: str, index: ElementIndex, every_type: frozenset[str]
) -> dict[str, Any]:
    conversion = convert_expression(parameter.get("expression"), base, index)
    if "phonetic" in str(parameter.get("description", "")).lower():
        conversion = COMPLEX  # matched "using some kind of phonetic matching algorithm", not by its paths
    entry: dict[str, Any] = {"type": parameter["type"], "paths": list(conversion.paths)}
    if parameter["type"] == "reference":
        entry["targets"] = _targets(parameter.get("target", []), conversion.restriction, every_type)
    if conversion.complex:
        entry["complex"] = True
    return entry


def _compartment_param(table: dict[str, dict[str, Any]], resource_type: str, name: str) -> dict[str, Any]:
    definition = table.get(resource_type, {}).get(name) or table["Resource"].get(name)
    if definition is None:
        raise ValueError(f"compartment parameter {resource_type}.{name} is not a search parameter")
    entry: dict[str, Any] = {
        "param": name,
        "paths": definition["paths"],
        "targets": definition.get("targets", []),
    }
    if definition.get("complex"):
        entry["complex"] = True
    return entry


def build_compartment(
    definition: dict[str, Any], table: dict[str, dict[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    """Build the type -> [{param, paths, targets}] table from the Patient CompartmentDefinition."""
    if definition.get("resourceType") != "CompartmentDefinition" or definition.get("code") != "Patient":
        raise ValueError("not the Patient CompartmentDefinition")
    if definition.get("version", FHIR_VERSION) != FHIR_VERSION:
        raise ValueError("not the R4 (4.0.1) CompartmentDefinition")
    compartment: dict[str, list[dict[str, Any]]] = {}
    for resource in definition.get("resource", []):
        code = resource["code"]
        compartment[code] = [_compartment_param(table, code, name) for name in resource.get("param", [])]
    return dict(sorted(compartment.items()))


def _read(path: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    return data


def _write(path: Path, data: dict[str, Any]) -> None:
    """Compact JSON, one resource type a line so that changes read well in a diff."""
    lines = [f"{json.dumps(key)}:{json.dumps(value, separators=(',', ':'))}" for key, value in data.items()]
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")


def main(argv: list[str]) -> int:
    """Command-line entry point (see the module docstring)."""
    if len(argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    bundle, definition, profiles = _read(argv[0]), _read(argv[1]), _read(argv[2])
    out_dir = Path(argv[3]) if len(argv) == 4 else Path(__file__).resolve().parent
    table = build_search_params(bundle, definition, ElementIndex(profiles))
    _write(out_dir / "r4-search-params.json", table)
    _write(out_dir / "r4-patient-compartment.json", build_compartment(definition, table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""Distil the FHIR R4B element types from the ``fhir.resources.R4B`` pydantic models into ``r4b-types.json``.

Run by hand after upgrading ``fhir.resources`` (never imported at run time)::

    python masking/data/build_types.py [OUT_FILE]

Every concrete and abstract resource (``Resource``, ``DomainResource``), every complex datatype
(``HumanName``, ``Quantity``, ``Age``, ``Extension``, ``Element``, ``BackboneElement``, ...) and every
backbone element class reachable from them (``PatientContact``, ``BundleEntry``, ``TimingRepeat``, ...) is
read from its model's ``model_fields``: the alias is the JSON key, the annotation gives the type and whether
it is a list, ``json_schema_extra`` says whether it is an element at all (``element_property``), which
choice element it belongs to (``one_of_many``) and, with the field's own required flag, whether its minimum
cardinality is 1 (``element_required`` for primitives, ``default=...`` for complex elements,
``one_of_many_required`` for a choice group: every JSON key of a required choice group is marked required).

Output (OUT_FILE, default ``r4b-types.json`` next to this script), one JSON object::

    {"fhirVersion": "4.3.0", "primitives": [...], "types": {TYPE: {"k": KIND, "b": BASE?, "e": {KEY: CODE}}}}

``KIND`` is ``r`` (concrete resource), ``a`` (abstract resource: ``Resource``, ``DomainResource``), ``d``
(datatype, including ``Element`` and ``BackboneElement``) or ``n`` (nested backbone class, whose FHIRPath
type is its ``BASE``: ``BackboneElement`` inside resources, ``Element`` inside datatypes). ``BASE`` is the
type it inherits elements from; ``e`` lists only the elements not inherited unchanged. ``CODE`` is the
element's type (a primitive such as ``date``, a type of this table, ``Resource`` for any resource) followed
by flags -- ``*`` list, ``!`` required, ``+`` the JSON may carry a primitive-extension sibling ``_KEY`` (of
type ``Element``, a list when the element is) -- and, for a choice element, ``@`` and the choice's name
(``"valueQuantity": "Quantity@value"``, ``"birthDate": "date+"``, ``"name": "HumanName*"``).

The ``__ext`` python fields (``birthDate__ext``, alias ``_birthDate``) become the ``+`` flag;
``fhir_comments`` and ``resourceType`` are not elements. ``fhir.resources`` gives ``Extension`` no ``__ext``
fields at all, although FHIR JSON allows ``_url``, ``_valueString`` and the like there, so those are added
here; and it gives ``Narrative.div`` a ``div__ext`` field, although an ``xhtml`` value never has a ``_div``.
The open-type choices (``Extension.value[x]``, ``Parameters.parameter.value[x]``,
``ElementDefinition.fixed[x]``, ...) disagree in the models (R4B's ``CodeableReference`` and ``RatioRange`` on
some, R4's ``Meta`` on others), so each is given the union: 52 types.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import types
import typing
import uuid
from pathlib import Path
from typing import Any

import orjson

__all__ = ["FHIR_VERSION", "build_table", "main", "serialise"]

FHIR_VERSION = "4.3.0"
"""The version the table describes; the builder refuses models of another version."""
PACKAGE = "fhir.resources.R4B"
OUTPUT = Path(__file__).resolve().with_name("r4b-types.json")

# Model classes that are implementation plumbing, not FHIR types.
_NOT_FHIR = frozenset({"FHIRPrimitiveExtension", "FHIRResourceModel"})
_ABSTRACT_RESOURCES = frozenset({"Resource", "DomainResource"})
# Python names of the primitive-extension siblings and of the comment field.
_EXT_SUFFIX = "__ext"
_COMMENTS = "fhir_comments"
# The type whose primitives may carry ``_key`` in FHIR JSON although its model has no ``__ext`` fields.
_EXTENSION_WITH_SIBLINGS = "Extension"
# The choice elements of "open type" (any datatype), and how many types make a choice look like one.
_OPEN_TYPE_CHOICES = frozenset(
    {
        ("ElementDefinition", "defaultValue"),
        ("ElementDefinition", "fixed"),
        ("ElementDefinition", "pattern"),
        ("ElementDefinitionExample", "value"),
        ("Extension", "value"),
        ("ParametersParameter", "value"),
        ("StructureMapGroupRuleSource", "defaultValue"),
        ("TaskInput", "value"),
        ("TaskOutput", "value"),
    }
)
_OPEN_TYPE_SIZE = 40
# Primitive types FHIR JSON never gives a ``_key`` sibling, although the models have an ``__ext`` field.
_NO_SIBLING_TYPES = frozenset({"xhtml"})


_Elements = dict[str, tuple[str, bool, bool, str | None]]


class BuildError(RuntimeError):
    """The models contain something the table format cannot express; the table is not written."""


def _model_classes() -> tuple[dict[str, type[Any]], dict[str, str]]:
    """Every FHIR model class of the package by class name, and the module each is defined in."""
    from fhir_core.fhirabstractmodel import FHIRAbstractModel

    package = importlib.import_module(PACKAGE)
    classes: dict[str, type[Any]] = {}
    modules: dict[str, str] = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{PACKAGE}.{info.name}")
        for name, value in vars(module).items():
            if not (isinstance(value, type) and issubclass(value, FHIRAbstractModel)):
                continue
            if value.__module__ != module.__name__ or name in _NOT_FHIR:
                continue
            if name in classes:
                raise BuildError(f"two model classes named {name}")
            classes[name] = value
            modules[name] = info.name
    return classes, modules


def _strip_optional(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return _strip_optional(args[0])
    return annotation


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """The item annotation and whether the field is a list (``Optional[List[Optional[X]]]`` -> ``X``)."""
    annotation = _strip_optional(annotation)
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        return _strip_optional(item), True
    return annotation, False


def _type_name(annotation: Any, where: str) -> str:
    """The FHIR type name of one (non-list, non-optional) annotation."""
    from fhir_core.types import FhirBase

    if annotation is bool:
        return "boolean"
    if typing.get_origin(annotation) is typing.Annotated:
        base, *metadata = typing.get_args(annotation)
        names = [getattr(item, "__visit_name__", None) for item in metadata]
        named = [name for name in names if isinstance(name, str)]
        if len(named) == 1:
            return named[0]
        if base is uuid.UUID and not named:
            return "uuid"
        raise BuildError(f"{where}: cannot name the primitive type of {annotation!r}")
    if isinstance(annotation, type) and issubclass(annotation, FhirBase):
        name = annotation.get_model_klass().__name__
        return "Element" if name == "FHIRPrimitiveExtension" else name
    raise BuildError(f"{where}: unsupported annotation {annotation!r}")


def _elements(cls: type[Any]) -> tuple[_Elements, set[str]]:
    """``{json key: (type, is list, required, choice)}`` and the keys that carry a ``_key`` sibling."""
    elements: _Elements = {}
    siblings: set[str] = set()
    for python_name, field in cls.model_fields.items():
        where = f"{cls.__name__}.{python_name}"
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if python_name == _COMMENTS:
            continue
        if python_name.endswith(_EXT_SUFFIX):
            alias = field.alias or ""
            if not alias.startswith("_"):
                raise BuildError(f"{where}: extension field with alias {alias!r}")
            siblings.add(alias[1:])
            continue
        if extra.get("element_property") is not True or not field.alias:
            raise BuildError(f"{where}: not marked as an element")
        item, is_list = _unwrap(field.annotation)
        type_name = _type_name(item, where)
        choice = extra.get("one_of_many")
        if choice is not None and (not isinstance(choice, str) or is_list):
            raise BuildError(f"{where}: unexpected choice {choice!r}")
        required = bool(
            field.is_required()
            or extra.get("element_required")
            or (choice and extra.get("one_of_many_required"))
        )
        if choice is not None and field.alias != choice + type_name[0].upper() + type_name[1:]:
            raise BuildError(f"{where}: choice key {field.alias} does not spell {choice}[x] as {type_name}")
        elements[field.alias] = (type_name, is_list, required, choice)
    for key in siblings:
        if key not in elements:
            raise BuildError(f"{cls.__name__}: extension field _{key} has no element {key}")
    return elements, siblings


def _is_primitive(type_name: str) -> bool:
    return type_name[0].islower()


def _correct_siblings(name: str, elements: _Elements, siblings: set[str]) -> None:
    """Give ``Extension``'s primitives their ``_key`` and take ``_div`` away (see the module docstring)."""
    if name == _EXTENSION_WITH_SIBLINGS:
        siblings.update(key for key, (type_name, *_) in elements.items() if _is_primitive(type_name))
        siblings.discard("id")
    siblings.difference_update(
        key for key, (type_name, *_) in elements.items() if type_name in _NO_SIBLING_TYPES
    )


def _complete_open_types(collected: dict[str, tuple[_Elements, set[str]]]) -> None:
    """Give every open-type choice (``Extension.value[x]``, ...) every type any of them has.

    The models disagree: ``Extension`` and ``ElementDefinition`` have R4B's ``CodeableReference`` and
    ``RatioRange`` but not ``Meta``, ``Parameters`` and ``Task`` the reverse (R4's list). A type missing from
    the table would make a valid element unknown, so each open-type choice gets the union.
    """
    groups: dict[tuple[str, str], dict[str, tuple[str, bool, bool, str | None]]] = {}
    for name, (elements, _) in collected.items():
        for key, element in elements.items():
            if element[3] is not None:
                groups.setdefault((name, element[3]), {})[key] = element
    large = {group for group, members in groups.items() if len(members) >= _OPEN_TYPE_SIZE}
    if large != _OPEN_TYPE_CHOICES:
        raise BuildError(f"open-type choices are now {sorted(large)}: update _OPEN_TYPE_CHOICES")
    every = {element[0] for group in large for element in groups[group].values()}
    for name, choice in sorted(large):
        elements, siblings = collected[name]
        (_, is_list, required, _) = next(iter(groups[name, choice].values()))
        for type_name in sorted(every):
            key = choice + type_name[0].upper() + type_name[1:]
            if key not in elements:
                elements[key] = (type_name, is_list, required, choice)
                if _is_primitive(type_name):
                    siblings.add(key)


def _encode(element: tuple[str, bool, bool, str | None], sibling: bool) -> str:
    type_name, is_list, required, choice = element
    flags = ("*" if is_list else "") + ("!" if required else "") + ("+" if sibling else "")
    return type_name + flags + (f"@{choice}" if choice else "")


def build_table() -> dict[str, Any]:
    """The whole table, as written to ``r4b-types.json`` (pure: imports the models, writes nothing)."""
    from fhir.resources.R4B.backboneelement import BackboneElement

    version = getattr(importlib.import_module(PACKAGE), "__fhir_version__", None)
    if version != FHIR_VERSION:
        raise BuildError(f"{PACKAGE} models FHIR {version}, not {FHIR_VERSION}")
    classes, modules = _model_classes()
    # A module's main class has the module's name; the others are its backbone elements.
    top_level = [name for name in classes if name.lower() == modules[name]]
    primitives: set[str] = set()
    collected: dict[str, tuple[_Elements, set[str]]] = {}
    pending = sorted(top_level)
    seen = set(pending)
    while pending:
        name = pending.pop()
        elements, siblings = collected[name] = _elements(classes[name])
        _correct_siblings(name, elements, siblings)
        for type_name, *_ in elements.values():
            if type_name in classes:
                if type_name not in seen:
                    seen.add(type_name)
                    pending.append(type_name)
            elif type_name not in {"Element", "Resource"}:
                primitives.add(type_name)
    unreachable = sorted(set(classes) - seen)
    if unreachable:
        print(f"not reachable, left out: {', '.join(unreachable)}", file=sys.stderr)
    _complete_open_types(collected)
    encoded = {
        name: {key: _encode(value, key in siblings) for key, value in elements.items()}
        for name, (elements, siblings) in collected.items()
    }

    table: dict[str, dict[str, Any]] = {}
    for name in sorted(encoded):
        cls = classes[name]
        parent = cls.__mro__[1].__name__
        base = parent if parent in encoded else None
        if name in _ABSTRACT_RESOURCES:
            kind = "a"
        elif cls.has_resource_base():
            kind = "r"
        elif name in top_level:
            kind = "d"
        else:
            kind = "n"
            base = "BackboneElement" if issubclass(cls, BackboneElement) else "Element"
            if parent != base:
                raise BuildError(f"{name}: nested class derives from {parent}, not {base}")
        own = encoded[name]
        if base is not None:
            inherited = encoded[base]
            missing = set(inherited) - set(own)
            if missing:
                raise BuildError(f"{name}: lacks the {base} elements {sorted(missing)}")
            own = {key: code for key, code in own.items() if inherited.get(key) != code}
        entry: dict[str, Any] = {"k": kind, "e": own}
        if base is not None:
            entry["b"] = base
        table[name] = entry
    return {"fhirVersion": FHIR_VERSION, "primitives": sorted(primitives), "types": table}


def serialise(table: dict[str, Any]) -> bytes:
    """Compact JSON with sorted keys, one type a line so that changes read well in a diff."""
    option = orjson.OPT_SORT_KEYS
    types_: dict[str, Any] = table["types"]
    head = orjson.dumps({key: value for key, value in table.items() if key != "types"}, option=option)
    body = b",\n".join(
        orjson.dumps(name) + b":" + orjson.dumps(types_[name], option=option) for name in sorted(types_)
    )
    return head[:-1] + b',"types":{\n' + body + b"\n}}\n"


def main(argv: list[str]) -> int:
    """Command-line entry point (see the module docstring)."""
    if len(argv) > 1:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0]) if argv else OUTPUT
    data = serialise(build_table())
    out.write_bytes(data)
    print(f"wrote {out} ({len(data)} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""Rule paths parsed into selectors: fast anchored paths where possible, compiled FHIRPath otherwise.

A fast selector is an *anchor* followed by plain element names:

- ``Patient.address.city``, ``Resource.id`` -- anchored at the root of resources of that type
  (``Resource``/``DomainResource``: every resource);
- ``nodesByType('HumanName')``, ``nodesByType('date').extension`` -- anchored at every node of that FHIR type;
- ``nodesByName('postalCode')`` -- anchored at every element of that name.

Any step may be narrowed by one simple ``where()``: ``Patient.extension.where(url = 'http://...')``,
``where(system != 'x')``, ``where(url.contains('x'))``, ``where(startsWith('x').not())`` (``=``, ``!=``,
``contains``, ``startsWith``, ``endsWith``, optionally ``.not()``, on the item or one child element); such
steps are checked per item while walking, without FHIRPath.

Type and name anchors match at any depth, inside extensions too, but never inside a contained or Bundle entry
resource (those get their own pass with their own type's rules). Anything else (``where()``, ``as``,
indexers, functions) is compiled once with fhirpathpy and evaluated per resource; such a path must start with
a resource type (or ``Resource``) so it is only run where it can match.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from fhirpathpy import compile as compile_fhirpath
from fhirpathpy.models import models as fhirpath_models

from masking import fhir_types
from masking.fhirpath import check_expression

__all__ = [
    "AnyResource",
    "FastSelector",
    "FhirPathSelector",
    "Predicate",
    "Selector",
    "SelectorError",
    "Step",
    "Where",
    "parse_selector",
]

AnyResource = frozenset({"Resource", "DomainResource"})
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_LITERAL = r"'([^'\\]*)'"
_PREDICATE = (
    rf"(?:({_IDENT})\s*(=|!=)\s*{_LITERAL}"
    rf"|(?:({_IDENT})\.)?(contains|startsWith|endsWith)\(\s*{_LITERAL}\s*\)(\.not\(\))?)"
)
_STEP = rf"\.{_IDENT}(?:\.where\(\s*{_PREDICATE}\s*\))?"
_STEP_PARTS = re.compile(rf"\.({_IDENT})(?:\.where\(\s*{_PREDICATE}\s*\))?")
_ANCHOR_WHERE = rf"(?:\.where\(\s*{_PREDICATE}\s*\))?"
_ANCHOR_FN = re.compile(
    rf"^nodesBy(?P<kind>Type|Name)\(\s*'(?P<target>{_IDENT})'\s*\)(?P<test>{_ANCHOR_WHERE})(?P<rest>(?:{_STEP})*)$"
)
_PLAIN = re.compile(rf"^({_IDENT})((?:{_STEP})*)$")
_LEADING_TYPE = re.compile(r"^([A-Z][A-Za-z]*)\b")


class SelectorError(ValueError):
    """The path cannot be used as a rule path."""


@dataclass(frozen=True, slots=True)
class Predicate:
    """A simple ``where()`` test on one item: ``[field] op 'literal'`` (``field`` None: the item itself)."""

    field: str | None
    op: Literal["=", "!=", "contains", "startsWith", "endsWith"]
    literal: str
    negate: bool = False

    def holds(self, item: Any) -> bool:
        """Whether the item passes; as in FHIRPath, a missing (or non-text) value never does."""
        value = item
        if self.field is not None:
            value = item.get(self.field) if isinstance(item, dict) else None
        if not isinstance(value, str):
            return False
        if self.op == "=":
            result = value == self.literal
        elif self.op == "!=":
            result = value != self.literal
        elif self.op == "contains":
            result = self.literal in value
        elif self.op == "startsWith":
            result = value.startswith(self.literal)
        else:
            result = value.endswith(self.literal)
        return result != self.negate


@dataclass(frozen=True, slots=True)
class Where:
    """A step narrowed by a predicate: ``name.where(...)``."""

    name: str
    predicate: Predicate


Step = str | Where


@dataclass(frozen=True, slots=True)
class FastSelector:
    """An anchor plus element names (FHIRPath names: ``value``, not ``valueQuantity``), some narrowed."""

    anchor: Literal["root", "type", "name"]
    target: str
    steps: tuple[Step, ...]
    anchor_test: Predicate | None = None
    """``nodesByType('T').where(...)``: only anchored nodes passing the test."""

    def roots(self, resource_type: str) -> bool:
        """Whether a root anchor applies to resources of ``resource_type``."""
        return self.anchor == "root" and (self.target in AnyResource or self.target == resource_type)


@dataclass(frozen=True, slots=True)
class FhirPathSelector:
    """A general FHIRPath expression, compiled once, evaluated on resources of ``resource_type``."""

    expression: str
    resource_type: str
    evaluate: Callable[..., list[Any]]

    def applies_to(self, resource_type: str) -> bool:
        """Whether the expression is run on resources of ``resource_type``."""
        return self.resource_type in AnyResource or self.resource_type == resource_type


Selector = FastSelector | FhirPathSelector


def parse_selector(path: str) -> Selector:
    """Parse one rule path; ``SelectorError`` explains what is wrong with it."""
    text = path.strip()
    if not text:
        raise SelectorError("empty path")
    anchored = _ANCHOR_FN.match(text)
    if anchored:
        test = anchored.group("test")
        selector = _anchored(anchored.group("kind"), anchored.group("target"), _steps(anchored.group("rest")))
        if not test:
            return selector
        narrowed = _STEP_PARTS.match(".anchor" + test)
        step = _step(narrowed) if narrowed else None
        if not isinstance(step, Where):
            raise SelectorError(f"cannot read the test {test!r}")
        return FastSelector(selector.anchor, selector.target, selector.steps, step.predicate)
    plain = _PLAIN.match(text)
    if plain and _is_resource_root(plain.group(1)):
        return _rooted(plain.group(1), _steps(plain.group(2)))
    return _fhirpath(text)


def _steps(dotted: str) -> tuple[Step, ...]:
    return tuple(_step(match) for match in _STEP_PARTS.finditer(dotted))


def _step(match: re.Match[str]) -> Step:
    name, eq_field, eq_op, eq_literal, fn_field, fn, fn_literal, negated = match.groups()
    if eq_op is not None:
        return Where(name, Predicate(eq_field, eq_op, eq_literal))  # type: ignore[arg-type]
    if fn is not None:
        return Where(name, Predicate(fn_field, fn, fn_literal, negate=negated is not None))  # type: ignore[arg-type]
    return name


def step_name(step: Step) -> str:
    """The element name of a step."""
    return step if isinstance(step, str) else step.name


def _is_resource_root(name: str) -> bool:
    return name in AnyResource or fhir_types.is_resource_type(name)


def _anchored(kind: str, target: str, steps: tuple[Step, ...]) -> FastSelector:
    if kind == "Type":
        if target not in fhir_types.fhir_types():
            raise SelectorError(f"nodesByType: unknown FHIR type {target!r}")
        return FastSelector("type", target, steps)
    return FastSelector("name", target, steps)


def _rooted(root: str, steps: tuple[Step, ...]) -> FastSelector:
    if root not in AnyResource:
        _check_steps(root, steps)
    return FastSelector("root", root, steps)


def _check_steps(type_name: str, steps: tuple[Step, ...]) -> None:
    current = {type_name}
    for depth, step in enumerate(steps):
        name = step_name(step)
        found = {info.type_name for t in current for info in fhir_types.fhirpath_children(t, name)}
        if not found:
            where = ".".join((type_name, *(step_name(s) for s in steps[:depth])))
            raise SelectorError(f"{where} has no element {name!r}")
        current = found


def _fhirpath(text: str) -> FhirPathSelector:
    leading = _LEADING_TYPE.match(text)
    if not leading or not _is_resource_root(leading.group(1)):
        raise SelectorError(
            "a FHIRPath rule must start with a resource type or Resource "
            "(nodesByType/nodesByName may only be followed by plain element names)"
        )
    root = leading.group(1)
    # fhirpathpy matches a leading type name literally; for "every resource" evaluate the rest from the root
    runnable = text[len(root) + 1 :] if root in AnyResource and text.startswith(root + ".") else text
    try:
        check_expression(text)
        compiled = compile_fhirpath(runnable, model=fhirpath_models["r4"], options={"returnRawData": True})
        compiled({"resourceType": "Patient" if root in AnyResource else root}, None)  # arity errors show here
    except Exception as exc:  # fhirpathpy raises bare exceptions
        raise SelectorError(f"invalid FHIRPath: {exc}") from None
    return FhirPathSelector(text, root, compiled)

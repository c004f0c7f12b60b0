"""Compiled profiles as per-type plans: for each JSON key of each element, what masking does there.

A ``PlanNode`` stands for "an element of FHIR type T, reached with these path rules still pending, under this
governing rule". Its ``fields`` map each JSON key to a ``FieldPlan`` saying whether to skip the key, mask a
primitive with a given rule, descend into a complex element (with its own ``PlanNode``), replace a complex
element (substitute), or mask a contained/entry resource on its own. Field plans are built on first use and
memoised, so the walk at request time is one dict lookup per key; subtrees no rule can reach are skipped.

First match wins: the rule governing a node is the lowest-numbered rule matching the node or any ancestor
(within the same resource). Rules numbered at or above the governing one can no longer matter below it, so
they are dropped from the node's state (``limit``); a ``keep`` subtree with nothing earlier pending is left
untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from masking import fhir_types
from masking.fhir_types import ElementInfo
from masking.methods.base import ElementMethod, MaskingMethod
from masking.selectors import FastSelector, Predicate, Step, step_name

__all__ = ["CompiledRule", "FieldKind", "FieldPlan", "PlanNode", "Planner"]

NO_LIMIT: Final = 1 << 30

Pending = frozenset[tuple[int, tuple[Step, ...]]]


class FieldKind:
    """What the walk does with a JSON key (plain ints: compared on the hot path)."""

    SKIP: Final = 0
    LEAF: Final = 1
    OBJECT: Final = 2
    RESOURCE: Final = 3
    ELEMENT: Final = 4
    KEPT: Final = 5
    UNKNOWN: Final = 6
    CONDITIONAL: Final = 7


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule ready to run: its position, path text and built method."""

    index: int
    path: str
    method_name: str
    method: MaskingMethod

    @property
    def keeps(self) -> bool:
        """Whether the rule protects its nodes unchanged."""
        return self.method_name == "keep"

    @property
    def element_method(self) -> ElementMethod | None:
        """The method when it can replace whole complex elements."""
        return self.method if isinstance(self.method, ElementMethod) else None


@dataclass(frozen=True, slots=True)
class FieldPlan:
    """The plan for one JSON key inside a ``PlanNode``."""

    kind: int
    info: ElementInfo | None = None
    rule: CompiledRule | None = None
    child: PlanNode | None = None
    protect: PlanNode | None = None
    conditions: tuple[Condition, ...] = ()
    base: FieldPlan | None = None
    """CONDITIONAL plans: the per-item ``where()`` tests, and the plan for items that pass none."""


Condition = tuple[Predicate, int, tuple[Step, ...]]
"""A ``where()`` step reached at a key: its test, the rule's index and the steps left after it."""

_SKIP = FieldPlan(FieldKind.SKIP)


class _Fields(dict[str, FieldPlan]):
    __slots__ = ("_node",)

    def __init__(self, node: PlanNode) -> None:
        super().__init__()
        self._node = node

    def __missing__(self, key: str) -> FieldPlan:
        plan = self._node.planner.field_plan(self._node, key)
        self[key] = plan
        return plan


class PlanNode:
    """An element of ``type_name`` in a given matching state; ``fields`` fill in on first use."""

    __slots__ = ("exhaustive", "fhir_type", "fields", "governing", "limit", "pending", "planner", "type_name")

    def __init__(
        self,
        planner: Planner,
        type_name: str,
        pending: Pending,
        governing: CompiledRule | None,
        limit: int,
        exhaustive: bool,
    ) -> None:
        self.planner = planner
        self.exhaustive = exhaustive
        self.type_name = type_name
        self.fhir_type = fhir_types.fhir_type_of(type_name)
        self.pending = pending
        self.governing = governing
        self.limit = limit
        self.fields: dict[str, FieldPlan] = _Fields(self)


def _first(*rules: CompiledRule | None) -> CompiledRule | None:
    present = [rule for rule in rules if rule is not None]
    return min(present, key=lambda rule: rule.index) if present else None


class Planner:
    """Builds and memoises plan nodes for one profile's rules."""

    def __init__(
        self,
        rules: Sequence[CompiledRule],
        selectors: Sequence[FastSelector | None],
        walk_all: frozenset[str] = frozenset(),
    ) -> None:
        """``walk_all``: resource types (or ``Resource``) whose FHIRPath rules may match anywhere, so no
        subtree of theirs is skipped."""
        self.rules = tuple(rules)
        self._walk_all = walk_all
        self._roots = [
            (rule, sel) for rule, sel in zip(rules, selectors, strict=True) if sel and sel.anchor == "root"
        ]
        self._anchors = [
            (rule, sel) for rule, sel in zip(rules, selectors, strict=True) if sel and sel.anchor != "root"
        ]
        self._nodes: dict[tuple[str, Pending, int, int, bool], PlanNode] = {}
        self._reach: dict[int, frozenset[str]] = {}
        self._marked: dict[tuple[int, str, int], FieldPlan] = {}
        self._passed: dict[tuple[int, str, tuple[int, ...]], FieldPlan] = {}

    def root(self, resource_type: str) -> PlanNode:
        """The plan for a resource of ``resource_type`` (its root-anchored rules applied)."""
        pending: set[tuple[int, tuple[Step, ...]]] = set()
        governing: CompiledRule | None = None
        for rule, selector in self._roots:
            if selector.roots(resource_type):
                if selector.steps:
                    pending.add((rule.index, selector.steps))
                else:
                    governing = _first(governing, rule)
        limit = governing.index if governing else NO_LIMIT
        exhaustive = resource_type in self._walk_all or "Resource" in self._walk_all
        pending_here = frozenset(s for s in pending if s[0] < limit)
        return self.node(resource_type, pending_here, governing, limit, exhaustive)

    def node(
        self,
        type_name: str,
        pending: Pending,
        governing: CompiledRule | None,
        limit: int,
        exhaustive: bool = False,
    ) -> PlanNode:
        """The memoised plan node for this state."""
        key = (type_name, pending, governing.index if governing else -1, limit, exhaustive)
        found = self._nodes.get(key)
        if found is None:
            found = self._nodes[key] = PlanNode(self, type_name, pending, governing, limit, exhaustive)
        return found

    def warm(self) -> int:
        """Build every plan node reachable from every resource type now (the walk would otherwise build
        them on first use); returns how many nodes there are."""
        stack = [
            self.root(name) for name in fhir_types.complex_type_graph() if fhir_types.is_resource_type(name)
        ]
        seen: set[int] = set()
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            for key in fhir_types.elements(node.type_name):
                plan = node.fields[key]
                for child in (plan.child, plan.protect, plan.base.child if plan.base else None):
                    if child is not None:
                        stack.append(child)
        return len(seen)

    def marked_plan(self, node: PlanNode, key: str, rule: CompiledRule) -> FieldPlan:
        """The plan for ``key`` when a FHIRPath rule also matched it (memoised)."""
        memo_key = (id(node), key, rule.index)
        found = self._marked.get(memo_key)
        if found is None:
            found = self._marked[memo_key] = self.field_plan(node, key, rule)
        return found

    def passed_plan(
        self, node: PlanNode, key: str, conditional: FieldPlan, passed: tuple[int, ...]
    ) -> FieldPlan:
        """The plan for an item of ``key`` that passed the ``where()`` tests numbered ``passed``."""
        memo_key = (id(node), key, passed)
        found = self._passed.get(memo_key)
        if found is None:
            chosen = [conditional.conditions[i] for i in passed]
            here = _first(*(self.rules[index] for _, index, rest in chosen if not rest))
            more = [(index, rest) for _, index, rest in chosen if rest]
            found = self._passed[memo_key] = self.field_plan(node, key, here, more, conditional=False)
        return found

    def field_plan(
        self,
        node: PlanNode,
        key: str,
        extra: CompiledRule | None = None,
        extra_pending: list[tuple[int, tuple[Step, ...]]] | None = None,
        *,
        conditional: bool = True,
    ) -> FieldPlan:
        """Work out what happens at ``key`` inside ``node`` (``extra``: a FHIRPath rule matched it;
        ``extra_pending``: paths continuing below it because an item passed their ``where()``)."""
        if key == "resourceType":
            return _SKIP
        info = fhir_types.element(node.type_name, key)
        if info is None:
            return self._unknown(node)
        if info.type_name == "Resource":
            return FieldPlan(FieldKind.RESOURCE, info)
        base = fhir_types.element(node.type_name, key[1:]) if key.startswith("_") else None
        here, spawned, conditions = self._matches(node, base or info)
        if base is not None:
            here = (
                None  # ``_x`` holds the extensions of ``x``: they go when ``x`` goes, else keep their rules
            )
        if conditions and conditional and base is None:
            plain = self.field_plan(node, key, extra, extra_pending, conditional=False)
            return FieldPlan(FieldKind.CONDITIONAL, info, conditions=tuple(conditions), base=plain)
        spawned += extra_pending or ()
        here = _first(here, extra)
        governing = _first(node.governing, here)
        limit = min(node.limit, governing.index if governing else NO_LIMIT)
        pending = frozenset(s for s in spawned if s[0] < limit)
        if info.is_primitive:
            return self._leaf(info, governing)
        if here is not None and here is governing and here.element_method and not self._inherited(node, here):
            protect = (
                self.node(info.type_name, pending, None, here.index, node.exhaustive)
                if node.exhaustive or self._active(pending, info, here.index)
                else None
            )
            return FieldPlan(FieldKind.ELEMENT, info, here, None, protect)
        if not pending and not self._reaches(info.type_name, limit):
            if governing is not None and governing.keeps:
                return FieldPlan(FieldKind.KEPT, info, governing)
            if governing is None and not node.exhaustive:
                return _SKIP
        child = self.node(info.type_name, pending, governing, limit, node.exhaustive)
        return FieldPlan(FieldKind.OBJECT, info, governing, child)

    def _inherited(self, node: PlanNode, rule: CompiledRule) -> bool:
        return node.governing is not None and node.governing.index <= rule.index

    def _active(self, pending: Pending, info: ElementInfo, limit: int) -> bool:
        return bool(pending) or self._reaches(info.type_name, limit)

    def _leaf(self, info: ElementInfo, governing: CompiledRule | None) -> FieldPlan:
        if governing is None:
            return _SKIP
        if governing.keeps:
            return FieldPlan(FieldKind.KEPT, info, governing)
        return FieldPlan(FieldKind.LEAF, info, governing)

    def _unknown(self, node: PlanNode) -> FieldPlan:
        governing = node.governing
        if governing is None:
            return _SKIP
        return FieldPlan(FieldKind.KEPT if governing.keeps else FieldKind.UNKNOWN, None, governing)

    def _matches(
        self, node: PlanNode, info: ElementInfo
    ) -> tuple[CompiledRule | None, list[tuple[int, tuple[Step, ...]]], list[Condition]]:
        here: CompiledRule | None = None
        spawned: list[tuple[int, tuple[Step, ...]]] = []
        conditions: list[Condition] = []
        name = info.choice_of or info.name
        for index, steps in node.pending:
            step = steps[0]
            if step_name(step) not in (name, info.name):
                continue
            if not isinstance(step, str):
                conditions.append((step.predicate, index, steps[1:]))
            elif len(steps) == 1:
                here = _first(here, self.rules[index])
            else:
                spawned.append((index, steps[1:]))
        for rule, selector in self._anchors:
            if rule.index < node.limit and _anchor_matches(selector, info, name):
                if selector.anchor_test is not None:
                    conditions.append((selector.anchor_test, rule.index, selector.steps))
                elif selector.steps:
                    spawned.append((rule.index, selector.steps))
                else:
                    here = _first(here, rule)
        return here, spawned, conditions

    def _reaches(self, type_name: str, limit: int) -> bool:
        """Whether something below ``type_name`` may need masking: an anchor with a number below ``limit``
        may match there, or a contained/entry resource (masked with its own rules) may sit there."""
        if type_name in _RESOURCE_HOLDERS:
            return True
        reach = self._reach.get(limit)
        if reach is None:
            anchors = [sel for rule, sel in self._anchors if rule.index < limit]
            reach = self._reach[limit] = _reachable_types(anchors)
        return type_name in reach


def _closure(direct: set[str]) -> frozenset[str]:
    """``direct`` plus every complex type whose subtree holds one of them."""
    graph = fhir_types.complex_type_graph()
    reach = set(direct)
    changed = True
    while changed:
        changed = False
        for type_name, children in graph.items():
            if type_name not in reach and not children.isdisjoint(reach):
                reach.add(type_name)
                changed = True
    return frozenset(reach)


_RESOURCE_HOLDERS = _closure(
    {
        type_name
        for type_name in fhir_types.complex_type_graph()
        if any(info.type_name == "Resource" for info in fhir_types.elements(type_name).values())
    }
)


def _anchor_matches(selector: FastSelector, info: ElementInfo, name: str) -> bool:
    if selector.anchor == "type":
        return info.fhir_type == selector.target
    return selector.target in (name, info.name)


def _reachable_types(anchors: Iterable[FastSelector]) -> frozenset[str]:
    """Complex types whose subtree (not crossing into resources) holds an element an anchor matches."""
    anchors = list(anchors)
    if not anchors:
        return frozenset()
    return _closure(
        {
            type_name
            for type_name in fhir_types.complex_type_graph()
            for info in fhir_types.elements(type_name).values()
            if any(_anchor_matches(sel, info, info.choice_of or info.name) for sel in anchors)
        }
    )

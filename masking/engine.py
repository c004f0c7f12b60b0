"""The masking walk: one pass over a resource (in place), guided by the compiled plan.

Every JSON key is looked up once in the current ``PlanNode``; primitives governed by a rule go through that
rule's method, complex elements are descended into (or replaced, for substitute), contained and Bundle entry
resources are masked on their own with their own type's rules. Elements left empty are pruned; in native mode
a required element that had to go is replaced by the ``data-absent-reason`` extension (``masked``). A
resource that changed gets the profile's security labels in ``meta.security`` and, where configured, loses
its narrative.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import date
from typing import Any

import orjson

from masking import fhir_types
from masking.cache import ENTRY_OVERHEAD, CachedMask, MaskCache
from masking.labels import add_security_labels
from masking.locations import Mark
from masking.methods.base import KEEP, REMOVE, Leaf, MaskContext, Relabelled
from masking.plan import CompiledRule, FieldKind, FieldPlan, Planner, PlanNode
from masking.stats import MaskStats

__all__ = ["DATA_ABSENT_REASON_URL", "MaskStats", "MaskingError", "Walker"]

DATA_ABSENT_REASON_URL = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
_MASKED_ABSENT = {"extension": [{"url": DATA_ABSENT_REASON_URL, "valueCode": "masked"}]}
_SKIP, _LEAF, _OBJECT, _RESOURCE, _ELEMENT, _KEPT, _CONDITIONAL = (
    FieldKind.SKIP, FieldKind.LEAF, FieldKind.OBJECT, FieldKind.RESOURCE, FieldKind.ELEMENT, FieldKind.KEPT,
    FieldKind.CONDITIONAL,
)  # fmt: skip


class MaskingError(Exception):
    """A resource could not be masked; it must not be released."""


class _Run:
    """Per-resource walk state."""

    __slots__ = ("cache", "changed", "context", "labels", "marks", "matches", "patients", "stats")

    def __init__(
        self,
        context: MaskContext,
        marks: dict[Mark, CompiledRule] | None,
        patients: Mapping[str, str],
        stats: MaskStats,
        cache: MaskCache | None = None,
    ) -> None:
        self.cache = cache
        self.context = context
        self.marks = marks
        self.patients = patients
        self.stats = stats
        self.labels: set[str] = set()
        self.changed = False
        self.matches = 0

    def note(self, rule: CompiledRule, label: str | None) -> None:
        self.changed = True
        self.stats.by_method[rule.method_name] += 1
        if label:
            self.labels.add(label)


PatientOf = Callable[[Mapping[str, Any], Mapping[str, str]], str | None]
MarksOf = Callable[[dict[str, Any], str], dict[Mark, CompiledRule] | None]


class Walker:
    """Masks resources in place according to one compiled profile's plan."""

    def __init__(
        self,
        planner: Planner,
        *,
        native: bool,
        resource_labels: tuple[str, ...],
        remove_narrative: bool,
        skip_errors: bool,
        patient_of: PatientOf,
        marks_of: MarksOf,
    ) -> None:
        self._planner = planner
        self._native = native
        self._resource_labels = resource_labels
        self._remove_narrative = remove_narrative
        self._skip_errors = skip_errors
        self._patient_of = patient_of
        self._marks_of = marks_of
        self._roots: dict[str, PlanNode] = {}

    def warm(self) -> int:
        """Build every plan now; returns the number of plan nodes."""
        return self._planner.warm()

    def mask(
        self,
        resource: dict[str, Any],
        stats: MaskStats,
        *,
        scope_key: str | None = None,
        today: date | None = None,
        cache: MaskCache | None = None,
    ) -> Any:
        """Mask ``resource`` in place and return it -- or, with a ``cache``, return the masked JSON as an
        ``orjson.Fragment`` -- or None when it must be dropped (``processing_errors: skip``)."""
        day = today or date.today()
        if cache is not None and resource.get("resourceType") != "Bundle":
            return self._cached(resource, {}, stats, scope_key, day, cache)
        kept = self._resource(resource, None, {}, stats, scope_key, day, cache)
        return resource if kept else None

    def bundle_patients(self, entries: list[Any]) -> dict[str, str]:
        """``fullUrl`` -> patient id for the Patient entries of a Bundle's ``entry`` array."""
        return _bundle_patients({"entry": entries}, self._patient_of)

    def bundle_context(
        self, shell: dict[str, Any], patients: Mapping[str, str], scope_key: str | None, today: date
    ) -> MaskContext:
        """The context a top-level Bundle's own elements are masked with (``shell``: the Bundle without its
        entries; Bundles are in no patient compartment, so the entries do not change it)."""
        return self._context(shell, "Bundle", None, patients, scope_key, today)

    def mask_entries(
        self,
        entries: list[Any],
        context: MaskContext,
        patients: Mapping[str, str],
        stats: MaskStats,
        cache: MaskCache | None,
    ) -> tuple[Any, bool, frozenset[str]]:
        """Mask a top-level Bundle's ``entry`` array as the walk of the whole Bundle does (each entry's
        resource on its own); returns the masked array (``REMOVE`` when it went), whether the Bundle's own
        elements in it changed, and the labels that implies for the Bundle. Raises on any failure."""
        part = {"entry": entries}
        run = _Run(context, None, patients, stats, cache)
        self._object(part, self._root("Bundle"), run)
        return part.get("entry", REMOVE), run.changed, frozenset(run.labels)

    def mask_shell(
        self,
        shell: dict[str, Any],
        context: MaskContext,
        patients: Mapping[str, str],
        stats: MaskStats,
        cache: MaskCache | None,
        *,
        changed: bool,
        labels: frozenset[str],
    ) -> None:
        """Mask a top-level Bundle's other elements in place (``entry``, if there, holds an empty list),
        given what masking its entries did; labels the Bundle when anything changed. Raises on any failure."""
        stats.resources += 1
        run = _Run(context, None, patients, stats, cache)
        run.changed = changed
        run.labels |= labels
        self._object(shell, self._root("Bundle"), run)
        if run.changed:
            self._finish(shell, run)

    def _cached(
        self,
        resource: dict[str, Any],
        patients: Mapping[str, str],
        stats: MaskStats,
        scope_key: str | None,
        today: date,
        cache: MaskCache,
    ) -> Any:
        """A top-level or entry resource through the cache: a Fragment of its masked JSON, or None."""
        # without Bundle-provided patients the patient follows from the content itself (it is in the digest)
        patient = self._patient_of(resource, patients) if patients else None
        key = cache.key(orjson.dumps(resource), patient, today, scope_key)
        hit = cache.get(key)
        if hit is None:
            own = MaskStats()
            if not self._resource(resource, None, patients, own, scope_key, today, cache):
                stats.merge(own)
                return None
            text = orjson.dumps(resource)
            hit = CachedMask(orjson.Fragment(text), own, len(text) + ENTRY_OVERHEAD)
            cache.put(key, hit)
        stats.merge(hit.stats)
        return hit.fragment

    def _resource(
        self,
        resource: dict[str, Any],
        container: _Run | None,
        patients: Mapping[str, str],
        stats: MaskStats,
        scope_key: str | None,
        today: date,
        cache: MaskCache | None = None,
    ) -> bool:
        """Mask one resource; False when it is dropped. A contained resource's changes count as its
        container's (labels and narrative belong to the container; dom-5 forbids labels on contained
        resources), and its failures fail the container."""
        stats.resources += 1
        try:
            resource_type = resource.get("resourceType")
            if not isinstance(resource_type, str):
                raise MaskingError("an element that should hold a resource has no resourceType")
            if not fhir_types.is_resource_type(resource_type):
                raise MaskingError(f"resource type {resource_type!r} is unknown to the masking engine")
            if resource_type == "Bundle":
                patients = {**patients, **_bundle_patients(resource, self._patient_of)}
            outer = container.context if container is not None else None
            context = self._context(resource, resource_type, outer, patients, scope_key, today)
            run = _Run(context, self._marks_of(resource, resource_type), patients, stats, cache)
            self._object(resource, self._root(resource_type), run)
            if run.changed and container is not None:
                container.changed = True
                container.labels |= run.labels
            elif run.changed:
                self._finish(resource, run)
        except MaskingError:
            if not self._skip_errors or container is not None:
                raise
            stats.dropped += 1
            return False
        except Exception as exc:
            if not self._skip_errors or container is not None:
                raise MaskingError(f"masking failed: {type(exc).__name__}") from exc
            stats.dropped += 1
            return False
        return True

    def _context(
        self,
        resource: dict[str, Any],
        resource_type: str,
        container: MaskContext | None,
        patients: Mapping[str, str],
        scope_key: str | None,
        today: date,
    ) -> MaskContext:
        if container is not None:
            return MaskContext(resource_type, container.resource_id, container.patient_id, scope_key, today)
        own_id = resource.get("id")
        resource_id = own_id if isinstance(own_id, str) else None
        return MaskContext(resource_type, resource_id, self._patient_of(resource, patients), scope_key, today)

    def _root(self, resource_type: str) -> PlanNode:
        root = self._roots.get(resource_type)
        if root is None:
            root = self._roots[resource_type] = self._planner.root(resource_type)
        return root

    def _finish(self, resource: dict[str, Any], run: _Run) -> None:
        run.stats.changed += 1
        if self._remove_narrative and "text" in resource:
            del resource["text"]
        add_security_labels(resource, run.labels, self._resource_labels, native=self._native)

    def _object(self, node: dict[str, Any], plan: PlanNode, run: _Run) -> None:
        fields = plan.fields
        marks = run.marks
        edits: list[tuple[str, Any]] | None = None
        aligned: list[tuple[str, set[int]]] | None = None
        for key, value in node.items():
            field_plan = fields[key]
            if marks is not None:
                marked = self._marked(node, key, value, plan, field_plan, run)
                if isinstance(marked, list):  # a list whose items were masked one by one
                    edits = edits or []
                    edits.append((key, marked or REMOVE))
                    continue
                field_plan = marked
            kind = field_plan.kind
            if kind == _SKIP:
                continue
            value_type = type(value)
            if kind == _OBJECT and value_type is dict:
                new = self._child_object(value, field_plan, run)
            elif kind == _LEAF and value_type is not list and value_type is not dict:
                new = self._leaf(value, key, field_plan, plan, run)
            elif kind == _KEPT:
                run.matches += 1
                continue
            elif kind == _CONDITIONAL:
                new = self._conditional(value, key, field_plan, plan, run)
            elif kind == _LEAF and value_type is list and "_" + key in node:
                new, removed = self._aligned_leaves(value, key, field_plan, plan, run)
                if removed:
                    aligned = aligned or []
                    aligned.append((key, removed))
            else:
                new = self._field(value, key, field_plan, plan, run)
            if new is not value:
                if edits is None:
                    edits = []
                edits.append((key, new))
        if edits:
            self._apply_edits(node, edits, fields, run, mark_absent=self._native and plan.governing is None)
        if aligned:
            _drop_sibling_items(node, aligned)

    def _aligned_leaves(
        self, values: list[Any], key: str, field_plan: FieldPlan, plan: PlanNode, run: _Run
    ) -> tuple[Any, set[int]]:
        """Mask a primitive list whose ``_key`` sibling holds per-item extensions; report removed items
        so the sibling list can drop the same positions (FHIR JSON keeps the two lists aligned)."""
        removed: set[int] = set()
        items = []
        for index, item in enumerate(values):
            new = item if item is None else self._leaf(item, key, field_plan, plan, run)
            if new is REMOVE:
                removed.add(index)
            else:
                items.append(new)
        if not removed and all(a is b for a, b in zip(items, values, strict=True)):
            return values, removed
        return items or REMOVE, removed

    def _marked(
        self,
        node: dict[str, Any],
        key: str,
        value: Any,
        plan: PlanNode,
        field_plan: FieldPlan,
        run: _Run,
    ) -> FieldPlan | list[Any]:
        """Apply FHIRPath-rule marks: the plan for the whole key, or (lists with marked items) the masked
        list, item by item."""
        marks = run.marks
        assert marks is not None
        rule = marks.get((id(node), key, None))
        if rule is not None:
            return self._planner.marked_plan(plan, key, rule)
        if type(value) is not list or not any((id(node), key, i) in marks for i in range(len(value))):
            return field_plan
        items: list[Any] = []
        for index, item in enumerate(value):
            item_rule = marks.get((id(node), key, index))
            item_plan = self._planner.marked_plan(plan, key, item_rule) if item_rule else field_plan
            if item_plan.kind == _KEPT:
                run.matches += 1
            result = item if item_plan.kind in (_SKIP, _KEPT) else self._one(item, key, item_plan, plan, run)
            if result is not REMOVE and not _empty(result):
                items.append(result)
        return items

    def _conditional(self, value: Any, key: str, field_plan: FieldPlan, plan: PlanNode, run: _Run) -> Any:
        """Items of ``key`` are masked by the plan their ``where()`` tests select."""
        if type(value) is not list:
            return self._passing(value, key, field_plan, plan, run)
        changed = False
        items = []
        for item in value:
            new = self._passing(item, key, field_plan, plan, run)
            if new is not item:
                changed = True
                if new is REMOVE or _empty(new):
                    continue
            items.append(new)
        return (items or REMOVE) if changed else value

    def _passing(self, item: Any, key: str, field_plan: FieldPlan, plan: PlanNode, run: _Run) -> Any:
        passed = tuple(i for i, (test, _, _) in enumerate(field_plan.conditions) if test.holds(item))
        chosen = self._planner.passed_plan(plan, key, field_plan, passed) if passed else field_plan.base
        assert chosen is not None
        if chosen.kind == _SKIP:
            return item
        if chosen.kind == _KEPT:
            run.matches += 1
            return item
        return self._one(item, key, chosen, plan, run)

    def _child_object(self, value: dict[str, Any], field_plan: FieldPlan, run: _Run) -> Any:
        """Mask a complex element in place; REMOVE when nothing (or a bare extension) is left."""
        size = len(value)
        self._object(value, field_plan.child, run)  # type: ignore[arg-type]
        if len(value) == size:
            return value
        if not value or (value.keys() <= _BARE_EXTENSION and _is_extension(field_plan)):
            return REMOVE
        return value

    def _field(self, value: Any, key: str, field_plan: FieldPlan, plan: PlanNode, run: _Run) -> Any:
        if type(value) is not list:
            return self._one(value, key, field_plan, plan, run)
        changed = False
        items = []
        for item in value:
            new = self._one(item, key, field_plan, plan, run)
            if new is not item:
                changed = True
                if new is REMOVE or _empty(new):
                    continue
            items.append(new)
        if not changed:
            return value
        return items or REMOVE

    def _one(self, value: Any, key: str, field_plan: FieldPlan, plan: PlanNode, run: _Run) -> Any:
        kind = field_plan.kind
        if kind == _OBJECT:
            if type(value) is dict:
                return self._child_object(value, field_plan, run)
            return self._unknown(value, key, field_plan, plan, run)
        if kind == _LEAF:
            return self._leaf(value, key, field_plan, plan, run)
        if kind == _RESOURCE:
            return self._nested_resource(value, key, run)
        if kind == _ELEMENT:
            return self._element(value, field_plan, run)
        return self._unknown(value, key, field_plan, plan, run)

    def _leaf(self, value: Any, key: str, field_plan: FieldPlan, plan: PlanNode, run: _Run) -> Any:
        rule = field_plan.rule
        assert rule is not None
        assert field_plan.info is not None
        if type(value) is dict or type(value) is list:
            raise MaskingError(f"{plan.type_name}.{key} should hold a primitive value")
        run.matches += 1
        context = run.context
        leaf = Leaf(value, field_plan.info.type_name, key, plan.fhir_type, context.resource_type)
        result = rule.method.apply(leaf, context)
        if result is KEEP:
            return value
        label = rule.method.label
        if type(result) is Relabelled:
            label, result = result.label, result.value
            if result is KEEP:  # compatibility mode labels some values it keeps, as the MS anonymizer does
                run.changed = True
                run.labels.add(label)
                return value
        if result is REMOVE or result != value:
            run.note(rule, label)
            return result
        return value

    def _unknown(self, value: Any, key: str, field_plan: FieldPlan, plan: PlanNode, run: _Run) -> Any:
        """A key the FHIR definitions do not know, under a governing rule: treat its values as strings."""
        rule = field_plan.rule
        if rule is None:
            return value
        if type(value) is dict:
            for child_key, child in list(value.items()):
                new = self._unknown(child, child_key, field_plan, plan, run)
                if new is REMOVE or _empty(new):
                    del value[child_key]
                else:
                    value[child_key] = new
            return value if value else REMOVE
        if type(value) is list:
            items = [self._unknown(item, key, field_plan, plan, run) for item in value]
            return [item for item in items if item is not REMOVE and not _empty(item)] or REMOVE
        type_name = "decimal" if isinstance(value, int | float) and not isinstance(value, bool) else "string"
        info_plan = FieldPlan(_LEAF, _UNKNOWN_INFO[type_name], rule)
        return self._leaf(value, key, info_plan, plan, run)

    def _element(self, value: Any, field_plan: FieldPlan, run: _Run) -> Any:
        rule = field_plan.rule
        assert rule is not None
        assert rule.element_method is not None
        assert field_plan.info is not None
        if type(value) is not dict:
            raise MaskingError(f"{field_plan.info.name} should hold an object")
        run.matches += 1
        new = rule.element_method.apply_element(value, field_plan.info.type_name, run.context)
        if new is KEEP:
            return value
        if new is not REMOVE and field_plan.protect is not None:
            self._merge_protected(value, new, field_plan.protect, run)
        run.note(rule, rule.method.label)
        return new

    def _merge_protected(
        self, original: dict[str, Any], new: dict[str, Any], protect: PlanNode, run: _Run
    ) -> None:
        """Children an earlier rule matched keep their (masked) original values."""
        for key, value in original.items():
            single = {key: value}
            before = run.matches
            self._object(single, protect, run)
            if run.matches > before:
                new.update(single)

    def _nested_resource(self, value: Any, key: str, run: _Run) -> Any:
        if type(value) is not dict:
            raise MaskingError(f"{key} should hold a resource")
        container = run if key == "contained" else None
        context = run.context
        if container is None and run.cache is not None and value.get("resourceType") != "Bundle":
            fragment = self._cached(
                value, run.patients, run.stats, context.scope_key, context.today, run.cache
            )
            return REMOVE if fragment is None else fragment
        kept = self._resource(value, container, run.patients, run.stats, context.scope_key, context.today)
        return value if kept else REMOVE

    def _apply_edits(
        self,
        node: dict[str, Any],
        edits: list[tuple[str, Any]],
        fields: dict[str, FieldPlan],
        run: _Run,
        *,
        mark_absent: bool,
    ) -> None:
        """Write the changed values. A removed primitive takes its ``_x`` extensions with it (they qualify
        a value that is gone); a required element that had to go is marked absent (native mode) unless the
        whole enclosing element is itself being masked by a rule."""
        removed: list[str] = []
        for key, new in edits:
            if new is REMOVE or _empty(new):
                del node[key]
                removed.append(key[1:] if key.startswith("_") else key)
            else:
                node[key] = new
        for key in removed:
            if key in node:
                continue  # only the extensions of a primitive that is still there went
            node.pop("_" + key, None)
            info = fields[key].info
            if mark_absent and info is not None and info.required:
                _mark_absent(node, key, info.is_list, info.is_primitive)


_UNKNOWN_INFO = {
    name: fhir_types.ElementInfo(name, name, name, False, None, False, True) for name in ("string", "decimal")
}


_BARE_EXTENSION = frozenset({"id", "url"})


def _drop_sibling_items(node: dict[str, Any], aligned: list[tuple[str, set[int]]]) -> None:
    """Remove from each ``_key`` list the positions removed from ``key`` (extensions of removed values)."""
    for key, removed in aligned:
        sibling = node.get("_" + key)
        if isinstance(sibling, list):
            kept = [item for index, item in enumerate(sibling) if index not in removed]
            if any(item is not None for item in kept):
                node["_" + key] = kept
            else:
                del node["_" + key]


def _is_extension(field_plan: FieldPlan) -> bool:
    return field_plan.info is not None and field_plan.info.type_name == "Extension"


def _empty(value: Any) -> bool:
    return (type(value) is dict or type(value) is list) and not value


def _mark_absent(node: dict[str, Any], key: str, is_list: bool, is_primitive: bool) -> None:
    """Replace a removed required element by the data-absent-reason extension (``masked``)."""
    absent = {"extension": [dict(_MASKED_ABSENT["extension"][0])]}
    if is_primitive:
        node["_" + key] = [absent] if is_list else absent
    else:
        node[key] = [absent] if is_list else absent


def _bundle_patients(bundle: Mapping[str, Any], patient_of: PatientOf) -> dict[str, str]:
    """``fullUrl`` -> patient id for the Patient entries of a Bundle (read before anything is masked)."""
    found: dict[str, str] = {}
    for entry in bundle.get("entry") or ():
        resource = entry.get("resource") if isinstance(entry, dict) else None
        full_url = entry.get("fullUrl") if isinstance(entry, dict) else None
        if (
            isinstance(resource, dict)
            and resource.get("resourceType") == "Patient"
            and isinstance(full_url, str)
        ):
            patient_id = resource.get("id")
            if isinstance(patient_id, str):
                found[full_url] = patient_id
    return found

"""Properties of consent evaluation over generated directive trees, requests and resources.

Spec (consent contract): nested levels are exceptions and the most specific matching provision decides; the
safe default combining rule is deny-overrides (any applicable deny wins); BTG may override a denial.
"""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from consent.coding import Coding
from consent.evaluate import (
    AccessContext,
    BreakGlass,
    Combining,
    ConsentVerdict,
    ImplicitPolicy,
    evaluate,
    facts_of,
)
from consent.facts import ResourceFacts
from consent.labels import ACT_CODE_SYSTEM
from consent.matching import decide_consent
from consent.model import RESOURCE_TYPES_SYSTEM, ActorRule, ConsentDirective, Kind, Provision, parse_consent

NOW = datetime(2025, 6, 1, tzinfo=UTC)
ACTORS = ["Practitioner/1", "Practitioner/2", "Organization/3"]
PURPOSES = ["TREAT", "ETREAT", "BTG", "HPAYMT", "HRESCH"]
TYPES = ["Observation", "Condition"]
SENSITIVITY = ["PSY", "SUD", "ETHUD", "HIV"]

kinds: st.SearchStrategy[Kind] = st.sampled_from(["permit", "deny"])


def _sub(values: list[str]) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from(values), max_size=2, unique=True)


@st.composite
def provisions(draw: st.DrawFn, depth: int = 0) -> Provision:
    """A provision with a few random constraints and up to two levels of random exceptions below it."""
    children = draw(st.lists(provisions(depth + 1), max_size=2)) if depth < 2 else []
    return Provision(
        kind=draw(kinds),
        actors=tuple(ActorRule((), reference) for reference in draw(_sub(ACTORS))),
        purposes=tuple(draw(_sub(PURPOSES))),
        classes=tuple(Coding(RESOURCE_TYPES_SYSTEM, name) for name in draw(_sub(TYPES))),
        security_labels=tuple(Coding(ACT_CODE_SYSTEM, code) for code in draw(_sub(SENSITIVITY))),
        children=tuple(children),
    )


def directive(root: Provision, consent_id: str = "c") -> ConsentDirective:
    return ConsentDirective(
        id=consent_id,
        status="active",
        patient="p",
        period=None,
        root=root,
        scopes=(),
        policies=(),
        policy_rules=(),
        version="R4",
        recorded=None,
    )


contexts = st.builds(
    lambda actors, purposes: AccessContext(actors=frozenset(actors), purposes=frozenset(purposes), when=NOW),
    _sub(ACTORS),
    _sub(PURPOSES),
)


@st.composite
def resources(draw: st.DrawFn) -> ResourceFacts:
    security = [{"system": ACT_CODE_SYSTEM, "code": code} for code in draw(_sub(SENSITIVITY))]
    return facts_of({"resourceType": draw(st.sampled_from(TYPES)), "id": "r", "meta": {"security": security}})


@st.composite
def paths(draw: st.DrawFn, root: Provision) -> tuple[int, ...]:
    """The path of a random node of the tree under ``root``."""
    path: list[int] = []
    node = root
    while node.children:
        if not draw(st.booleans()):
            break
        index = draw(st.integers(0, len(node.children) - 1))
        path.append(index)
        node = node.children[index]
    return tuple(path)


def with_child(node: Provision, path: tuple[int, ...], child: Provision) -> Provision:
    if not path:
        return replace(node, children=(*node.children, child))
    children = list(node.children)
    children[path[0]] = with_child(children[path[0]], path[1:], child)
    return replace(node, children=tuple(children))


def verdict(
    consents: list[ConsentDirective],
    context: AccessContext,
    facts: ResourceFacts,
    combining: Combining = "deny-overrides",
    break_glass: BreakGlass | None = None,
) -> ConsentVerdict:
    return evaluate(
        consents,
        context,
        facts,
        implicit=ImplicitPolicy.ALL_NORMAL,
        combining=combining,
        break_glass=break_glass,
    )


@settings(max_examples=300)
@given(data=st.data(), root=provisions(), extra=provisions(), context=contexts, facts=resources())
def test_adding_a_nested_deny_never_turns_a_deny_into_a_permit(
    data: st.DataObject, root: Provision, extra: Provision, context: AccessContext, facts: ResourceFacts
) -> None:
    deny = replace(extra, kind="deny", children=())
    grown = with_child(root, data.draw(paths(root)), deny)
    before = decide_consent(directive(root), context, facts)
    after = decide_consent(directive(grown), context, facts)
    if before is None:
        assert after is None
    elif before.kind == "deny":
        assert after is not None
        assert after.kind == "deny"
    if not verdict([directive(root)], context, facts).permitted:
        assert not verdict([directive(grown)], context, facts).permitted


@settings(max_examples=300)
@given(roots=st.lists(provisions(), max_size=3), context=contexts, facts=resources(), glass=st.booleans())
def test_deny_overrides_with_an_applicable_deny_is_deny_unless_break_glass(
    roots: list[Provision], context: AccessContext, facts: ResourceFacts, glass: bool
) -> None:
    consents = [directive(root, f"c{index}") for index, root in enumerate(roots)]
    consents.append(directive(Provision(kind="deny"), "always-deny"))
    if not glass:
        assert not verdict(consents, context, facts).permitted
        return
    btg = replace(context, purposes=context.purposes | {"BTG"})
    outcome = verdict(consents, btg, facts, break_glass=BreakGlass(eligible=True, justification="emergency"))
    assert (outcome.permitted, outcome.basis) == (True, "break-glass")


@settings(max_examples=200)
@given(
    roots=st.lists(provisions(), min_size=1, max_size=4),
    context=contexts,
    facts=resources(),
    order=st.randoms(use_true_random=False),
)
def test_overrides_rules_do_not_depend_on_the_order_of_consents(
    roots: list[Provision], context: AccessContext, facts: ResourceFacts, order: random.Random
) -> None:
    consents = [directive(root, f"c{index}") for index, root in enumerate(roots)]
    shuffled = list(consents)
    order.shuffle(shuffled)
    rules: tuple[Combining, ...] = ("deny-overrides", "permit-overrides", "most-recent")
    for combining in rules:
        first = verdict(consents, context, facts, combining=combining)
        second = verdict(shuffled, context, facts, combining=combining)
        assert (first.permitted, first.basis, sorted(first.consent_ids)) == (
            second.permitted,
            second.basis,
            sorted(second.consent_ids),
        )


@given(root=provisions(), context=contexts, facts=resources())
def test_without_break_glass_purposes_the_glass_changes_nothing(
    root: Provision, context: AccessContext, facts: ResourceFacts
) -> None:
    plain = replace(context, purposes=context.purposes - {"BTG", "ETREAT", "ERTREAT"})
    consents = [directive(root)]
    glass = BreakGlass(eligible=True, justification="x", justification_required=False)
    assert verdict(consents, plain, facts, break_glass=glass) == verdict(consents, plain, facts)


@given(root=provisions(), context=contexts, facts=resources())
def test_sensitive_data_are_released_only_under_a_permit_naming_them(
    root: Provision, context: AccessContext, facts: ResourceFacts
) -> None:
    outcome = verdict([directive(root)], context, facts)
    if outcome.permitted and facts.labels:
        assert outcome.basis == "consent"
        labelled = [node for node in _nodes(root) if node.security_labels]
        assert labelled, "a permit of sensitive data must come from a tree that names labels"


def _nodes(node: Provision) -> list[Provision]:
    return [node, *(found for child in node.children for found in _nodes(child))]


@given(decision=kinds, depth=st.integers(1, 6))
def test_r5_levels_alternate(decision: Kind, depth: int) -> None:
    provision: dict[str, object] = {}
    for _ in range(depth - 1):
        provision = {"provision": [provision]}
    resource = {"resourceType": "Consent", "status": "active", "decision": decision, "provision": [provision]}
    node = parse_consent(resource).root
    level = 0
    while node is not None:
        assert (node.kind == decision) is (level % 2 == 0)
        node = node.children[0] if node.children else None
        level += 1
    assert level == depth + 1

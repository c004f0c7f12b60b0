"""Consent evaluation: provision matching element by element, nested exceptions, implicit policies, combining,
ignored Consents, sensitive data and break-glass.

Spec (consent contract, "Evaluation semantics"): elements of a provision are AND-ed, repetitions OR-ed, an
absent element is no constraint; the root states the base rule and nested levels hold exceptions; the most
specific matching provision decides; only ``active`` Consents are enforced; with no Consent the implicit
policy applies (Policy-deny, Policy-all-normal, Policy-basic-normal, Policy-break-glass-only); several
Consents need a stated combining rule (default deny-overrides); BTG may override a consent directive.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from consent.evaluate import (
    AccessContext,
    BreakGlass,
    Combining,
    ConsentVerdict,
    ImplicitPolicy,
    evaluate,
    facts_of,
)
from consent.labels import ACT_CODE_SYSTEM, CONFIDENTIALITY_ORDER, CONFIDENTIALITY_SYSTEM
from consent.matching import decide_consent
from consent.model import ConsentDirective, parse_consent

NOW = datetime(2025, 6, 1, 12, tzinfo=UTC)
LOINC = "http://loinc.org"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
HEART_RATE = {"system": LOINC, "code": "8867-4"}


def ctx(
    *actors: str, purposes: tuple[str, ...] = ("TREAT",), action: str = "access", when: datetime = NOW
) -> AccessContext:
    return AccessContext(
        actors=frozenset(actors or ["Practitioner/dr1"]),
        purposes=frozenset(purposes),
        action=action,
        when=when,
    )


def observation(**fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "o1",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [HEART_RATE]},
        "effectiveDateTime": "2025-03-01",
        **fields,
    }


def labelled(*codes: str) -> dict[str, Any]:
    security = [
        {"system": CONFIDENTIALITY_SYSTEM if code in CONFIDENTIALITY_ORDER else ACT_CODE_SYSTEM, "code": code}
        for code in codes
    ]
    return observation(meta={"security": security})


def consent(provision: dict[str, Any] | None, consent_id: str = "c1", **fields: Any) -> ConsentDirective:
    resource = {
        "resourceType": "Consent",
        "id": consent_id,
        "status": "active",
        "patient": {"reference": "Patient/p1"},
        "scope": {"coding": [{"system": CONSENT_SCOPE, "code": "patient-privacy"}]},
        **fields,
    }
    if provision is not None:
        resource["provision"] = provision
    return parse_consent(resource)


def r5_consent(decision: str, provisions: list[dict[str, Any]], **fields: Any) -> ConsentDirective:
    resource = {
        "resourceType": "Consent",
        "id": "r5",
        "status": "active",
        "subject": {"reference": "Patient/p1"},
        "decision": decision,
        "provision": provisions,
        **fields,
    }
    return parse_consent(resource)


def run(
    consents: list[ConsentDirective],
    context: AccessContext | None = None,
    resource: dict[str, Any] | None = None,
    implicit: ImplicitPolicy = ImplicitPolicy.DENY,
    **options: Any,
) -> ConsentVerdict:
    return evaluate(
        consents, context or ctx(), facts_of(resource or observation()), implicit=implicit, **options
    )


def matches(elements: dict[str, Any], context: AccessContext, resource: dict[str, Any]) -> bool:
    """Whether a root permit provision holding ``elements`` matches (the Consent applies)."""
    directive = consent({"type": "permit", **elements})
    return decide_consent(directive, context, facts_of(resource)) is not None


def actor(*references: str) -> list[dict[str, Any]]:
    return [{"reference": {"reference": reference}} for reference in references]


def purpose(*codes: str) -> list[dict[str, str]]:
    return [{"system": ACT_REASON, "code": code} for code in codes]


def label(code: str) -> dict[str, str]:
    return {
        "system": CONFIDENTIALITY_SYSTEM if code in CONFIDENTIALITY_ORDER else ACT_CODE_SYSTEM,
        "code": code,
    }


# --- each provision element on its own ----------------------------------------------------------------------

# Rule: "period limits when a provision applies (evaluate against the request time)".
PERIOD = [
    ({"start": "2025-01-01"}, NOW, True),
    ({"start": "2025-06-01T12:00:00Z"}, NOW, True),
    ({"start": "2025-06-01T12:00:01Z"}, NOW, False),
    ({"end": "2025-06"}, NOW, True),
    ({"end": "2025-06"}, datetime(2025, 7, 1, tzinfo=UTC), False),
    ({"end": "2025-05-31"}, NOW, False),
    ({"start": "2025-06-01T13:30:00+02:00"}, NOW, True),
    ({"start": "2024", "end": "2024"}, NOW, False),
]


@pytest.mark.parametrize(("period", "when", "expected"), PERIOD)
def test_period(period: dict[str, str], when: datetime, expected: bool) -> None:
    assert matches({"period": period}, ctx(when=when), observation()) is expected


# Rule: "dataPeriod (period of the data, by authored / last-updated date)". Undated or partly-inside data do
# not match: the constraint is not proven.
DATA_PERIOD = [
    ({"start": "2025-01-01"}, observation(), True),
    ({"end": "2024-12-31"}, observation(), False),
    ({"start": "2025-03-01", "end": "2025-03-01"}, observation(), True),
    ({"start": "2024-03", "end": "2024-06"}, observation(effectiveDateTime="2024"), False),
    ({"start": "2024"}, observation(effectiveDateTime="2024-03"), True),
    ({"start": "2025-01-01"}, {"resourceType": "Observation", "id": "o1"}, False),
    (
        {"start": "2025-01-01"},
        {"resourceType": "Observation", "meta": {"lastUpdated": "2025-02-01T00:00:00Z"}},
        True,
    ),
    ({"end": "2024-12-31"}, observation(meta={"lastUpdated": "2024-01-01T00:00:00Z"}), False),
    ({"start": "2000"}, observation(effectiveDateTime="garbage"), False),
]


@pytest.mark.parametrize(("data_period", "resource", "expected"), DATA_PERIOD)
def test_data_period(data_period: dict[str, str], resource: dict[str, Any], expected: bool) -> None:
    assert matches({"dataPeriod": data_period}, ctx(), resource) is expected


# Rule: actor — who the rule is about; repetitions OR-ed. Judgement call: the role is not compared.
ACTOR = [
    (actor("Practitioner/dr1"), ctx("Practitioner/dr1"), True),
    (actor("Practitioner/dr1"), ctx("Practitioner/dr2"), False),
    (actor("Practitioner/dr1", "Organization/o3"), ctx("Practitioner/dr9", "Organization/o3"), True),
    (actor("CareTeam/t9"), ctx("Practitioner/dr1", "CareTeam/t9"), True),
    (actor("https://ehr.example/fhir/Practitioner/dr1"), ctx("Practitioner/dr1"), True),
    (actor("Practitioner/dr1"), ctx("Practitioner/dr12"), False),
    (actor("Practitioner/1"), ctx("Patient/1"), False),
    (
        [{"role": {"coding": [{"code": "IRCP"}]}, "reference": {"reference": "Practitioner/dr1"}}],
        ctx("Practitioner/dr1"),
        True,
    ),
]


@pytest.mark.parametrize(("actors", "context", "expected"), ACTOR)
def test_actor(actors: list[dict[str, Any]], context: AccessContext, expected: bool) -> None:
    assert matches({"actor": actors}, context, observation()) is expected


# Rule: action — absent = all actions; judgement call: ``access`` covers the read-type actions.
ACTION = [
    (["access"], "access", True),
    (["access"], "read", True),
    (["access"], "search", True),
    (["access"], "vread", True),
    (["access"], "history", True),
    (["access"], "correct", False),
    (["correct"], "access", False),
    (["use", "disclose"], "disclose", True),
    (["collect"], "read", False),
]


@pytest.mark.parametrize(("actions", "asked", "expected"), ACTION)
def test_action(actions: list[str], asked: str, expected: bool) -> None:
    value = [
        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": code}]}
        for code in actions
    ]
    assert matches({"action": value}, ctx(action=asked), observation()) is expected


def test_absent_action_covers_every_action() -> None:
    assert all(
        matches({}, ctx(action=asked), observation()) for asked in ("access", "correct", "collect", "x")
    )


# Rule: securityLabel — confidentiality high-water mark, sensitivity subsumption.
SECURITY_LABEL = [
    (["R"], labelled("N"), True),
    (["R"], labelled("R"), True),
    (["R"], labelled("V"), False),
    (["N"], observation(), True),
    (["SUD"], labelled("ETHUD"), True),
    (["SPI"], labelled("PSY"), True),
    (["PSY"], labelled("SUD"), False),
    (["PSY", "HIV"], labelled("HIV"), True),
    (["HIV"], observation(), False),
]


@pytest.mark.parametrize(("codes", "resource", "expected"), SECURITY_LABEL)
def test_security_label(codes: list[str], resource: dict[str, Any], expected: bool) -> None:
    assert matches({"securityLabel": [label(code) for code in codes]}, ctx(), resource) is expected


# Rule: purpose — OR-ed (PCF over R4's "all"), with the v3-ActReason hierarchy.
PURPOSE = [
    (["TREAT"], ("TREAT",), True),
    (["TREAT"], ("BTG",), True),
    (["TREAT"], ("ETREAT",), True),
    (["BTG"], ("TREAT",), False),
    (["HPAYMT"], ("TREAT",), False),
    (["HPAYMT", "TREAT"], ("TREAT",), True),
    (["HRESCH"], ("TREAT", "HRESCH"), True),
    (["PATRQT"], ("FAMRQT",), True),
    (["TREAT"], (), False),
]


@pytest.mark.parametrize(("codes", "purposes", "expected"), PURPOSE)
def test_purpose(codes: list[str], purposes: tuple[str, ...], expected: bool) -> None:
    assert matches({"purpose": purpose(*codes)}, ctx(purposes=purposes), observation()) is expected


# Rule: class — resource types (or other class codes), OR-ed.
CLASS = [
    ([{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}], observation(), True),
    ([{"code": "Condition"}], observation(), False),
    ([{"code": "Condition"}, {"code": "Observation"}], observation(), True),
    ([HEART_RATE], observation(), True),
    ([{"system": LOINC, "code": "other"}], observation(), False),
]


@pytest.mark.parametrize(("classes", "resource", "expected"), CLASS)
def test_class(classes: list[dict[str, str]], resource: dict[str, Any], expected: bool) -> None:
    assert matches({"class": classes}, ctx(), resource) is expected


def test_r5_resource_type_and_document_type_are_anded() -> None:
    document = {
        "resourceType": "DocumentReference",
        "id": "d1",
        "type": {"coding": [{"system": LOINC, "code": "11488-4"}]},
    }
    provision = {
        "resourceType": [{"code": "DocumentReference"}],
        "documentType": [{"system": LOINC, "code": "11488-4"}],
    }
    directive = r5_consent("deny", [provision])
    assert run([directive], resource=document).permitted
    other = document | {"type": {"coding": [{"system": LOINC, "code": "18842-5"}]}}
    assert not run([directive], resource=other).permitted


# Rule: code — the resource's codes (code, category, type, ...), OR-ed.
CODE = [
    ([{"coding": [HEART_RATE]}], observation(), True),
    ([{"coding": [{"system": LOINC, "code": "other"}]}, {"coding": [HEART_RATE]}], observation(), True),
    ([{"coding": [{"system": "urn:other", "code": "8867-4"}]}], observation(), False),
    (
        [{"coding": [{"system": "urn:cat", "code": "lab"}]}],
        observation(category=[{"coding": [{"system": "urn:cat", "code": "lab"}]}]),
        True,
    ),
]


@pytest.mark.parametrize(("codes", "resource", "expected"), CODE)
def test_code(codes: list[dict[str, Any]], resource: dict[str, Any], expected: bool) -> None:
    assert matches({"code": codes}, ctx(), resource) is expected


# Rule: data — instance | related | dependents | authoredby. Judgement call: related is read like dependents.
REFERRER = observation(
    id="o2", encounter={"reference": "Encounter/e1"}, performer=[{"reference": "Practitioner/lab"}]
)
DATA = [
    ("instance", "Observation/o1", observation(), True),
    ("instance", "Observation/o2", observation(), False),
    ("instance", "Encounter/e1", REFERRER, False),
    ("related", "Observation/o2", REFERRER, True),
    ("related", "Encounter/e1", REFERRER, True),
    ("related", "Encounter/e2", REFERRER, False),
    ("dependents", "Encounter/e1", REFERRER, True),
    ("dependents", "Observation/o1", observation(), True),
    ("authoredby", "Practitioner/lab", REFERRER, True),
    ("authoredby", "Encounter/e1", REFERRER, False),
    ("authoredby", "Patient/p1", REFERRER, False),
]


@pytest.mark.parametrize(("meaning", "reference", "resource", "expected"), DATA)
def test_data(meaning: str, reference: str, resource: dict[str, Any], expected: bool) -> None:
    value = [{"meaning": meaning, "reference": {"reference": reference}}]
    assert matches({"data": value}, ctx(), resource) is expected


# Rule: elements AND-ed, repetitions OR-ed, absent = no constraint.
AND_OR = [
    ({}, ctx("Practitioner/x", purposes=()), True),
    ({"actor": actor("Practitioner/dr1"), "purpose": purpose("TREAT")}, ctx("Practitioner/dr1"), True),
    ({"actor": actor("Practitioner/dr1"), "purpose": purpose("HPAYMT")}, ctx("Practitioner/dr1"), False),
    ({"actor": actor("Practitioner/dr2"), "purpose": purpose("TREAT")}, ctx("Practitioner/dr1"), False),
    (
        {"actor": actor("Practitioner/dr2", "Practitioner/dr1"), "purpose": purpose("HPAYMT", "TREAT")},
        ctx("Practitioner/dr1"),
        True,
    ),
    ({"actor": actor("Practitioner/dr1"), "class": [{"code": "Condition"}]}, ctx("Practitioner/dr1"), False),
    (
        {
            "actor": actor("Practitioner/dr1"),
            "class": [{"code": "Observation"}],
            "code": [{"coding": [HEART_RATE]}],
            "securityLabel": [label("N")],
            "dataPeriod": {"start": "2025"},
            "period": {"end": "2026"},
        },
        ctx("Practitioner/dr1"),
        True,
    ),
]


@pytest.mark.parametrize(("elements", "context", "expected"), AND_OR)
def test_elements_are_anded_and_repetitions_ored(
    elements: dict[str, Any], context: AccessContext, expected: bool
) -> None:
    assert matches(elements, context, observation()) is expected


# --- nested exceptions, most specific wins ------------------------------------------------------------------

# Rule: "nested permit inside deny, nested deny inside permit"; the most specific matching provision decides.
PERMIT_IN_DENY = consent(
    {"type": "deny", "provision": [{"type": "permit", "actor": actor("Practitioner/dr1")}]}
)
DENY_IN_PERMIT_IN_DENY = consent(
    {
        "type": "deny",
        "provision": [
            {
                "type": "permit",
                "actor": actor("Practitioner/dr1", "Practitioner/dr2"),
                "provision": [
                    {"type": "deny", "actor": actor("Practitioner/dr2"), "class": [{"code": "Observation"}]}
                ],
            }
        ],
    }
)
SPECIFIC = consent(
    {
        "type": "permit",
        "provision": [
            {
                "type": "deny",
                "class": [{"code": "Observation"}],
                "provision": [{"type": "permit", "actor": actor("Practitioner/dr1")}],
            }
        ],
    }
)
CONDITION = {"resourceType": "Condition", "id": "c9", "subject": {"reference": "Patient/p1"}}

NESTED = [
    (PERMIT_IN_DENY, "Practitioner/dr1", observation(), True),
    (PERMIT_IN_DENY, "Practitioner/dr2", observation(), False),
    (DENY_IN_PERMIT_IN_DENY, "Practitioner/dr1", observation(), True),
    (DENY_IN_PERMIT_IN_DENY, "Practitioner/dr2", observation(), False),
    (DENY_IN_PERMIT_IN_DENY, "Practitioner/dr2", CONDITION, True),
    (DENY_IN_PERMIT_IN_DENY, "Practitioner/dr3", CONDITION, False),
    (SPECIFIC, "Practitioner/dr1", observation(), True),
    (SPECIFIC, "Practitioner/dr2", observation(), False),
    (SPECIFIC, "Practitioner/dr2", CONDITION, True),
]


@pytest.mark.parametrize(("directive", "who", "resource", "permitted"), NESTED)
def test_nested_exceptions(
    directive: ConsentDirective, who: str, resource: dict[str, Any], permitted: bool
) -> None:
    verdict = run([directive], ctx(who), resource, implicit=ImplicitPolicy.ALL_NORMAL)
    assert verdict.permitted is permitted
    assert verdict.basis == "consent"
    assert verdict.consent_ids == ("c1",)


def test_the_same_tree_in_r5() -> None:
    directive = r5_consent(
        "deny",
        [
            {
                "actor": actor("Practitioner/dr1", "Practitioner/dr2"),
                "provision": [
                    {"actor": actor("Practitioner/dr2"), "resourceType": [{"code": "Observation"}]}
                ],
            }
        ],
    )
    assert directive.root == DENY_IN_PERMIT_IN_DENY.root
    assert run([directive], ctx("Practitioner/dr2"), CONDITION).permitted


def test_sibling_exceptions_that_disagree_deny() -> None:
    """Judgement call: matching sibling branches combine with deny winning."""
    directive = consent(
        {
            "type": "permit",
            "provision": [
                {
                    "type": "deny",
                    "class": [{"code": "Observation"}],
                    "provision": [{"type": "permit", "actor": actor("Practitioner/dr1")}],
                },
                {"type": "deny", "securityLabel": [label("R")]},
            ],
        }
    )
    assert run([directive], ctx("Practitioner/dr1"), labelled("V")).permitted
    assert not run([directive], ctx("Practitioner/dr1"), labelled("R")).permitted


def test_decision_names_the_deciding_provision() -> None:
    decision = decide_consent(DENY_IN_PERMIT_IN_DENY, ctx("Practitioner/dr2"), facts_of(observation()))
    assert decision is not None
    assert (decision.kind, decision.paths) == ("deny", ((0, 0),))
    verdict = run([DENY_IN_PERMIT_IN_DENY], ctx("Practitioner/dr2"))
    assert any("exception 0.0" in reason for reason in verdict.reasons)


# --- which Consents apply; the implicit policy --------------------------------------------------------------


# Rule: a root provision that does not match makes the Consent not applicable: the implicit policy decides.
def test_a_consent_whose_root_does_not_match_leaves_it_to_the_implicit_policy() -> None:
    directive = consent({"type": "deny", "actor": actor("Practitioner/dr9")})
    for implicit, permitted in ((ImplicitPolicy.ALL_NORMAL, True), (ImplicitPolicy.DENY, False)):
        verdict = run([directive], ctx("Practitioner/dr1"), implicit=implicit)
        assert (verdict.permitted, verdict.basis, verdict.consent_ids) == (permitted, "implicit", ())
        assert any("do not apply" in reason for reason in verdict.reasons)


# Rule: PCF implicit policies. Judgement call: they release normal data only (no sensitivity, not above N).
IMPLICIT = [
    (ImplicitPolicy.DENY, ("TREAT",), observation(), False),
    (ImplicitPolicy.ALL_NORMAL, ("TREAT",), observation(), True),
    (ImplicitPolicy.ALL_NORMAL, ("HPAYMT",), observation(), True),
    (ImplicitPolicy.ALL_NORMAL, (), observation(), True),
    (ImplicitPolicy.ALL_NORMAL, ("TREAT",), labelled("N"), True),
    (ImplicitPolicy.ALL_NORMAL, ("TREAT",), labelled("R"), False),
    (ImplicitPolicy.ALL_NORMAL, ("TREAT",), labelled("V"), False),
    (ImplicitPolicy.ALL_NORMAL, ("TREAT",), labelled("PSY"), False),
    (ImplicitPolicy.ALL_NORMAL, ("TREAT",), labelled("OPIOIDUD"), False),
    (ImplicitPolicy.BASIC_NORMAL, ("TREAT",), observation(), True),
    (ImplicitPolicy.BASIC_NORMAL, ("ETREAT",), observation(), True),
    (ImplicitPolicy.BASIC_NORMAL, ("HPAYMT", "TREAT"), observation(), True),
    (ImplicitPolicy.BASIC_NORMAL, ("HPAYMT",), observation(), False),
    (ImplicitPolicy.BASIC_NORMAL, ("PATRQT",), observation(), False),
    (ImplicitPolicy.BASIC_NORMAL, (), observation(), False),
    (ImplicitPolicy.BASIC_NORMAL, ("TREAT",), labelled("HIV"), False),
    (ImplicitPolicy.BREAK_GLASS_ONLY, ("TREAT",), observation(), False),
]


@pytest.mark.parametrize(("implicit", "purposes", "resource", "permitted"), IMPLICIT)
def test_implicit_policies(
    implicit: ImplicitPolicy, purposes: tuple[str, ...], resource: dict[str, Any], permitted: bool
) -> None:
    verdict = run([], ctx(purposes=purposes), resource, implicit=implicit)
    assert (verdict.permitted, verdict.basis, verdict.consent_ids) == (permitted, "implicit", ())


# Rule: only active Consents are enforced; R5 Consent.period bounds when it is in force. Judgement call:
# R4 Consents scoped only to treatment or adr are not rules about information.
IGNORED = [
    (consent({"type": "deny"}, status="draft"), "status is draft"),
    (consent({"type": "deny"}, status="proposed"), "status is proposed"),
    (consent({"type": "deny"}, status="rejected"), "status is rejected"),
    (consent({"type": "deny"}, status="inactive"), "status is inactive"),
    (consent({"type": "deny"}, status="entered-in-error"), "status is entered-in-error"),
    (r5_consent("deny", [], status="not-done"), "status is not-done"),
    (r5_consent("deny", [], period={"end": "2025-05-31"}), "outside its period"),
    (r5_consent("deny", [], period={"start": "2025-06-02"}), "outside its period"),
    (consent({"type": "deny"}, scope={"coding": [{"system": CONSENT_SCOPE, "code": "treatment"}]}), "scope"),
    (consent({"type": "deny"}, scope={"coding": [{"system": CONSENT_SCOPE, "code": "adr"}]}), "scope"),
]


@pytest.mark.parametrize(("directive", "why"), IGNORED)
def test_consents_not_in_force_are_ignored(directive: ConsentDirective, why: str) -> None:
    verdict = run([directive], implicit=ImplicitPolicy.ALL_NORMAL)
    assert (verdict.permitted, verdict.basis) == (True, "implicit")
    assert any(why in reason for reason in verdict.reasons)


COUNTED = [
    r5_consent("deny", [], period={"start": "2025-06-01", "end": "2025-06-01"}),
    consent({"type": "deny"}, scope={"coding": [{"system": CONSENT_SCOPE, "code": "research"}]}),
    consent(
        {"type": "deny"},
        scope={
            "coding": [
                {"system": CONSENT_SCOPE, "code": "treatment"},
                {"system": CONSENT_SCOPE, "code": "patient-privacy"},
            ]
        },
    ),
    consent({"type": "deny"}, scope=None),
]


@pytest.mark.parametrize("directive", COUNTED)
def test_consents_in_force_count(directive: ConsentDirective) -> None:
    verdict = run([directive], implicit=ImplicitPolicy.ALL_NORMAL)
    assert (verdict.permitted, verdict.basis) == (False, "consent")


# --- combining several Consents -----------------------------------------------------------------------------

OLD_PERMIT = consent({"type": "permit"}, "old-permit", dateTime="2024-01-01T00:00:00Z")
NEW_PERMIT = consent({"type": "permit"}, "new-permit", dateTime="2025-01-01T00:00:00Z")
OLD_DENY = consent({"type": "deny"}, "old-deny", dateTime="2024-01-01T00:00:00Z")
NEW_DENY = consent({"type": "deny"}, "new-deny", dateTime="2025-01-01")
UNDATED_DENY = consent({"type": "deny"}, "undated-deny")
ELSEWHERE_DENY = consent({"type": "deny", "actor": actor("Practitioner/other")}, "elsewhere", dateTime="2026")

# Rule: "no standard combining rule; a deployment must state one (the safe default is deny-overrides)".
COMBINING = [
    ("deny-overrides", [OLD_PERMIT, NEW_DENY], False, ("new-deny",)),
    ("deny-overrides", [NEW_PERMIT, OLD_PERMIT], True, ("new-permit", "old-permit")),
    ("deny-overrides", [NEW_PERMIT, ELSEWHERE_DENY], True, ("new-permit",)),
    ("permit-overrides", [OLD_PERMIT, NEW_DENY], True, ("old-permit",)),
    ("permit-overrides", [OLD_DENY, NEW_DENY], False, ("old-deny", "new-deny")),
    ("most-recent", [OLD_PERMIT, NEW_DENY], False, ("new-deny",)),
    ("most-recent", [NEW_PERMIT, OLD_DENY], True, ("new-permit",)),
    ("most-recent", [NEW_PERMIT, NEW_DENY], False, ("new-deny",)),  # a tie is a deny
    ("most-recent", [UNDATED_DENY, OLD_PERMIT], True, ("old-permit",)),  # undated counts as oldest
    ("most-recent", [OLD_PERMIT, ELSEWHERE_DENY], True, ("old-permit",)),  # only applicable ones count
]


@pytest.mark.parametrize(("combining", "consents", "permitted", "ids"), COMBINING)
def test_combining(
    combining: Combining, consents: list[ConsentDirective], permitted: bool, ids: tuple[str, ...]
) -> None:
    for ordering in (consents, consents[::-1]):
        verdict = run(ordering, combining=combining)
        assert (verdict.permitted, verdict.basis) == (permitted, "consent")
        assert sorted(verdict.consent_ids) == sorted(ids)


def test_deny_overrides_is_the_default() -> None:
    assert not run([NEW_PERMIT, OLD_DENY]).permitted


def test_unknown_combining_rule() -> None:
    with pytest.raises(ValueError, match="combining"):
        run([NEW_PERMIT], combining="first-applicable")


# --- sensitive data -----------------------------------------------------------------------------------------

# Rule (brief): data with a sensitivity label are withheld unless an applicable permit explicitly covers the
# label; the implicit policy alone never releases them.
PSY_TO_DR1 = consent(
    {
        "type": "permit",
        "provision": [
            {"type": "permit", "actor": actor("Practitioner/dr1"), "securityLabel": [label("PSY")]}
        ],
    }
)
DENY_PSY_EXCEPT_DR1 = consent(
    {
        "type": "permit",
        "provision": [
            {
                "type": "deny",
                "securityLabel": [label("PSY")],
                "provision": [{"type": "permit", "actor": actor("Practitioner/dr1")}],
            }
        ],
    }
)
SENSITIVE = [
    (consent({"type": "permit"}), "Practitioner/dr1", labelled("PSY"), False),
    (consent({"type": "permit"}), "Practitioner/dr1", labelled("R"), True),
    (consent({"type": "permit", "securityLabel": [label("PSY")]}), "Practitioner/dr1", labelled("PSY"), True),
    (consent({"type": "permit", "securityLabel": [label("SPI")]}), "Practitioner/dr1", labelled("PSY"), True),
    (
        consent({"type": "permit", "securityLabel": [label("SUD")]}),
        "Practitioner/dr1",
        labelled("OPIOIDUD"),
        True,
    ),
    (
        consent({"type": "permit", "securityLabel": [label("PSY")]}),
        "Practitioner/dr1",
        labelled("PSY", "HIV"),
        False,
    ),
    (
        consent({"type": "permit", "securityLabel": [label("PSY"), label("HIV")]}),
        "Practitioner/dr1",
        labelled("PSY", "HIV"),
        True,
    ),
    (consent({"type": "permit", "securityLabel": [label("R")]}), "Practitioner/dr1", labelled("PSY"), False),
    (PSY_TO_DR1, "Practitioner/dr1", labelled("PSY"), True),
    (PSY_TO_DR1, "Practitioner/dr2", labelled("PSY"), False),
    (PSY_TO_DR1, "Practitioner/dr2", observation(), True),
    (DENY_PSY_EXCEPT_DR1, "Practitioner/dr1", labelled("PSY"), True),
    (DENY_PSY_EXCEPT_DR1, "Practitioner/dr2", labelled("PSY"), False),
]


@pytest.mark.parametrize(("directive", "who", "resource", "permitted"), SENSITIVE)
def test_sensitive_data_need_an_explicit_permit(
    directive: ConsentDirective, who: str, resource: dict[str, Any], permitted: bool
) -> None:
    verdict = run([directive], ctx(who), resource, implicit=ImplicitPolicy.ALL_NORMAL)
    assert verdict.permitted is permitted
    assert verdict.basis == "consent"


def test_withheld_sensitive_data_say_why() -> None:
    verdict = run([consent({"type": "permit"})], resource=labelled("HIV"))
    assert any("sensitive data withheld" in reason for reason in verdict.reasons)
    implicit = run([], resource=labelled("HIV"), implicit=ImplicitPolicy.ALL_NORMAL)
    assert any("implicit policy never releases" in reason for reason in implicit.reasons)


# --- break-glass --------------------------------------------------------------------------------------------

# Rule: BTG (and ETREAT/ERTREAT) may override a denial — only when the caller, from its configuration, says
# the requester is eligible, and with a justification when one is required.
ELIGIBLE = BreakGlass(eligible=True, justification="unconscious in ED", justification_required=True)
BREAK_GLASS = [
    (("BTG",), ELIGIBLE, True),
    (("ETREAT",), ELIGIBLE, True),
    (("ERTREAT",), ELIGIBLE, True),
    (("TREAT", "BTG"), ELIGIBLE, True),
    (("TREAT",), ELIGIBLE, False),
    (("HPAYMT",), ELIGIBLE, False),
    (("BTG",), None, False),
    (("BTG",), BreakGlass(eligible=False, justification="please", justification_required=False), False),
    (("BTG",), BreakGlass(eligible=True, justification=None, justification_required=True), False),
    (("BTG",), BreakGlass(eligible=True, justification="   ", justification_required=True), False),
    (("BTG",), BreakGlass(eligible=True, justification=None, justification_required=False), True),
]
DENIALS = [
    pytest.param([consent({"type": "deny"})], observation(), ImplicitPolicy.ALL_NORMAL, id="consent-deny"),
    pytest.param([], observation(), ImplicitPolicy.DENY, id="implicit-deny"),
    pytest.param([], observation(), ImplicitPolicy.BREAK_GLASS_ONLY, id="break-glass-only"),
    pytest.param([consent({"type": "permit"})], labelled("PSY"), ImplicitPolicy.ALL_NORMAL, id="sensitive"),
    pytest.param([], labelled("V"), ImplicitPolicy.ALL_NORMAL, id="implicit-restricted"),
]


@pytest.mark.parametrize(("consents", "resource", "implicit"), DENIALS)
@pytest.mark.parametrize(("purposes", "break_glass", "overridden"), BREAK_GLASS)
def test_break_glass(
    consents: list[ConsentDirective],
    resource: dict[str, Any],
    implicit: ImplicitPolicy,
    purposes: tuple[str, ...],
    break_glass: BreakGlass | None,
    overridden: bool,
) -> None:
    verdict = run(consents, ctx(purposes=purposes), resource, implicit=implicit, break_glass=break_glass)
    assert verdict.permitted is overridden
    if overridden:
        assert verdict.basis == "break-glass"
        assert "BREAK-GLASS" in verdict.reasons[-1]
    else:
        assert verdict.basis != "break-glass"


def test_break_glass_records_what_it_overrode() -> None:
    by_consent = run([consent({"type": "deny"})], ctx(purposes=("BTG",)), break_glass=ELIGIBLE)
    assert by_consent.consent_ids == ("c1",)
    assert "the patient's consent" in by_consent.reasons[-1]
    assert "justification given" in by_consent.reasons[-1]
    by_implicit = run([], ctx(purposes=("BTG",)), break_glass=ELIGIBLE)
    assert "the implicit policy" in by_implicit.reasons[-1]


def test_break_glass_leaves_permits_alone() -> None:
    verdict = run([consent({"type": "permit"})], ctx(purposes=("BTG",)), break_glass=ELIGIBLE)
    assert (verdict.permitted, verdict.basis) == (True, "consent")


def test_refused_break_glass_says_why() -> None:
    refused = run([], ctx(purposes=("BTG",)), break_glass=BreakGlass(eligible=False))
    assert "not eligible" in refused.reasons[-1]
    unjustified = run([], ctx(purposes=("BTG",)), break_glass=BreakGlass(eligible=True))
    assert "justification" in unjustified.reasons[-1]


# --- audit reasons and inputs -------------------------------------------------------------------------------


def test_reasons_carry_no_identifiers_labels_or_justification() -> None:
    directive = consent({"type": "deny", "actor": actor("Practitioner/dr1")}, "secret-consent-id")
    verdict = run(
        [directive], ctx("Practitioner/dr1", purposes=("BTG",)), labelled("HIV"), break_glass=ELIGIBLE
    )
    text = " ".join(verdict.reasons)
    for secret in ("secret-consent-id", "p1", "o1", "dr1", "HIV", "unconscious"):
        assert secret not in text
    assert verdict.consent_ids == ("secret-consent-id",)


def test_the_request_time_must_be_aware() -> None:
    with pytest.raises(ValueError, match="aware"):
        AccessContext(actors=frozenset(), purposes=frozenset(), when=datetime(2025, 1, 1))

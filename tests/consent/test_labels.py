"""DS4P security labels: confidentiality order and high-water mark, sensitivity subsumption, label reading.

Spec (consent contract, "Evaluation semantics" and "Security labels"): confidentiality codes are ordered U, L,
M, N, R, V (lowest to highest) and a rule about a level covers data labelled that level or lower; sensitivity
codes use subsumption — BH, MH, PSY, PSYTHPN and SUD under SPI; ETHUD and OPIOIDUD under SUD.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consent.coding import Coding
from consent.labels import (
    ACT_CODE_SYSTEM,
    CONFIDENTIALITY_ORDER,
    CONFIDENTIALITY_SYSTEM,
    SENSITIVE_CODES,
    confidentiality,
    covered_sensitivity,
    effective_confidentiality,
    is_sensitive,
    label_matches,
    resource_labels,
    sensitivity_codes,
    subsumed_codes,
)

CONF = CONFIDENTIALITY_SYSTEM
ACT = ACT_CODE_SYSTEM
SPEC_ORDER = ["U", "L", "M", "N", "R", "V"]  # the order as the spec states it


def conf(code: str) -> Coding:
    return Coding(CONF, code)


def sens(code: str) -> Coding:
    return Coding(ACT, code)


def labels(*codings: Coding) -> frozenset[Coding]:
    return frozenset(codings)


def test_confidentiality_order_is_the_spec_order() -> None:
    assert list(CONFIDENTIALITY_ORDER) == SPEC_ORDER


def test_sensitivity_codes_are_the_spec_codes() -> None:
    flat = {"ETH", "GDIS", "HIV", "MST", "SCA", "SDV", "SEX", "STD", "TBOO", "PREGNANT", "SPI"}
    assert flat | {"BH", "MH", "PSY", "PSYTHPN", "SUD", "ETHUD", "OPIOIDUD"} == SENSITIVE_CODES


# Rule: "a rule about R covers data labelled R or lower" — every (rule level, data level) pair.
HIGH_WATER = [
    pytest.param(rule, data, SPEC_ORDER.index(data) <= SPEC_ORDER.index(rule), id=f"rule-{rule}-data-{data}")
    for rule in SPEC_ORDER
    for data in SPEC_ORDER
]


@pytest.mark.parametrize(("rule", "data", "covered"), HIGH_WATER)
def test_confidentiality_is_a_high_water_mark(rule: str, data: str, covered: bool) -> None:
    assert label_matches(conf(rule), labels(conf(data))) is covered


# Rule: high-water mark, spelt out for the cases people get wrong.
HIGH_WATER_SPOT_CHECKS = [
    ("R", conf("R"), True),
    ("R", conf("N"), True),
    ("R", conf("U"), True),
    ("R", conf("V"), False),
    ("N", conf("R"), False),
    ("U", conf("L"), False),
    ("V", conf("V"), True),
]


@pytest.mark.parametrize(("rule", "label", "covered"), HIGH_WATER_SPOT_CHECKS)
def test_high_water_spot_checks(rule: str, label: Coding, covered: bool) -> None:
    assert label_matches(conf(rule), labels(label)) is covered


# Judgement call: data without a confidentiality label are read as N; several labels are read at the highest.
UNLABELLED_AND_SEVERAL = [
    ("N", labels(), True),
    ("M", labels(), False),
    ("R", labels(sens("HIV")), True),
    ("N", labels(conf("N"), conf("V")), False),
    ("V", labels(conf("N"), conf("V")), True),
]


@pytest.mark.parametrize(("rule", "data", "covered"), UNLABELLED_AND_SEVERAL)
def test_unlabelled_data_are_normal_and_the_highest_label_counts(
    rule: str, data: frozenset[Coding], covered: bool
) -> None:
    assert label_matches(conf(rule), data) is covered


# Rule: sensitivity subsumption — ETHUD and OPIOIDUD under SUD, SUD/PSY/... under SPI; flat codes alone.
SUBSUMPTION = [
    ("SPI", "SPI", True),
    ("SPI", "BH", True),
    ("SPI", "MH", True),
    ("SPI", "PSY", True),
    ("SPI", "PSYTHPN", True),
    ("SPI", "SUD", True),
    ("SPI", "ETHUD", True),
    ("SPI", "OPIOIDUD", True),
    ("SUD", "SUD", True),
    ("SUD", "ETHUD", True),
    ("SUD", "OPIOIDUD", True),
    ("SUD", "PSY", False),
    ("SUD", "SPI", False),
    ("ETHUD", "ETHUD", True),
    ("ETHUD", "SUD", False),
    ("ETHUD", "OPIOIDUD", False),
    ("PSY", "PSY", True),
    ("PSY", "SPI", False),
    ("PSY", "PSYTHPN", False),
    ("SPI", "HIV", False),
    ("HIV", "HIV", True),
    ("HIV", "STD", False),
    ("ETH", "ETHUD", False),
    ("PREGNANT", "PREGNANT", True),
]


@pytest.mark.parametrize(("rule", "data", "covered"), SUBSUMPTION)
def test_sensitivity_subsumption(rule: str, data: str, covered: bool) -> None:
    assert label_matches(sens(rule), labels(sens(data))) is covered
    assert (data in subsumed_codes(rule)) is covered


def test_a_sensitivity_rule_ignores_confidentiality_and_vice_versa() -> None:
    assert not label_matches(sens("PSY"), labels(conf("R")))
    assert label_matches(conf("V"), labels(sens("PSY")))  # unlabelled confidentiality: N <= V


# Rule: labels of other systems match exactly (system and code).
OTHER_SYSTEMS = [
    (Coding("urn:example:labels", "VIP"), labels(Coding("urn:example:labels", "VIP")), True),
    (Coding("urn:example:labels", "VIP"), labels(Coding("urn:example:other", "VIP")), False),
    (Coding("urn:example:labels", "VIP"), labels(Coding("urn:example:labels", "vip")), False),
    (Coding("http://terminology.hl7.org/CodeSystem/v3-ObligationPolicy", "NODSCLCD"), labels(), False),
]


@pytest.mark.parametrize(("rule", "data", "covered"), OTHER_SYSTEMS)
def test_other_systems_match_exactly(rule: Coding, data: frozenset[Coding], covered: bool) -> None:
    assert label_matches(rule, data) is covered


def test_resource_labels_read_meta_security() -> None:
    resource = {
        "resourceType": "Observation",
        "meta": {
            "security": [
                {"system": CONF, "code": "R"},
                {"system": ACT, "code": "HIV", "display": "HIV/AIDS information"},
                {"system": "urn:example:labels", "code": "VIP"},
                {"system": ACT},  # no code: skipped
                "garbage",
            ]
        },
    }
    assert resource_labels(resource) == labels(conf("R"), sens("HIV"), Coding("urn:example:labels", "VIP"))


@pytest.mark.parametrize(
    "resource",
    [{}, {"meta": {}}, {"meta": {"security": []}}, {"meta": "x"}, {"meta": {"security": "x"}}],
    ids=["no-meta", "no-security", "empty", "meta-not-object", "security-not-list"],
)
def test_resources_without_labels(resource: dict[str, object]) -> None:
    assert resource_labels(resource) == frozenset()


# Judgement call: OID / older URL spellings and system-less DS4P codes are read as the DS4P code.
ALIASES = [
    ({"system": "urn:oid:2.16.840.1.113883.5.25", "code": "V"}, conf("V")),
    ({"system": "http://hl7.org/fhir/v3/Confidentiality", "code": "R"}, conf("R")),
    ({"system": "urn:oid:2.16.840.1.113883.5.4", "code": "PSY"}, sens("PSY")),
    ({"system": "http://hl7.org/fhir/v3/ActCode", "code": "SUD"}, sens("SUD")),
    ({"code": "HIV"}, sens("HIV")),
    ({"code": "R"}, conf("R")),
    ({"code": "VIP"}, Coding("", "VIP")),
]


@pytest.mark.parametrize(("security", "label"), ALIASES)
def test_label_systems_are_normalised(security: dict[str, str], label: Coding) -> None:
    assert resource_labels({"meta": {"security": [security]}}) == labels(label)


def test_rule_labels_are_normalised_too() -> None:
    assert label_matches(Coding("urn:oid:2.16.840.1.113883.5.4", "SUD"), labels(sens("ETHUD")))
    assert label_matches(Coding("", "SPI"), labels(sens("OPIOIDUD")))


CONFIDENTIALITY_OF = [
    (labels(), None, "N"),
    (labels(conf("R")), "R", "R"),
    (labels(conf("L"), conf("V"), conf("N")), "V", "V"),
    (labels(Coding("urn:example", "V")), None, "N"),
    (labels(sens("PSY")), None, "N"),
]


@pytest.mark.parametrize(("data", "highest", "effective"), CONFIDENTIALITY_OF)
def test_confidentiality_is_the_highest(data: frozenset[Coding], highest: str | None, effective: str) -> None:
    assert confidentiality(data) == highest
    assert effective_confidentiality(data) == effective


SENSITIVITY = [
    (labels(), False),
    (labels(conf("V")), False),
    (labels(sens("PSY")), True),
    (labels(sens("OPIOIDUD")), True),
    (labels(sens("SPI")), True),
    (labels(Coding("urn:example", "HIV")), False),
    (labels(sens("ETH"), conf("N")), True),
]


@pytest.mark.parametrize(("data", "sensitive"), SENSITIVITY)
def test_is_sensitive(data: frozenset[Coding], sensitive: bool) -> None:
    assert is_sensitive(data) is sensitive
    assert bool(sensitivity_codes(data)) is sensitive


def test_covered_sensitivity_unions_the_subsumed_codes() -> None:
    assert covered_sensitivity([sens("SUD"), sens("HIV"), conf("R")]) == {"SUD", "ETHUD", "OPIOIDUD", "HIV"}
    assert covered_sensitivity([]) == frozenset()


levels = st.sampled_from(SPEC_ORDER)


@given(lower=levels, higher=levels, data=levels)
def test_a_higher_rule_covers_whatever_a_lower_one_covers(lower: str, higher: str, data: str) -> None:
    if SPEC_ORDER.index(lower) <= SPEC_ORDER.index(higher) and label_matches(conf(lower), labels(conf(data))):
        assert label_matches(conf(higher), labels(conf(data)))


@given(rule=st.sampled_from(sorted(SENSITIVE_CODES)), data=st.sampled_from(sorted(SENSITIVE_CODES)))
def test_subsumption_is_reflexive_and_transitive(rule: str, data: str) -> None:
    assert rule in subsumed_codes(rule)
    if data in subsumed_codes(rule):
        assert subsumed_codes(data) <= subsumed_codes(rule)

"""The masking walk: first match wins, keep protects, nested resources, pruning, labels, narrative, absent."""

from __future__ import annotations

import copy
from datetime import date
from typing import Any

import orjson
import pytest

from masking import MaskingError, MaskStats, ProfileError, compile_profile, parse_profile
from masking.compiler import CompiledProfile
from masking.engine import DATA_ABSENT_REASON_URL

HASH_KEY = {"hash": {"value": "123"}}


def profile(rules: list[dict[str, Any]], **extra: Any) -> CompiledProfile:
    data: dict[str, Any] = {"name": "t", "rules": rules, "keys": HASH_KEY, **extra}
    data.setdefault("parameters", {"crypto_hash_key": "hash"})
    return compile_profile(parse_profile(data))


def masked(compiled: CompiledProfile, resource: dict[str, Any]) -> dict[str, Any]:
    result = compiled.mask(copy.deepcopy(resource), today=date(2026, 1, 1))
    assert result is not None
    return result


def strip_meta(resource: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in resource.items() if key != "meta"}


PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Jane Roe</div>'},
    "name": [{"family": "Roe", "given": ["Jane", "Q"]}],
    "telecom": [{"system": "phone", "value": "555-0100"}],
    "gender": "female",
    "birthDate": "1970-03-04",
    "address": [{"line": ["1 Main St"], "city": "Springfield", "state": "MA", "postalCode": "01101"}],
    "managingOrganization": {"reference": "Organization/o1", "display": "Clinic"},
}


def test_first_match_wins_and_keep_protects_its_subtree() -> None:
    compiled = profile(
        [
            {"path": "Patient.name.family", "method": "keep"},
            {"path": "nodesByType('HumanName')", "method": "redact"},
            {"path": "Patient.address.state", "method": "keep"},
            {"path": "nodesByType('Address')", "method": "redact"},
        ]
    )
    result = masked(compiled, PATIENT)
    assert result["name"] == [{"family": "Roe"}]
    assert result["address"] == [{"state": "MA"}]
    assert result["telecom"] == PATIENT["telecom"]


def test_earlier_rule_beats_a_later_deeper_one() -> None:
    compiled = profile(
        [{"path": "Patient.name", "method": "redact"}, {"path": "Patient.name.family", "method": "keep"}]
    )
    assert "name" not in masked(compiled, PATIENT)


def test_empty_elements_are_pruned() -> None:
    compiled = profile([{"path": "nodesByName('family')", "method": "redact"}])
    resource = {"resourceType": "Patient", "name": [{"family": "Roe"}], "gender": "male"}
    assert strip_meta(masked(compiled, resource)) == {"resourceType": "Patient", "gender": "male"}


def test_untouched_resource_has_no_labels_and_keeps_its_narrative() -> None:
    compiled = profile([{"path": "Observation.status", "method": "redact"}])
    assert masked(compiled, PATIENT) == PATIENT


def test_changed_resource_gets_labels_and_loses_its_narrative_in_native_mode() -> None:
    compiled = profile(
        [{"path": "nodesByType('HumanName')", "method": "redact"}], resource_labels=["ANONYED"]
    )
    result = masked(compiled, PATIENT)
    codes = [coding["code"] for coding in result["meta"]["security"]]
    assert codes == ["REDACTED", "ANONYED"]
    assert "text" not in result


def test_compatibility_mode_keeps_narrative_unless_asked() -> None:
    compiled = profile([{"path": "nodesByType('HumanName')", "method": "redact"}], mode="compatibility")
    assert masked(compiled, PATIENT)["text"] == PATIENT["text"]


def test_required_element_masked_gets_data_absent_reason_in_native_mode() -> None:
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    compiled = profile([{"path": "Observation.status", "method": "redact"}])
    result = masked(compiled, observation)
    assert "status" not in result
    assert result["_status"]["extension"][0] == {"url": DATA_ABSENT_REASON_URL, "valueCode": "masked"}
    compat = profile([{"path": "Observation.status", "method": "redact"}], mode="compatibility")
    assert "_status" not in masked(compat, observation)


def test_whole_element_redacted_leaves_no_absent_markers_inside() -> None:
    compiled = profile([{"path": "nodesByType('Extension')", "method": "redact"}])
    resource = {"resourceType": "Patient", "extension": [{"url": "http://x", "valueString": "secret"}]}
    assert "extension" not in masked(compiled, resource)


def test_contained_and_entry_resources_use_their_own_type_rules() -> None:
    compiled = profile(
        [{"path": "Patient.gender", "method": "redact"}, {"path": "Resource.id", "method": "redact"}]
    )
    observation = {"resourceType": "Observation", "id": "o1", "status": "final", "contained": [PATIENT]}
    bundle = {"resourceType": "Bundle", "id": "b", "type": "collection", "entry": [{"resource": observation}]}
    result = masked(compiled, bundle)
    inner = result["entry"][0]["resource"]
    assert "id" not in result
    assert "id" not in inner
    assert "gender" not in inner["contained"][0]
    assert "id" not in inner["contained"][0]
    assert inner["status"] == "final"


def test_type_anchors_do_not_cross_into_nested_resources() -> None:
    compiled = profile([{"path": "Observation.contained", "method": "redact"}])
    observation = {"resourceType": "Observation", "status": "final", "contained": [PATIENT]}
    assert masked(compiled, observation)["contained"][0]["name"] == PATIENT["name"]


def test_type_anchor_matches_inside_extensions() -> None:
    compiled = profile([{"path": "nodesByType('Address')", "method": "redact"}])
    resource = {
        "resourceType": "Patient",
        "extension": [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                "valueAddress": {"city": "X"},
            }
        ],
    }
    assert "extension" not in masked(compiled, resource)


def test_fhirpath_rule_masks_only_the_selected_list_items() -> None:
    url = "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName"
    compiled = profile([{"path": f"Patient.extension.where(url='{url}')", "method": "redact"}])
    keep = {"url": "http://example.org/other", "valueString": "kept"}
    resource = {"resourceType": "Patient", "extension": [{"url": url, "valueString": "Smith"}, keep]}
    assert masked(compiled, resource)["extension"] == [keep]


def test_fhirpath_rule_on_a_choice_element() -> None:
    compiled = profile([{"path": "Observation.value as Quantity", "method": "redact"}])
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "valueQuantity": {"value": 5, "unit": "kg"},
    }
    assert "valueQuantity" not in masked(compiled, observation)


def test_primitive_extension_sibling_goes_with_a_redacted_primitive() -> None:
    compiled = profile([{"path": "Patient.birthDate", "method": "redact"}])
    resource = {
        "resourceType": "Patient",
        "birthDate": "1970-03-04",
        "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime"}]},
    }
    result = masked(compiled, resource)
    assert "birthDate" not in result
    assert "_birthDate" not in result


def test_references_and_ids_hash_consistently() -> None:
    compiled = profile(
        [
            {"path": "Resource.id", "method": "cryptoHash"},
            {"path": "nodesByType('Reference').reference", "method": "cryptoHash"},
        ]
    )
    patient = masked(compiled, {"resourceType": "Patient", "id": "abc"})
    observation = masked(
        compiled, {"resourceType": "Observation", "status": "final", "subject": {"reference": "Patient/abc"}}
    )
    assert observation["subject"]["reference"] == f"Patient/{patient['id']}"
    assert patient["id"] == "8f16771f9f8851b26f4d460fa17de93e2711c7e51337cb8a608a0f81e1c1b6ae"


def test_substitute_on_a_complex_element_keeps_children_protected_by_earlier_rules() -> None:
    compiled = profile(
        [
            {"path": "Patient.name.family", "method": "keep"},
            {"path": "Patient.name", "method": "substitute", "replaceWith": {"text": "anonymous"}},
        ]
    )
    assert masked(compiled, PATIENT)["name"] == [{"text": "anonymous", "family": "Roe"}]


def test_stats_count_resources_and_methods() -> None:
    compiled = profile([{"path": "nodesByType('HumanName')", "method": "redact"}])
    stats = MaskStats()
    compiled.mask(copy.deepcopy(PATIENT), stats=stats)
    assert (stats.resources, stats.changed, stats.by_method["redact"]) == (1, 1, 3)


def test_unknown_resource_type_is_refused_not_passed() -> None:
    compiled = profile([{"path": "Resource.id", "method": "redact"}])
    with pytest.raises(MaskingError):
        compiled.mask({"resourceType": "MedicinalProduct", "id": "x"})
    with pytest.raises(MaskingError):
        compiled.mask({"id": "x"})


def test_skip_mode_drops_what_cannot_be_masked() -> None:
    compiled = profile([{"path": "Resource.id", "method": "redact"}], processing_errors="skip")
    stats = MaskStats()
    assert compiled.mask({"resourceType": "NotAType"}, stats=stats) is None
    assert stats.dropped == 1
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": {"resourceType": "Nope"}}],
    }
    assert compiled.mask(bundle) == {"resourceType": "Bundle", "type": "collection"}


def test_a_primitive_where_an_object_belongs_is_a_masking_error() -> None:
    compiled = profile(
        [
            {"path": "nodesByType('HumanName')", "method": "redact"},
            {"path": "Patient.gender", "method": "redact"},
        ]
    )
    with pytest.raises(MaskingError):
        compiled.mask({"resourceType": "Patient", "gender": {"nested": "x"}})


@pytest.mark.parametrize(
    ("rules", "where"),
    [
        ([{"path": "Patient.name", "method": "scramble"}], "rules.0.method"),
        ([{"path": "Patient.nmae", "method": "redact"}], "rules.0.path"),
        ([{"path": "nodesByType('Humanname')", "method": "redact"}], "rules.0.path"),
        ([{"path": "name.where(", "method": "redact"}], "rules.0.path"),
        ([{"path": "Patient.name.where(", "method": "redact"}], "rules.0.path"),
        ([{"path": "Patient.name", "method": "redact", "bogus": 1}], "rules.0"),
    ],
)
def test_every_bad_rule_is_a_compile_problem(rules: list[dict[str, Any]], where: str) -> None:
    with pytest.raises(ProfileError) as caught:
        profile(rules)
    assert [path for path, _ in caught.value.problems] == [where]


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(ProfileError) as caught:
        profile(
            [{"path": "Patient.nmae", "method": "redact"}, {"path": "Patient.name", "method": "nope"}],
            parameters={"crypto_hash_key": "missing"},
        )
    paths = {path for path, _ in caught.value.problems}
    assert paths == {"parameters.crypto_hash_key", "rules.0.path", "rules.1.method"}


def test_fhirpath_rule_below_elements_no_fast_rule_reaches() -> None:
    compiled = profile([{"path": "Patient.name.where(use='official').family", "method": "redact"}])
    resource = {"resourceType": "Patient", "name": [{"use": "official", "family": "Roe"}, {"family": "Doe"}]}
    assert masked(compiled, resource)["name"] == [{"use": "official"}, {"family": "Doe"}]


def test_fhirpath_rule_for_every_resource() -> None:
    compiled = profile([{"path": "Resource.meta.where(source.exists()).source", "method": "redact"}])
    resource = {
        "resourceType": "Observation",
        "status": "final",
        "meta": {"source": "#abc", "versionId": "1"},
    }
    assert masked(compiled, resource)["meta"]["versionId"] == "1"
    assert "source" not in masked(compiled, resource)["meta"]


@pytest.mark.parametrize(
    ("path", "kept"),
    [
        ("Patient.extension.where(url = 'http://a').value", ["http://b", "http://c"]),
        ("Patient.extension.where(url != 'http://a')", ["http://a"]),
        ("Patient.extension.where(url.contains('//b')).value", ["http://a", "http://c"]),
        ("Patient.extension.where(url.startsWith('http://c').not())", ["http://c"]),
        ("Patient.extension.where(url.endsWith('a'))", ["http://b", "http://c"]),
        ("Patient.extension.value.where(contains('secret-b'))", ["http://a", "http://c"]),
    ],
)
def test_simple_where_steps_run_without_fhirpath(path: str, kept: list[str]) -> None:
    compiled = profile([{"path": path, "method": "redact"}])
    assert not compiled._fhirpath  # the fast selector handled it
    resource = {
        "resourceType": "Patient",
        "extension": [{"url": f"http://{name}", "valueString": f"secret-{name}"} for name in "abc"],
    }
    assert [ext["url"] for ext in masked(compiled, resource).get("extension", [])] == kept


def test_where_step_continues_into_the_passing_items() -> None:
    compiled = profile([{"path": "Patient.name.where(use = 'official').family", "method": "redact"}])
    resource = {"resourceType": "Patient", "name": [{"use": "official", "family": "Roe"}, {"family": "Doe"}]}
    assert masked(compiled, resource)["name"] == [{"use": "official"}, {"family": "Doe"}]


def test_warming_builds_every_plan_up_front() -> None:
    compiled = profile([{"path": "nodesByType('HumanName')", "method": "redact"}])
    nodes = compiled.warm()
    assert nodes > 100
    assert compiled.warm() == nodes
    assert "name" not in masked(compiled, PATIENT)


def test_cached_results_equal_fresh_ones_and_count_the_same() -> None:
    rules = [
        {"path": "Resource.id", "method": "cryptoHash"},
        {"path": "nodesByType('Reference').reference", "method": "cryptoHash"},
        {"path": "nodesByType('HumanName')", "method": "redact"},
    ]
    fresh, cached = profile(rules), profile(rules)
    assert cached.enable_cache(100)
    observation = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "subject": {"reference": "Patient/p1"},
    }
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": PATIENT}, {"resource": observation}],
    }
    body = orjson.dumps(bundle)
    expected = fresh.mask_json(body)
    for _ in range(2):
        stats = MaskStats()
        assert cached.mask_json(body, stats=stats) == expected
        assert (stats.resources, stats.changed) == (3, 2)  # the Bundle itself has nothing to mask
    assert len(cached._cache or ()) == 3  # the two entries and the entry array; never the whole Bundle
    assert cached.mask_json(orjson.dumps(PATIENT)) == fresh.mask_json(orjson.dumps(PATIENT))


def test_profiles_with_random_methods_are_not_cached() -> None:
    compiled = profile([{"path": "nodesByType('Quantity').value", "method": "perturb", "span": 1}])
    assert not compiled.deterministic
    assert not compiled.enable_cache(100)


def test_mask_json_refuses_what_is_not_a_resource() -> None:
    compiled = profile([{"path": "Resource.id", "method": "redact"}])
    for body in (b"[1]", b"not json", b'{"resourceType": "Nope"}'):
        with pytest.raises(MaskingError):
            compiled.mask_json(body)


def test_a_where_test_right_after_a_type_anchor() -> None:
    compiled = profile(
        [
            {
                "path": "nodesByType('Reference').where(reference.startsWith('Patient/')).reference",
                "method": "redact",
            },
            {"path": "Resource.id", "method": "keep"},
        ]
    )
    assert not compiled._fhirpath
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "subject": {"reference": "Patient/p1", "display": "Jane"},
        "performer": [{"reference": "Practitioner/d1"}],
    }
    result = masked(compiled, observation)
    assert result["subject"] == {"display": "Jane"}
    assert result["performer"] == [{"reference": "Practitioner/d1"}]


def test_the_example_profiles_compile() -> None:
    from pathlib import Path

    from masking import load_profile

    folder = Path(__file__).resolve().parents[2] / "examples" / "masking"
    keys = {"hash": b"h", "date-shift": b"d", "pseudonym-2026": b"p" * 32}
    for path in sorted(folder.glob("*.yaml")):
        compiled = compile_profile(load_profile(path), keys)
        assert masked(compiled, PATIENT)["id"] != PATIENT["id"]

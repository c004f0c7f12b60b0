"""Importing Microsoft FHIR anonymizer configurations as compatibility-mode profiles.

Spec (masking.md): config keys ``fhirVersion``, ``processingErrors`` (raise | skip), ``fhirPathRules``,
``parameters`` (``dateShiftKey``, ``dateShiftScope`` resource|file|folder, ``dateShiftFixedOffsetInDays``,
``cryptoHashKey``, ``encryptKey``, ``enablePartial{Ages,Dates,ZipCodes}ForRedact``,
``restrictedZipCodeTabulationAreas``). The import keeps rule order and settings, moves literal keys into the
``keys`` section (with a warning), refuses ``processingErrors: keep`` (fail-open) and reports unknown methods
without dropping them, so compiling fails loudly.
"""

from __future__ import annotations

import copy
import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from masking.anonymizer_import import AnonymizerImportError, dump_profile_yaml, import_anonymizer_config
from masking.compiler import compile_profile
from masking.profile import ProfileError, parse_profile

DATA = Path(__file__).parent / "data"
MS_14_ZIP_AREAS = [
    "036",
    "059",
    "102",
    "203",
    "205",
    "369",
    "556",
    "692",
    "821",
    "823",
    "878",
    "879",
    "884",
    "893",
]


def ms_config() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DATA / "ms-config.json").read_text(encoding="utf-8"))
    return loaded


EXPECTED: dict[str, Any] = {
    "name": "ms-sample",
    "description": (
        "Imported from a Microsoft FHIR anonymizer configuration (23 rules).\n"
        "Compatibility mode: the output is the anonymizer's, rule for rule (date shift per resource,\n"
        "partial redaction, labels as the anonymizer writes them).\n"
    ),
    "mode": "compatibility",
    "processing_errors": "raise",
    "parameters": {
        "date_shift": {"scope": "resource", "key": "date-shift"},
        "crypto_hash_key": "hash",
        "encrypt_key": "encrypt",
        "partial_ages": True,
        "partial_dates": True,
        "partial_zip_codes": True,
        "restricted_zip_codes": MS_14_ZIP_AREAS,
    },
    "keys": {
        "hash": {"value": "fhirwall-example-hash-key"},
        "date-shift": {"value": "fhirwall-example-date-key"},
        "encrypt": {"value": "0123456789abcdef0123456789abcdef"},
    },
    "rules": [
        {"path": "Resource.id", "method": "cryptoHash"},
        {"path": "nodesByType('Reference').reference", "method": "cryptoHash"},
        {"path": "Organization.identifier", "method": "keep"},
        {
            "path": "Patient.identifier.where(system = 'http://hl7.org/fhir/sid/us-ssn').value",
            "method": "encrypt",
        },
        {"path": "nodesByType('Identifier').value", "method": "cryptoHash"},
        {"path": "nodesByType('HumanName')", "method": "redact"},
        {
            "path": "Patient.extension.where(url = 'http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName')",
            "method": "redact",
        },
        {"path": "nodesByType('Address').state", "method": "keep"},
        {"path": "nodesByType('Address').country", "method": "keep"},
        {"path": "nodesByName('postalCode')", "method": "redact"},
        {"path": "nodesByType('Address')", "method": "redact"},
        {"path": "nodesByType('ContactPoint')", "method": "redact"},
        {"path": "Patient.birthDate", "method": "redact"},
        {"path": "nodesByType('date')", "method": "dateShift"},
        {"path": "nodesByType('dateTime')", "method": "dateShift"},
        {"path": "nodesByType('instant')", "method": "dateShift"},
        {
            "path": "Condition.onset.ofType(Age).value",
            "method": "generalize",
            "cases": {
                "$this < 18": "0",
                "$this >= 18 and $this < 65": "18",
                "$this >= 65 and $this <= 89": "65",
            },
            "otherValues": "redact",
        },
        {"path": "nodesByType('Age').value", "method": "redact"},
        {
            "path": "Observation.value",
            "method": "perturb",
            "span": 1,
            "rangeType": "proportional",
            "roundTo": 2,
        },
        {
            "path": "Observation.component.value",
            "method": "perturb",
            "span": 5,
            "rangeType": "fixed",
            "roundTo": 1,
        },
        {"path": "Organization.name", "method": "substitute", "replaceWith": "Example Health System"},
        {"path": "nodesByType('Attachment')", "method": "redact"},
        {"path": "Patient.communication", "method": "keep"},
    ],
}


def test_a_realistic_config_gives_the_expected_profile() -> None:
    profile, warnings = import_anonymizer_config(ms_config(), name="ms-sample")
    assert profile == EXPECTED
    assert list(profile) == [
        "name",
        "description",
        "mode",
        "processing_errors",
        "parameters",
        "keys",
        "rules",
    ]
    assert [rule["path"] for rule in profile["rules"]] == [
        rule["path"] for rule in ms_config()["fhirPathRules"]
    ]
    parse_profile(profile)
    assert len(warnings) == 4


def test_literal_keys_are_moved_with_a_warning_that_never_shows_them() -> None:
    _, warnings = import_anonymizer_config(ms_config(), name="ms-sample")
    moved = [warning for warning in warnings if "secret store" in warning]
    assert [warning.split(":")[0] for warning in moved] == [
        "parameters.cryptoHashKey",
        "parameters.dateShiftKey",
        "parameters.encryptKey",
    ]
    secrets = ms_config()["parameters"]
    for warning in warnings:
        for key in ("cryptoHashKey", "dateShiftKey", "encryptKey"):
            assert secrets[key] not in warning


def test_method_names_are_matched_without_case() -> None:
    _, warnings = import_anonymizer_config(ms_config(), name="ms-sample")
    assert "fhirPathRules[14].method: 'DateShift' written as 'dateShift'" in warnings


def test_the_imported_profile_compiles_and_masks_like_the_anonymizer() -> None:
    config = {
        "fhirVersion": "R4",
        "fhirPathRules": [
            {"path": "Resource.id", "method": "cryptoHash"},
            {"path": "nodesByType('Address').postalCode", "method": "redact"},
        ],
        "parameters": {
            "cryptoHashKey": "123",
            "enablePartialZipCodesForRedact": True,
            "restrictedZipCodeTabulationAreas": ["203", "556"],
        },
    }
    profile, _ = import_anonymizer_config(config, name="zip")
    compiled = compile_profile(parse_profile(profile))
    patient = {
        "resourceType": "Patient",
        "id": "abc",
        "address": [{"postalCode": "98028-1830"}, {"postalCode": "20301"}],
    }
    masked = compiled.mask(patient)
    assert masked is not None
    assert masked["id"] == "8f16771f9f8851b26f4d460fa17de93e2711c7e51337cb8a608a0f81e1c1b6ae"
    assert [address["postalCode"] for address in masked["address"]] == ["98000-0000", "00000"]


def test_the_realistic_config_compiles_with_its_inline_keys_and_masks() -> None:
    profile, _ = import_anonymizer_config(ms_config(), name="ms-sample")
    compiled = compile_profile(parse_profile(profile))
    assert compiled.profile.mode == "compatibility"
    onsets = []
    for age in (10, 40, 70, 95):
        condition = {"resourceType": "Condition", "id": "c1", "onsetAge": {"value": age, "unit": "a"}}
        masked = compiled.mask(condition, today=date(2024, 6, 1))
        assert masked is not None
        onsets.append(masked["onsetAge"].get("value"))
    assert onsets == [0, 18, 65, None]  # age bands; over 89 removed
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "birthDate": "1970-05-06",
        "address": [{"city": "Arlington", "state": "VA", "postalCode": "20301"}],
        "communication": [{"language": {"text": "English"}}],
    }
    masked = compiled.mask(patient, today=date(2024, 6, 1))
    assert masked is not None
    assert masked["birthDate"] == "1970"  # partial dates
    assert masked["address"] == [{"state": "VA", "postalCode": "00000"}]  # 203 is restricted
    assert masked["communication"] == [{"language": {"text": "English"}}]


@pytest.mark.parametrize("value", ["keep", "Keep"])
def test_processing_errors_keep_is_refused(value: str) -> None:
    config = ms_config()
    config["processingErrors"] = value
    with pytest.raises(AnonymizerImportError) as caught:
        import_anonymizer_config(config, name="ms-sample")
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith("processingErrors: keep is refused")
    assert "fail-open" in caught.value.problems[0]


@pytest.mark.parametrize(
    ("value", "expected"), [(None, "raise"), ("raise", "raise"), ("skip", "skip"), ("Skip", "skip")]
)
def test_processing_errors_raise_and_skip_carry_over(value: str | None, expected: str) -> None:
    config = ms_config()
    if value is None:
        del config["processingErrors"]
    else:
        config["processingErrors"] = value
    profile, _ = import_anonymizer_config(config, name="ms-sample")
    assert profile["processing_errors"] == expected


def test_the_restricted_zip_list_is_carried_over_as_written() -> None:
    profile, _ = import_anonymizer_config(ms_config(), name="ms-sample")
    assert profile["parameters"]["restricted_zip_codes"] == MS_14_ZIP_AREAS
    assert parse_profile(profile).parameters.restricted_zip_codes == MS_14_ZIP_AREAS


def test_no_restricted_zip_list_means_none_as_in_the_anonymizer_with_a_warning() -> None:
    config = ms_config()
    del config["parameters"]["restrictedZipCodeTabulationAreas"]
    profile, warnings = import_anonymizer_config(config, name="ms-sample")
    assert profile["parameters"]["restricted_zip_codes"] == []
    assert any(
        warning.startswith("parameters.restrictedZipCodeTabulationAreas: not set") for warning in warnings
    )


def test_a_bad_zip_area_is_refused() -> None:
    config = ms_config()
    config["parameters"]["restrictedZipCodeTabulationAreas"] = ["036", "59"]
    with pytest.raises(AnonymizerImportError) as caught:
        import_anonymizer_config(config, name="ms-sample")
    assert caught.value.problems == [
        "parameters.restricted_zip_codes: Value error, not 3-digit zip areas: 59"
    ]


def test_an_unknown_method_is_kept_and_reported_so_compiling_fails() -> None:
    config = ms_config()
    config["fhirPathRules"].insert(2, {"path": "Patient.gender", "method": "scramble"})
    profile, warnings = import_anonymizer_config(config, name="ms-sample")
    assert profile["rules"][2] == {"path": "Patient.gender", "method": "scramble"}
    assert any(
        warning.startswith("fhirPathRules[2].method: 'scramble' is not an anonymizer method")
        for warning in warnings
    )
    with pytest.raises(ProfileError) as caught:
        compile_profile(parse_profile(profile))
    assert ("rules.2.method", "unknown masking method 'scramble'") in [
        (path, message.split(";")[0]) for path, message in caught.value.problems
    ]


def test_a_path_fhirwall_cannot_select_is_reported() -> None:
    config = ms_config()
    path = "nodesByType('Identifier').where(system.exists() and value.exists()).value"
    config["fhirPathRules"].append({"path": path, "method": "redact"})
    profile, warnings = import_anonymizer_config(config, name="ms-sample")
    assert profile["rules"][-1] == {"path": path, "method": "redact"}
    assert any(
        warning.startswith("fhirPathRules[23].path:") and "descendants()" in warning for warning in warnings
    )


@pytest.mark.parametrize("version", ["Stu3", "R5", 4])
def test_other_fhir_versions_are_refused(version: Any) -> None:
    config = ms_config()
    config["fhirVersion"] = version
    with pytest.raises(AnonymizerImportError) as caught:
        import_anonymizer_config(config, name="ms-sample")
    assert caught.value.problems[0].startswith("fhirVersion:")


@pytest.mark.parametrize("version", ["R4", "r4", ""])
def test_r4_or_no_version_is_accepted(version: str) -> None:
    config = ms_config()
    config["fhirVersion"] = version
    import_anonymizer_config(config, name="ms-sample")


def test_a_missing_key_is_named_for_the_keyring() -> None:
    config = ms_config()
    config["parameters"]["cryptoHashKey"] = ""
    profile, warnings = import_anonymizer_config(config, name="ms-sample")
    assert profile["parameters"]["crypto_hash_key"] == "hash"
    assert "hash" not in profile["keys"]
    assert any(warning.startswith("parameters.cryptoHashKey: not set") for warning in warnings)
    with pytest.raises(ProfileError):
        compile_profile(parse_profile(profile))
    compile_profile(parse_profile(profile), {"hash": b"123"})


def test_a_key_no_rule_needs_is_not_carried_over() -> None:
    config = ms_config()
    config["fhirPathRules"] = [rule for rule in config["fhirPathRules"] if rule["method"] != "encrypt"]
    profile, warnings = import_anonymizer_config(config, name="ms-sample")
    assert "encrypt" not in profile["keys"]
    assert "encrypt_key" not in profile["parameters"]
    assert any(
        warning.startswith("parameters.encryptKey: no encrypt rule uses this key") for warning in warnings
    )


def test_a_fixed_offset_replaces_the_date_shift_key() -> None:
    config = ms_config()
    config["parameters"]["dateShiftFixedOffsetInDays"] = -7
    config["parameters"]["dateShiftScope"] = "Folder"
    profile, warnings = import_anonymizer_config(config, name="ms-sample")
    assert profile["parameters"]["date_shift"] == {"scope": "folder", "fixed_offset_days": -7}
    assert "date-shift" not in profile["keys"]
    assert any("dateShiftFixedOffsetInDays is set" in warning for warning in warnings)


def test_no_scope_means_the_anonymizer_default_resource() -> None:
    config = ms_config()
    del config["parameters"]["dateShiftScope"]
    profile, _ = import_anonymizer_config(config, name="ms-sample")
    assert profile["parameters"]["date_shift"]["scope"] == "resource"


def test_every_problem_is_reported_at_once() -> None:
    config = {
        "fhirVersion": "Stu3",
        "processingErrors": "ignore",
        "fhirPathRules": [{"path": "Patient.name"}, "redact", {"method": "keep"}],
        "parameters": {
            "dateShiftScope": "patient",
            "dateShiftFixedOffsetInDays": "3",
            "cryptoHashKey": 123,
            "enablePartialDatesForRedact": "yes",
            "restrictedZipCodeTabulationAreas": "036",
        },
    }
    with pytest.raises(AnonymizerImportError) as caught:
        import_anonymizer_config(config, name="broken")
    assert [problem.split(":")[0] for problem in caught.value.problems] == [
        "fhirVersion",
        "processingErrors",
        "fhirPathRules[0].method",
        "fhirPathRules[1]",
        "fhirPathRules[2].path",
        "parameters.dateShiftFixedOffsetInDays",
        "parameters.dateShiftScope",
        "parameters.cryptoHashKey",
        "parameters.enablePartialDatesForRedact",
        "parameters.restrictedZipCodeTabulationAreas",
    ]


def test_unknown_keys_are_ignored_with_a_warning() -> None:
    config = ms_config()
    config["comment"] = "from the MS sample"
    config["parameters"]["dateShiftRange"] = 30
    _, warnings = import_anonymizer_config(config, name="ms-sample")
    assert "comment: not an anonymizer configuration key; ignored" in warnings
    assert "parameters.dateShiftRange: not an anonymizer parameter; ignored" in warnings


def test_an_invalid_profile_name_is_reported() -> None:
    with pytest.raises(AnonymizerImportError) as caught:
        import_anonymizer_config(ms_config(), name="MS Sample")
    assert caught.value.problems[0].startswith("name:")


def test_the_input_is_not_modified() -> None:
    config = ms_config()
    before = copy.deepcopy(config)
    import_anonymizer_config(config, name="ms-sample")
    assert config == before


def test_the_yaml_dump_round_trips_in_rule_order() -> None:
    profile, warnings = import_anonymizer_config(ms_config(), name="ms-sample")
    text = dump_profile_yaml(profile, header=["Imported from ms-config.json", *warnings])
    assert yaml.safe_load(text) == profile
    assert text.startswith("# Imported from ms-config.json\n# fhirPathRules[14].method:")
    assert "description: |\n  Imported from" in text
    assert 'restricted_zip_codes: ["036", "059", "102",' in text
    assert "\nrules:\n  - path: Resource.id\n    method: cryptoHash\n" in text
    body = text[text.index("\nrules:") :]
    positions = [body.index(f"path: {rule['path']}\n") for rule in profile["rules"]]
    assert positions == sorted(positions)


def test_the_yaml_dump_loads_as_a_profile(tmp_path: Path) -> None:
    from masking.profile import load_profile

    profile, _ = import_anonymizer_config(ms_config(), name="ms-sample")
    target = tmp_path / "ms-sample.yaml"
    target.write_text(dump_profile_yaml(profile), encoding="utf-8")
    assert load_profile(target) == parse_profile(profile)

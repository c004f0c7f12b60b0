"""The built-in profiles: they load, every rule compiles, and each covers what it promises.

Safe Harbor (45 CFR 164.514(b)(2)(i)) items (A)-(R) and the limited data set's 16 direct identifiers
(164.514(e)(2)(i)-(xvi)) are checked as tables: item -> rules that must be present. A masked transaction
Bundle shaped like Synthea's output must come out without any of the original names, addresses, phone
numbers, identifier values, ids or dates.
"""

from __future__ import annotations

import base64
import copy
import gzip
import json
import os
import re
from datetime import date
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

import masking.methods  # noqa: F401  (registers the built-in methods)
from masking.builtin import builtin_profile_names, load_builtin_profile
from masking.compiler import compile_profile
from masking.methods.base import known_methods
from masking.profile import HHS_RESTRICTED_ZIP3, Profile, parse_profile, profile_schema_text
from masking.selectors import parse_selector

BUILTINS = ["limited-data-set", "minimum-necessary-payment", "minimum-necessary-research", "safe-harbor"]
KEYS = {"hash": b"h" * 32, "date-shift": b"d" * 32, "pseudonym": b"p" * 64}
TODAY = date(2025, 1, 1)
SYNTHEA = Path(
    os.environ.get("FHIRWALL_SYNTHEA_DIR") or Path(__file__).resolve().parents[2] / "examples/data/synthea-r4"
)

MOTHERS_MAIDEN_NAME = (
    "Patient.extension.where(url = 'http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName')"
)
IDS = ("cryptoHash", "encrypt")  # research pseudonymises ids reversibly, safe-harbor hashes them

# item -> (path, allowed methods) that must be in the profile
SAFE_HARBOR: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "A names": [
        ("nodesByType('HumanName')", ("redact",)),
        ("nodesByType('Reference').display", ("redact",)),
        (MOTHERS_MAIDEN_NAME, ("redact",)),
        ("FamilyMemberHistory.name", ("redact",)),
        ("Organization.name", ("redact",)),
    ],
    "B geography": [
        ("nodesByType('Address').state", ("keep",)),
        ("nodesByType('Address').country", ("keep",)),
        ("nodesByType('Address').postalCode", ("redact",)),
        ("nodesByType('Address')", ("redact",)),
        ("Location.position", ("redact",)),
    ],
    "C dates and ages": [
        ("nodesByType('date')", ("dateShift",)),
        ("nodesByType('dateTime')", ("dateShift",)),
        ("nodesByType('instant')", ("dateShift",)),
        ("nodesByType('Age').value", ("generalize",)),
    ],
    "D phone": [("nodesByType('ContactPoint')", ("redact",))],
    "E fax": [("nodesByType('ContactPoint')", ("redact",))],
    "F email": [("nodesByType('ContactPoint')", ("redact",))],
    "G SSN": [
        ("nodesByType('Identifier').value", ("cryptoHash",)),
        ("nodesByType('Identifier')", ("redact",)),
    ],
    "H medical record numbers": [("nodesByType('Identifier').value", ("cryptoHash",))],
    "I beneficiary numbers": [
        ("nodesByType('Identifier').value", ("cryptoHash",)),
        ("Coverage.subscriberId", ("cryptoHash",)),
        ("Coverage.dependent", ("redact",)),
    ],
    "J account numbers": [
        ("nodesByType('Identifier').value", ("cryptoHash",)),
        ("Account.name", ("redact",)),
        ("Claim.insurance.preAuthRef", ("cryptoHash",)),
    ],
    "K certificate/licence numbers": [("nodesByType('Identifier').value", ("cryptoHash",))],
    "L vehicle identifiers": [
        ("nodesByType('Identifier').value", ("cryptoHash",)),
        ("nodesByType('Annotation')", ("redact",)),
    ],
    "M device identifiers": [
        ("Device.udiCarrier", ("redact",)),
        ("Device.serialNumber", ("redact",)),
        ("Device.distinctIdentifier", ("redact",)),
    ],
    "N URLs": [
        ("nodesByType('ContactPoint')", ("redact",)),
        ("Endpoint.address", ("redact",)),
        ("Resource.meta.source", ("redact",)),
        ("Device.url", ("redact",)),
    ],
    "O IP addresses": [("AuditEvent.agent.network.address", ("redact",))],
    "P biometrics": [("nodesByType('Attachment')", ("redact",)), ("nodesByType('Signature')", ("redact",))],
    "Q photographs": [("nodesByType('Attachment')", ("redact",)), ("Binary.data", ("redact",))],
    "R other unique numbers": [
        ("Resource.id", IDS),
        ("nodesByType('Reference').reference", IDS),
        ("Bundle.entry.fullUrl", IDS),
        ("Bundle.entry.request.ifNoneExist", ("redact",)),
        ("nodesByType('Narrative')", ("redact",)),
        ("nodesByType('Annotation')", ("redact",)),
    ],
}

LIMITED_DATA_SET: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "i names": [
        ("nodesByType('HumanName')", ("redact",)),
        ("nodesByType('Reference').display", ("redact",)),
        (MOTHERS_MAIDEN_NAME, ("redact",)),
    ],
    "ii postal address": [
        ("nodesByType('Address').city", ("keep",)),
        ("nodesByType('Address').state", ("keep",)),
        ("nodesByType('Address').postalCode", ("keep",)),
        ("nodesByType('Address')", ("redact",)),
        ("Location.position", ("redact",)),
    ],
    "iii telephone": [("nodesByType('ContactPoint')", ("redact",))],
    "iv fax": [("nodesByType('ContactPoint')", ("redact",))],
    "v email": [("nodesByType('ContactPoint')", ("redact",))],
    "vi SSN": [("nodesByType('Identifier').value", ("cryptoHash",))],
    "vii medical record numbers": [
        ("nodesByType('Identifier').value", ("cryptoHash",)),
        ("Resource.id", ("cryptoHash",)),
    ],
    "viii beneficiary numbers": [("Coverage.subscriberId", ("cryptoHash",))],
    "ix account numbers": [("nodesByType('Identifier').value", ("cryptoHash",))],
    "x certificate/licence numbers": [("nodesByType('Identifier').value", ("cryptoHash",))],
    "xi vehicle identifiers": [("nodesByType('Identifier').value", ("cryptoHash",))],
    "xii device identifiers": [("Device.udiCarrier", ("redact",)), ("Device.serialNumber", ("redact",))],
    "xiii URLs": [("nodesByType('ContactPoint')", ("redact",)), ("Endpoint.address", ("redact",))],
    "xiv IP addresses": [("AuditEvent.agent.network.address", ("redact",))],
    "xv biometrics": [("nodesByType('Attachment')", ("redact",)), ("nodesByType('Signature')", ("redact",))],
    "xvi photographs": [("nodesByType('Attachment')", ("redact",))],
}


def rules_of(profile: Profile) -> dict[str, str]:
    """path -> method (the first rule for a path)."""
    found: dict[str, str] = {}
    for rule in profile.rules:
        found.setdefault(rule.path, rule.method)
    return found


def index_of(profile: Profile, path: str) -> int:
    return next(index for index, rule in enumerate(profile.rules) if rule.path == path)


def test_the_four_profiles_are_listed() -> None:
    assert builtin_profile_names() == BUILTINS


def test_an_unknown_name_is_a_key_error_naming_the_known_ones() -> None:
    with pytest.raises(KeyError) as caught:
        load_builtin_profile("safe_harbour")
    message = str(caught.value.args[0])
    assert "safe_harbour" in message
    assert all(name in message for name in BUILTINS)


@pytest.mark.parametrize("name", BUILTINS)
def test_the_yaml_file_parses_with_parse_profile(name: str) -> None:
    text = (files("masking.profiles") / f"{name}.yaml").read_text(encoding="utf-8")
    profile = parse_profile(yaml.safe_load(text), name)
    assert profile == load_builtin_profile(name)
    assert profile.name == name
    assert profile.mode == "native"
    assert profile.processing_errors == "raise"
    assert profile.narrative_removed
    assert len(profile.description) > 800
    assert profile.keys == {}  # keys come from the keyring, never from a shipped file


@pytest.mark.parametrize("name", BUILTINS)
def test_every_rule_path_and_method_is_valid(name: str) -> None:
    profile = load_builtin_profile(name)
    for rule in profile.rules:
        parse_selector(rule.path)
        assert rule.method in known_methods()


@pytest.mark.parametrize("name", BUILTINS)
def test_every_rule_carries_a_comment_saying_why(name: str) -> None:
    lines = (files("masking.profiles") / f"{name}.yaml").read_text(encoding="utf-8").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("  - path:")]
    assert len(starts) == len(load_builtin_profile(name).rules)
    silent = []
    for start in starts:
        end = start + 1
        while end < len(lines) and lines[end].startswith("    "):
            end += 1
        commented = any("  #" in line for line in lines[start:end]) or lines[start - 1].lstrip().startswith(
            "#"
        )
        if not commented:
            silent.append(lines[start].strip())
    assert silent == []


@pytest.mark.parametrize("name", BUILTINS)
def test_it_compiles_with_the_named_keys(name: str) -> None:
    compiled = compile_profile(load_builtin_profile(name), KEYS)
    assert compiled.name == name


@pytest.mark.parametrize("name", ["safe-harbor", "minimum-necessary-research"])
@pytest.mark.parametrize("item", list(SAFE_HARBOR))
def test_safe_harbor_item_is_covered(name: str, item: str) -> None:
    rules = rules_of(load_builtin_profile(name))
    for path, methods in SAFE_HARBOR[item]:
        assert path in rules, f"{name}: ({item}) needs a rule for {path}"
        assert rules[path] in methods, f"{name}: ({item}) {path} is {rules[path]}, expected {methods}"


@pytest.mark.parametrize("item", list(LIMITED_DATA_SET))
def test_limited_data_set_element_is_covered(item: str) -> None:
    rules = rules_of(load_builtin_profile("limited-data-set"))
    for path, methods in LIMITED_DATA_SET[item]:
        assert path in rules, f"({item}) needs a rule for {path}"
        assert rules[path] in methods


def test_limited_data_set_keeps_dates_ages_and_full_zip_codes() -> None:
    profile = load_builtin_profile("limited-data-set")
    methods = {rule.method for rule in profile.rules}
    assert "dateShift" not in methods
    assert "generalize" not in methods
    assert not any(
        "Age" in rule.path or "'date" in rule.path or "instant" in rule.path for rule in profile.rules
    )
    assert not profile.parameters.partial_zip_codes


@pytest.mark.parametrize("name", ["safe-harbor", "minimum-necessary-research"])
def test_safe_harbor_parameters(name: str) -> None:
    profile = load_builtin_profile(name)
    parameters = profile.parameters
    assert parameters.crypto_hash_key == "hash"
    assert parameters.date_shift.key == "date-shift"
    assert parameters.date_shift.scope == "patient"
    assert parameters.partial_zip_codes
    assert not parameters.partial_dates
    assert parameters.restricted_zip_codes == list(HHS_RESTRICTED_ZIP3)
    age = next(rule for rule in profile.rules if rule.path == "nodesByType('Age').value")
    assert age.settings == {"cases": {"$this > 89": "90"}, "otherValues": "keep"}


def test_labels_and_pseudonym_keys() -> None:
    assert load_builtin_profile("safe-harbor").resource_labels == ["ANONYED"]
    research = load_builtin_profile("minimum-necessary-research")
    assert research.resource_labels == ["PSEUDED"]
    assert research.parameters.pseudonym_keys == {"k1": "pseudonym"}
    assert research.parameters.current_pseudonym_key == "k1"
    assert load_builtin_profile("minimum-necessary-payment").parameters.crypto_hash_key is None


@pytest.mark.parametrize("name", ["safe-harbor", "minimum-necessary-research", "limited-data-set"])
@pytest.mark.parametrize("datatype", ["Address", "Identifier"])
def test_narrow_rules_come_before_the_rule_redacting_the_rest(name: str, datatype: str) -> None:
    profile = load_builtin_profile(name)
    whole = index_of(profile, f"nodesByType('{datatype}')")
    parts = [i for i, rule in enumerate(profile.rules) if rule.path.startswith(f"nodesByType('{datatype}').")]
    assert parts
    assert max(parts) < whole


def test_payment_keeps_billing_numbers_and_drops_the_rest() -> None:
    profile = load_builtin_profile("minimum-necessary-payment")
    rules = rules_of(profile)
    assert rules["Patient.identifier"] == "redact"
    keep = next(rule for rule in profile.rules if rule.path.startswith("Patient.identifier.where("))
    assert keep.method == "keep"
    assert index_of(profile, keep.path) < index_of(profile, "Patient.identifier")
    for path in (
        "Patient.telecom",
        "Patient.contact",
        "nodesByType('Narrative')",
        "nodesByType('Attachment')",
    ):
        assert rules[path] == "redact"
    assert index_of(profile, "Claim.supportingInfo.value") < index_of(profile, "nodesByType('Attachment')")
    assert not any(rule.method in ("cryptoHash", "encrypt", "dateShift") for rule in profile.rules)


# ---- masking a Synthea-shaped transaction Bundle ---------------------------------------------------------

PATIENT_ID = "742fc10a-c565-f636-3c05-5dcd28672194"
NOTE = "2019-04-29\n\n# History of Present Illness\nAlva958 Dickinson688 is a 21 year-old male.\n"
ORIGINALS = [
    "Alva958",
    "Dickinson688",
    "Beryl690 Trantow673",
    "Lynn",
    "919 Hickle Parade",
    "Peabody",
    "01960",
    "555-969-2143",
    "999-45-3348",
    "S99948068",
    "X15432431X",
    PATIENT_ID,
    "b7c5e7f1-7b2a-4c55-9d4c-0f1f2e6c1a11",
    "1998-04-29",
    "2019-04-29",
    "Dr. Jame231 Jacobi462",
    "9999907139",
    "1925-03-01",
]


def synthea_like_bundle() -> dict[str, Any]:
    patient = {
        "resourceType": "Patient",
        "id": PATIENT_ID,
        "text": {"status": "generated", "div": "<div xmlns='http://www.w3.org/1999/xhtml'>Alva958</div>"},
        "extension": [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName",
                "valueString": "Beryl690 Trantow673",
            },
            {
                "url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                "valueAddress": {"city": "Lynn", "state": "Massachusetts", "country": "US"},
            },
        ],
        "identifier": [
            {"system": "https://github.com/synthetichealth/synthea", "value": PATIENT_ID},
            {
                "type": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "SS"}]
                },
                "system": "http://hl7.org/fhir/sid/us-ssn",
                "value": "999-45-3348",
            },
            {
                "type": {"text": "Driver's License"},
                "system": "urn:oid:2.16.840.1.113883.4.3.25",
                "value": "S99948068",
            },
            {"type": {"text": "Passport Number"}, "value": "X15432431X"},
        ],
        "name": [{"use": "official", "family": "Dickinson688", "given": ["Alva958"], "prefix": ["Mr."]}],
        "telecom": [{"system": "phone", "value": "555-969-2143", "use": "home"}],
        "gender": "male",
        "birthDate": "1998-04-29",
        "address": [
            {
                "extension": [
                    {
                        "url": "http://hl7.org/fhir/StructureDefinition/geolocation",
                        "extension": [{"url": "latitude", "valueDecimal": 42.54}],
                    }
                ],
                "line": ["919 Hickle Parade"],
                "city": "Peabody",
                "state": "MA",
                "postalCode": "01960",
                "country": "US",
            }
        ],
    }
    encounter_id = "b7c5e7f1-7b2a-4c55-9d4c-0f1f2e6c1a11"
    encounter = {
        "resourceType": "Encounter",
        "id": encounter_id,
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": f"urn:uuid:{PATIENT_ID}", "display": "Mr. Alva958 Dickinson688"},
        "participant": [
            {
                "individual": {
                    "reference": "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999907139",
                    "display": "Dr. Jame231 Jacobi462",
                }
            }
        ],
        "period": {"start": "2019-04-29T06:53:25+00:00", "end": "2019-04-29T07:08:25+00:00"},
    }
    document = {
        "resourceType": "DocumentReference",
        "id": "0c3b8a52-4d9e-4f7f-8a55-2a9d0b6c7e01",
        "status": "current",
        "subject": {"reference": f"urn:uuid:{PATIENT_ID}"},
        "date": "2019-04-29T06:53:25.410+00:00",
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain",
                    "data": base64.b64encode(NOTE.encode()).decode("ascii"),
                }
            }
        ],
    }
    old = {
        "resourceType": "Patient",
        "id": "a0a0a0a0-1111-2222-3333-444444444444",
        "birthDate": "1925-03-01",
        "extension": [{"url": "http://example.org/age", "valueAge": {"value": 99, "unit": "a"}}],
    }
    condition = {
        "resourceType": "Condition",
        "id": "c0c0c0c0-1111-2222-3333-444444444444",
        "subject": {"reference": "urn:uuid:a0a0a0a0-1111-2222-3333-444444444444"},
        "onsetAge": {"value": 95, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"},
        "abatementAge": {"value": 42, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"},
    }
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{r['id']}",
                "resource": r,
                "request": {"method": "POST", "url": r["resourceType"]},
            }
            for r in (patient, encounter, document, old, condition)
        ],
    }


def all_strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [text for value in node.values() for text in all_strings(value)]
    if isinstance(node, list):
        return [text for value in node for text in all_strings(value)]
    return [node] if isinstance(node, str) else []


@pytest.mark.parametrize("name", ["safe-harbor", "minimum-necessary-research"])
def test_a_synthea_shaped_bundle_keeps_none_of_the_originals(name: str) -> None:
    compiled = compile_profile(load_builtin_profile(name), KEYS)
    masked = compiled.mask(synthea_like_bundle(), today=TODAY)
    assert masked is not None
    text = json.dumps(masked)
    leaked = [value for value in ORIGINALS if value in text]
    assert leaked == []
    patient, encounter, _document, old, condition = (entry["resource"] for entry in masked["entry"])
    # references still resolve: the hashed/pseudonymised fullUrl, id and reference agree
    assert masked["entry"][0]["fullUrl"] == f"urn:uuid:{patient['id']}"
    assert encounter["subject"]["reference"] == masked["entry"][0]["fullUrl"]
    assert patient["address"][0]["state"] == "MA"
    assert patient["address"][0]["postalCode"] == "01900"
    assert set(patient["address"][0]) <= {"state", "postalCode", "country"}
    assert "text" not in patient
    assert "birthDate" not in old  # over 89: removed, not shifted
    assert condition["onsetAge"]["value"] == 90  # aggregated into "90 or older"
    assert condition["abatementAge"]["value"] == 42
    # intervals survive: both ends of the period move by the same number of days
    start, end = encounter["period"]["start"], encounter["period"]["end"]
    assert start[:10] == end[:10] != "2019-04-29"
    labels = {label["code"] for label in patient["meta"]["security"]}
    assert ("ANONYED" if name == "safe-harbor" else "PSEUDED") in labels


def test_the_limited_data_set_keeps_dates_city_and_zip() -> None:
    compiled = compile_profile(load_builtin_profile("limited-data-set"), KEYS)
    masked = compiled.mask(synthea_like_bundle(), today=TODAY)
    assert masked is not None
    patient = masked["entry"][0]["resource"]
    assert patient["birthDate"] == "1998-04-29"
    assert patient["address"][0] == {"city": "Peabody", "state": "MA", "postalCode": "01960", "country": "US"}
    assert "name" not in patient or all("family" not in name for name in patient["name"])
    text = json.dumps(masked)
    for value in ("Alva958", "555-969-2143", "999-45-3348", "919 Hickle Parade", "Beryl690", PATIENT_ID):
        assert value not in text
    assert masked["entry"][4]["resource"]["onsetAge"]["value"] == 95


def test_payment_keeps_identity_and_dates_but_not_contacts_or_notes() -> None:
    compiled = compile_profile(load_builtin_profile("minimum-necessary-payment"), {})
    masked = compiled.mask(synthea_like_bundle(), today=TODAY)
    assert masked is not None
    patient = masked["entry"][0]["resource"]
    assert patient["id"] == PATIENT_ID
    assert patient["name"][0]["family"] == "Dickinson688"
    assert patient["birthDate"] == "1998-04-29"
    assert patient["address"][0] == {"city": "Peabody", "state": "MA", "postalCode": "01960", "country": "US"}
    text = json.dumps(masked)
    for value in ("555-969-2143", "999-45-3348", "S99948068", "X15432431X", "Beryl690", "919 Hickle Parade"):
        assert value not in text
    assert "text" not in patient
    assert "data" not in masked["entry"][2]["resource"]["content"][0]["attachment"]


def _synthea_files() -> list[Path]:
    if not SYNTHEA.is_dir():
        return []
    return sorted(
        path for path in SYNTHEA.iterdir() if re.search(r"_[0-9a-f-]{36}\.json(\.gz)?$", path.name)
    )[:2]


def _read(path: Path) -> Any:
    raw = path.read_bytes()
    return json.loads(gzip.decompress(raw) if path.suffix == ".gz" else raw)


def _originals(bundle: dict[str, Any]) -> set[str]:
    """Names, address parts, phones, identifier values, ids and mothers' maiden names of the input."""
    found: set[str] = set()
    for entry in bundle["entry"]:
        resource = entry["resource"]
        found.add(resource["id"])
        for identifier in resource.get("identifier", []):
            found.add(identifier["value"])
        for name in resource.get("name", []) if isinstance(resource.get("name"), list) else []:
            found.update(name.get("given", []))
            found.add(name.get("family", ""))
        for telecom in resource.get("telecom", []):
            found.add(telecom["value"])
        for address in resource.get("address", []) if isinstance(resource.get("address"), list) else []:
            found.update(address.get("line", []))
            found.update(filter(None, (address.get("city"), address.get("postalCode"))))
        for extension in resource.get("extension", []):
            if extension["url"].endswith("mothersMaidenName"):
                found.add(extension["valueString"])
    found.discard("")
    return found


@pytest.mark.skipif(not _synthea_files(), reason="the Synthea sample data is not available")
@pytest.mark.parametrize("path", _synthea_files(), ids=lambda path: path.name[:20])
def test_synthea_bundles_are_scrubbed_by_safe_harbor(path: Path) -> None:
    compiled = compile_profile(load_builtin_profile("safe-harbor"), KEYS)
    original = _read(path)
    masked = compiled.mask(copy.deepcopy(original), today=TODAY)
    assert masked is not None
    values = set(all_strings(masked))
    leaked = sorted(value for value in _originals(original) if value in values)
    assert leaked == []
    text = json.dumps(masked)
    assert not any(value in text for value in _originals(original) if len(value) >= 8)
    assert not re.search(r"urn:uuid:[0-9a-f]{8}-", text)
    for original_entry, masked_entry in zip(original["entry"], masked["entry"], strict=True):
        assert _dates(original_entry["resource"]).isdisjoint(_dates(masked_entry["resource"]))


def _dates(resource: dict[str, Any]) -> set[tuple[str, str]]:
    """(JSON key, value) of every date-looking string: the same element must not keep its date."""
    found: set[tuple[str, str]] = set()

    def walk(node: Any, key: str) -> None:
        if isinstance(node, dict):
            for child_key, value in node.items():
                walk(value, child_key)
        elif isinstance(node, list):
            for value in node:
                walk(value, key)
        elif isinstance(node, str) and re.fullmatch(r"\d{4}-\d\d-\d\d.*", node):
            found.add((key, node))

    walk(resource, "")
    return found


def test_shipped_profile_schema_is_current_and_accepts_every_builtin_profile() -> None:
    shipped = (Path(__file__).resolve().parents[2] / "masking" / "profile.schema.json").read_text()
    assert shipped == profile_schema_text(), (
        "regenerate with: fhirwall profile-schema > masking/profile.schema.json"
    )
    schema = json.loads(shipped)
    for name in builtin_profile_names():
        text = (Path(__file__).resolve().parents[2] / "masking" / "profiles" / f"{name}.yaml").read_text()
        jsonschema.validate(yaml.safe_load(text), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "x", "rules": [], "mode": "sloppy"}, schema)

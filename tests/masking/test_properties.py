"""Properties of masking over generated FHIR R4 Patients, Observations and Bundles (and Synthea samples).

1. redacted values never reappear (narrative and extensions included);
2. a keep-everything profile, or one whose rules match nothing, is the identity;
3. redact/keep profiles are idempotent;
4. a resource gets security labels exactly when its content (contained resources included) changed;
5. safe-harbor output still validates as FHIR R4B;
6. pseudonyms of ids, references and fullUrls agree across resources and mask() calls;
7. native date shifts are per patient: a patient's intervals survive, and no date stays put;
8. compatibility-mode date shifts use the MS anonymizer's offset per resource id.

Also (found by these properties, now regression tests): a required primitive stays marked absent when
re-masked; a masked contained resource labels and de-narrates its container; year-only safe-harbor output
validates (no year-only instants); removing items of a primitive list keeps ``_x`` aligned; a year kept by
partial-date redaction never itself reads as an age over 89.
"""

from __future__ import annotations

import copy
import functools
import gzip
import hashlib
import hmac
import os
import re
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class
from hypothesis import given, settings
from hypothesis import strategies as st

from masking import compile_profile, load_builtin_profile, parse_profile
from masking.compiler import CompiledProfile
from masking.engine import DATA_ABSENT_REASON_URL
from tests.masking.strategies import (
    QUALIFIER_URL,
    PatientCase,
    PatientRecord,
    Secrets,
    bundles,
    observations,
    patient_cases,
    patient_record,
)

Resource = dict[str, Any]
JsonPath = tuple[str | int, ...]

TODAY = date(2026, 1, 1)
LABEL_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
HL7_LABELS = frozenset({"REDACTED", "MASKED", "PSEUDED", "ABSTRED", "ANONYED", "AGGRED", "SUBSETTED"})
HASH_KEY = "hash-key"
SHIFT_KEY = "shift-key"
SYNTHEA = Path(
    os.environ.get("FHIRWALL_SYNTHEA_DIR") or Path(__file__).resolve().parents[2] / "examples/data/synthea-r4"
)
_HEX64 = re.compile(r"[0-9a-f]{64}")


# ---- helpers -----------------------------------------------------------------------------------------


def build(
    rules: list[dict[str, Any]],
    *,
    mode: str = "native",
    parameters: dict[str, Any] | None = None,
    **extra: Any,
) -> CompiledProfile:
    """A profile with inline keys ``hash`` (cryptoHash) and ``shift`` (dateShift)."""
    data: dict[str, Any] = {
        "name": "props",
        "mode": mode,
        "rules": rules,
        "keys": {"hash": {"value": HASH_KEY}, "shift": {"value": SHIFT_KEY}},
        "parameters": {"crypto_hash_key": "hash", "date_shift": {"key": "shift"}, **(parameters or {})},
        **extra,
    }
    return compile_profile(parse_profile(data))


def masked(profile: CompiledProfile, resource: Resource) -> Resource:
    """``resource`` masked by ``profile`` (on a copy; the clock pinned)."""
    result = profile.mask(copy.deepcopy(resource), today=TODAY)
    assert result is not None
    return result


def text_of(resource: Resource) -> str:
    return orjson.dumps(resource).decode()


def validate(resource: Resource) -> None:
    """Raise unless ``resource`` parses as its FHIR R4B model."""
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def label_codes(resource: Resource) -> list[str]:
    """Codes of the v3-ObservationValue labels on ``resource``."""
    meta = resource.get("meta") or {}
    return [c.get("code") for c in meta.get("security") or () if c.get("system") == LABEL_SYSTEM]


def _unlabelled(resource: Resource) -> None:
    meta = resource.get("meta")
    if isinstance(meta, dict):
        security = [c for c in meta.get("security") or () if c.get("system") != LABEL_SYSTEM]
        if security:
            meta["security"] = security
        else:
            meta.pop("security", None)
        if not meta:
            del resource["meta"]


def own_content(resource: Resource, *, with_contained: bool) -> Resource:
    """The resource without masking labels and without its Bundle entries' resources (labelled on their
    own); its contained resources (labels removed too) only ``with_contained``."""
    view = copy.deepcopy(resource)
    _unlabelled(view)
    if not with_contained:
        view.pop("contained", None)
    for inner in view.get("contained") or ():
        _unlabelled(inner)
    for entry in view.get("entry") or ():
        entry.pop("resource", None)
    return view


def entry_resources(resource: Resource) -> Iterator[Resource]:
    """``resource`` and its Bundle entry resources (recursively)."""
    yield resource
    for entry in resource.get("entry") or ():
        if "resource" in entry:
            yield from entry_resources(entry["resource"])


_DATE_KEYS = frozenset(
    {
        "birthDate",
        "deceasedDateTime",
        "effectiveDateTime",
        "issued",
        "lastUpdated",
        "start",
        "end",
        "valueDateTime",
        "timestamp",
    }
)


def dates_in(node: Any, path: JsonPath = (), *, into_entries: bool = True) -> Iterator[tuple[JsonPath, str]]:
    """(path, value) of every date/dateTime/instant value the generators place."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "entry" and not into_entries:
                continue
            if key in _DATE_KEYS and isinstance(value, str):
                yield (*path, key), value
            else:
                yield from dates_in(value, (*path, key), into_entries=into_entries)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from dates_in(item, (*path, index), into_entries=into_entries)


def at(node: Any, path: JsonPath) -> Any:
    for step in path:
        node = node[step]
    return node


def day_shift(before: str, after: str) -> int:
    """Whole days between the day parts of two date texts."""
    return (date.fromisoformat(after[:10]) - date.fromisoformat(before[:10])).days


def ms_offset(resource_id: str, key: str) -> int:
    """The Microsoft anonymizer's date-shift offset, written out from its definition."""
    offset = 0
    for byte in (resource_id + key).encode("utf-8"):
        offset = (offset * 131 + byte) % 101
    return offset - 50


def hmac_hex(text: str) -> str:
    return hmac.new(HASH_KEY.encode(), text.encode(), hashlib.sha256).hexdigest()


def id_part(reference: str) -> str:
    """The id in ``[base/]Type/id[/_history/n]`` or ``urn:uuid:id``."""
    if reference.startswith("urn:uuid:"):
        return reference.removeprefix("urn:uuid:")
    head = reference.partition("/_history/")[0]
    return head.rsplit("/", 1)[1]


def patient_resources() -> st.SearchStrategy[Resource]:
    return patient_cases().map(lambda case: case.resource)


def _first_observation(record: PatientRecord) -> Resource:
    return record.observations[0]


def observation_resources(*, safe_dates: bool = False) -> st.SearchStrategy[Resource]:
    return patient_record(max_observations=1, safe_dates=safe_dates).map(_first_observation)


def any_resources() -> st.SearchStrategy[Resource]:
    return st.one_of(patient_resources(), observation_resources(), bundles().map(lambda pair: pair[0]))


def with_secrets() -> st.SearchStrategy[tuple[Resource, Secrets]]:
    patients = patient_cases().map(lambda case: (case.resource, case.secrets))
    return st.one_of(patients, bundles())


# ---- 1. redacted values never reappear -----------------------------------------------------------------

REDACT_PII = build(
    [
        {"path": "nodesByType('HumanName')", "method": "redact"},
        {"path": "nodesByType('ContactPoint')", "method": "redact"},
        {"path": "nodesByType('Address')", "method": "redact"},
        {"path": "Patient.birthDate", "method": "redact"},
    ]
)


@settings(max_examples=60, deadline=None)
@given(with_secrets())
def test_redacted_values_never_reappear(case: tuple[Resource, Secrets]) -> None:
    resource, secrets = case
    before = text_of(resource)
    assert secrets.names
    assert secrets.birth_dates
    tokens = [f'"{code}"' for code in secrets.postal_codes]
    for secret in [*secrets.texts(), *tokens]:
        assert secret in before  # the generator really placed it
    after = text_of(masked(REDACT_PII, resource))
    for secret in [*secrets.texts(), *tokens]:
        assert secret not in after


# ---- 2. identity profiles -------------------------------------------------------------------------------

IDENTITY_PROFILES = [
    build([{"path": "Resource", "method": "keep"}]),
    build([{"path": "Resource", "method": "keep"}], mode="compatibility"),
    build(  # keep first: the later rules never get a node
        [
            {"path": "Resource", "method": "keep"},
            {"path": "nodesByType('HumanName')", "method": "redact"},
            {"path": "nodesByType('dateTime')", "method": "dateShift"},
            {"path": "Resource.id", "method": "cryptoHash"},
        ]
    ),
    build(  # rules that match nothing the generators produce
        [
            {"path": "nodesByType('Attachment')", "method": "redact"},
            {"path": "nodesByType('Annotation')", "method": "redact"},
            {"path": "Device.serialNumber", "method": "redact"},
            {"path": "Observation.bodySite", "method": "redact"},
            {"path": "nodesByName('maritalStatus')", "method": "redact"},
            {"path": "Patient.name.where(use = 'anonymous')", "method": "redact"},
            {"path": "Patient.photo", "method": "cryptoHash"},
        ],
        resource_labels=["ANONYED"],
    ),
]


@settings(max_examples=40, deadline=None)
@given(any_resources(), st.sampled_from(IDENTITY_PROFILES))
def test_keep_all_and_rules_matching_nothing_are_the_identity(
    resource: Resource, profile: CompiledProfile
) -> None:
    original = copy.deepcopy(resource)
    result = profile.mask(resource, today=TODAY)  # in place: the very object comes back unchanged
    assert result is resource
    assert orjson.dumps(result) == orjson.dumps(original)
    assert "v3-ObservationValue" not in text_of(result)


# ---- 3. idempotence -------------------------------------------------------------------------------------

IDEMPOTENT_PROFILES = [
    REDACT_PII,
    IDENTITY_PROFILES[0],
    build(  # partial redaction (year kept, 3-digit zip) and whole complex elements, keep protecting parts
        [
            {"path": "nodesByType('Address').state", "method": "keep"},
            {"path": "nodesByName('postalCode')", "method": "redact"},
            {"path": "nodesByType('Address')", "method": "redact"},
            {"path": "nodesByType('date')", "method": "redact"},
            {"path": "nodesByType('dateTime')", "method": "redact"},
            {"path": "nodesByType('instant')", "method": "redact"},
            {"path": "nodesByType('Extension')", "method": "redact"},
            {"path": "nodesByType('Narrative')", "method": "redact"},
        ],
        parameters={"partial_dates": True, "partial_zip_codes": True},
        resource_labels=["ANONYED"],
    ),
    build(  # a required complex element redacted: replaced by data-absent-reason both times
        [
            {"path": "Observation.code", "method": "redact"},
            {"path": "Observation.component", "method": "redact"},
            {"path": "nodesByType('HumanName').given", "method": "redact"},
        ]
    ),
    build(
        [{"path": "nodesByType('HumanName')", "method": "redact"}],
        mode="compatibility",
        parameters={"partial_dates": True},
    ),
]


@settings(max_examples=50, deadline=None)
@given(any_resources(), st.sampled_from(IDEMPOTENT_PROFILES))
def test_redact_and_keep_profiles_are_idempotent(resource: Resource, profile: CompiledProfile) -> None:
    once = masked(profile, resource)
    assert masked(profile, once) == once


PARTIAL_DATES = build(
    [{"path": "nodesByType('date')", "method": "redact"}], parameters={"partial_dates": True}
)


@settings(max_examples=30, deadline=None)
@given(st.dates(date(TODAY.year - 92, 1, 1), date(TODAY.year - 87, 12, 31)))
def test_partial_date_redaction_is_idempotent_at_the_age_90_boundary(birth: date) -> None:
    """Natively a kept year never itself reads as over 89 (born 1936-06-01: 89 on 2026-01-01, but the
    year 1936 alone could be 90), so a second pass keeps what the first kept."""
    patient = {"resourceType": "Patient", "birthDate": birth.isoformat()}
    once = masked(PARTIAL_DATES, patient)
    if "birthDate" in once:
        assert once["birthDate"] == str(birth.year)
        assert birth.year >= TODAY.year - 89
    assert masked(PARTIAL_DATES, once) == once


REDACT_STATUS = build([{"path": "Observation.status", "method": "redact"}])


@settings(max_examples=15, deadline=None)
@given(observation_resources())
def test_redacting_a_required_primitive_is_idempotent(resource: Resource) -> None:
    once = masked(REDACT_STATUS, resource)
    assert once["_status"]["extension"] == [{"url": DATA_ABSENT_REASON_URL, "valueCode": "masked"}]
    twice = masked(REDACT_STATUS, once)
    assert twice == once


# ---- 4. labels iff changed ------------------------------------------------------------------------------

RULE_POOL: tuple[dict[str, Any], ...] = (
    {"path": "nodesByType('HumanName')", "method": "redact"},
    {"path": "nodesByType('ContactPoint')", "method": "redact"},
    {"path": "nodesByType('Address').state", "method": "keep"},
    {"path": "nodesByType('Address')", "method": "redact"},
    {"path": "Patient.birthDate", "method": "redact"},
    {"path": "Resource.id", "method": "cryptoHash"},
    {"path": "nodesByType('Reference').reference", "method": "cryptoHash"},
    {"path": "Bundle.entry.fullUrl", "method": "cryptoHash"},
    {"path": "nodesByType('dateTime')", "method": "dateShift"},
    {"path": "nodesByType('date')", "method": "dateShift"},
    {"path": "nodesByType('instant')", "method": "dateShift"},
    {"path": "Observation.status", "method": "redact"},
    {"path": "Observation.code", "method": "redact"},
    {"path": "nodesByType('Extension')", "method": "redact"},
    {"path": "nodesByName('postalCode')", "method": "redact"},
    {"path": "Patient.gender", "method": "substitute", "replaceWith": "unknown"},
    {"path": "nodesByType('Identifier').value", "method": "cryptoHash"},
    {"path": "Patient.name.where(use = 'official')", "method": "redact"},
    {"path": "Observation.component", "method": "redact"},
    {"path": "nodesByType('Narrative')", "method": "redact"},
    {"path": "Patient.telecom.where(system = 'email').value", "method": "substitute", "replaceWith": "x@y.z"},
    {
        "path": "nodesByType('Quantity').value",
        "method": "generalize",
        "cases": {"$this >= 100": "100"},
        "otherValues": "keep",
    },
    {"path": "Resource", "method": "keep"},
    {"path": "nodesByType('HumanName').family", "method": "keep"},
    {"path": "Observation.value", "method": "redact"},
    {
        "path": "Patient.extension.where(url = 'http://hl7.org/fhir/StructureDefinition/patient-birthPlace')",
        "method": "redact",
    },
)


@functools.lru_cache(maxsize=512)
def pooled_profile(indices: tuple[int, ...], partial: bool, extra_label: bool) -> CompiledProfile:
    rules = [RULE_POOL[index] for index in indices]
    return build(
        rules,
        parameters={"partial_zip_codes": partial, "partial_dates": partial},
        resource_labels=["ANONYED"] if extra_label else [],
    )


pooled_profiles = st.builds(
    pooled_profile,
    st.lists(st.integers(0, len(RULE_POOL) - 1), max_size=6, unique=True).map(tuple),
    st.booleans(),
    st.booleans(),
)


@settings(max_examples=80, deadline=None)
@given(any_resources(), pooled_profiles)
def test_labels_are_added_exactly_when_the_resource_changed(
    resource: Resource, profile: CompiledProfile
) -> None:
    # Contained resources are part of their container: a change in them labels the container (dom-5:
    # a contained resource carries no security label of its own). Bundle entries are labelled on their own.
    result = masked(profile, resource)
    for before, after in zip(entry_resources(resource), entry_resources(result), strict=True):
        assert not label_codes(before)
        codes = label_codes(after)
        assert all(not label_codes(inner) for inner in after.get("contained") or ())
        if own_content(before, with_contained=True) != own_content(after, with_contained=True):
            assert codes, f"{after['resourceType']} changed but carries no label"
            assert set(codes) <= HL7_LABELS
            assert len(codes) == len(set(codes))
            assert "text" not in after  # native mode: the narrative of a changed resource goes
        else:
            assert not codes, f"{after['resourceType']} unchanged but labelled {codes}"


@st.composite
def observations_with_contained_patient(draw: st.DrawFn) -> tuple[Resource, Secrets]:
    """An Observation whose subject is a contained Patient, its narrative naming that patient."""
    case: PatientCase = draw(patient_cases(contained=False))
    patient = case.resource
    patient.pop("text", None)
    patient.pop("meta", None)
    patient["id"] = "subject"
    observation = draw(observations("#subject"))
    name = patient["name"][0]
    observation["contained"] = [patient]
    observation["text"] = {
        "status": "generated",
        "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{name["given"][0]} {name["family"]}</div>',
    }
    return observation, case.secrets


@settings(max_examples=15, deadline=None)
@given(observations_with_contained_patient())
def test_masking_a_contained_resource_counts_as_changing_its_container(
    case: tuple[Resource, Secrets],
) -> None:
    observation, secrets = case
    result = masked(REDACT_PII, observation)
    for secret in secrets.names:
        assert secret not in text_of(result)
    assert "REDACTED" in label_codes(result)
    assert all("security" not in (inner.get("meta") or {}) for inner in result["contained"])


# ---- 5. safe-harbor output is valid FHIR R4B ------------------------------------------------------------

SAFE_HARBOR = compile_profile(
    load_builtin_profile("safe-harbor"), {"hash": b"k", "date-shift": b"d", "pseudonym": b"x" * 32}
)


@settings(max_examples=30, deadline=None)
@given(with_secrets())
def test_safe_harbor_output_validates_as_r4b(case: tuple[Resource, Secrets]) -> None:
    resource, secrets = case
    validate(resource)
    result = masked(SAFE_HARBOR, resource)
    validate(result)
    after = text_of(result)
    for secret in [*secrets.names, *secrets.phones, *secrets.emails, *secrets.streets, *secrets.cities]:
        assert secret not in after


@settings(max_examples=15, deadline=None)
@given(observation_resources())
def test_safe_harbor_output_validates_as_r4b_for_observations(resource: Resource) -> None:
    validate(resource)
    validate(masked(SAFE_HARBOR, resource))


def synthea_samples() -> list[Resource]:
    """Per Synthea bundle, a transaction Bundle of its first entry of each resource type (max 12 types)."""
    samples: list[Resource] = []
    for path in sorted([*SYNTHEA.glob("*.json"), *SYNTHEA.glob("*.json.gz")])[:6]:
        raw = path.read_bytes()
        bundle = orjson.loads(gzip.decompress(raw) if path.suffix == ".gz" else raw)
        picked: dict[str, Resource] = {}
        for entry in bundle.get("entry") or ():
            picked.setdefault(entry["resource"]["resourceType"], entry)
        samples.append({**bundle, "entry": list(picked.values())[:12]})
    return samples


@pytest.mark.skipif(not SYNTHEA.is_dir(), reason="Synthea sample data not available")
def test_safe_harbor_output_validates_as_r4b_for_synthea() -> None:
    samples = synthea_samples()
    assert samples
    for sample in samples:
        validate(sample)
        result = masked(SAFE_HARBOR, sample)
        validate(result)
        for entry in result["entry"]:
            assert _HEX64.fullmatch(entry["resource"]["id"])
            assert "text" not in entry["resource"]
            assert "ANONYED" in label_codes(entry["resource"])


@functools.cache
def year_only_safe_harbor() -> CompiledProfile:
    """safe-harbor switched to year-only dates as its description says: the three dateShift rules become
    redact, and ``parameters.partial_dates`` is set."""
    data = load_builtin_profile("safe-harbor").model_dump(mode="json", exclude_none=True)
    for rule in data["rules"]:
        if rule["method"] == "dateShift":
            rule["method"] = "redact"
    data["parameters"]["partial_dates"] = True
    return compile_profile(parse_profile(data), {"hash": b"k", "date-shift": b"d"})


@settings(max_examples=15, deadline=None)
@given(st.one_of(observation_resources(), patient_resources()))
def test_year_only_safe_harbor_output_validates_as_r4b(resource: Resource) -> None:
    validate(resource)
    validate(masked(year_only_safe_harbor(), resource))


# ---- primitive lists and their extensions ---------------------------------------------------------------


def misaligned(node: Any) -> Iterator[str]:
    """Keys whose value list and ``_key`` extension list differ in length (FHIR JSON requires equal)."""
    if isinstance(node, dict):
        for key, value in node.items():
            partner = node.get("_" + key)
            if isinstance(value, list) and isinstance(partner, list) and len(value) != len(partner):
                yield key
            yield from misaligned(value)
    elif isinstance(node, list):
        for item in node:
            yield from misaligned(item)


DROP_SECRET_GIVEN_NAMES = build(
    [
        {
            "path": "nodesByType('HumanName').given",
            "method": "generalize",
            "cases": {"$this.startsWith('Zq')": "{}"},  # an empty result removes the value
            "otherValues": "keep",
        }
    ]
)


@st.composite
def patients_with_qualified_initials(draw: st.DrawFn) -> Resource:
    """Patients whose given names are ``[Zq..., initial]``, each with an ISO 21090 qualifier extension."""
    patient = draw(patient_cases(contained=False)).resource
    for name in patient["name"]:
        secret = [given for given in name["given"] if given.startswith("Zq")]
        name["given"] = [*secret, "Q"]
        name["_given"] = [
            *({"extension": [{"url": QUALIFIER_URL, "valueCode": "CL"}]} for _ in secret),
            {"extension": [{"url": QUALIFIER_URL, "valueCode": "IN"}]},
        ]
    return patient


@settings(max_examples=15, deadline=None)
@given(patients_with_qualified_initials())
def test_removing_list_items_keeps_primitive_extensions_aligned(patient: Resource) -> None:
    result = masked(DROP_SECRET_GIVEN_NAMES, patient)
    assert all(name["given"] == ["Q"] for name in result["name"])
    assert not list(misaligned(result))


# ---- 6. consistent pseudonyms ---------------------------------------------------------------------------

PSEUDONYMS = build(
    [
        {"path": "Resource.id", "method": "cryptoHash"},
        {"path": "nodesByType('Reference').reference", "method": "cryptoHash"},
        {"path": "Bundle.entry.fullUrl", "method": "cryptoHash"},
    ]
)


@settings(max_examples=50, deadline=None)
@given(patient_record())
def test_pseudonyms_agree_across_resources_and_calls(record: PatientRecord) -> None:
    patient = masked(PSEUDONYMS, record.patient)
    pseudonym = patient["id"]
    assert _HEX64.fullmatch(pseudonym)
    assert pseudonym == hmac_hex(record.patient["id"])
    again = build(
        [
            {"path": "Resource.id", "method": "cryptoHash"},
            {"path": "nodesByType('Reference').reference", "method": "cryptoHash"},
        ]
    )  # a fresh profile with the same key gives the same pseudonyms
    assert masked(again, record.patient)["id"] == pseudonym
    for inner, original in zip(
        patient.get("contained") or (), record.patient.get("contained") or (), strict=True
    ):
        assert inner["id"] == hmac_hex(original["id"])
        assert patient["generalPractitioner"] == [{"reference": "#" + inner["id"]}]
    for original in record.observations:
        observation = masked(PSEUDONYMS, original)
        reference = observation["subject"]["reference"]
        before = original["subject"]["reference"]
        assert id_part(reference) == pseudonym
        # base URL and version suffix kept, only the id part replaced
        patient_id = record.patient["id"]
        assert reference == before.replace(f"Patient/{patient_id}", f"Patient/{pseudonym}", 1)
        assert observation["id"] == hmac_hex(original["id"])


@settings(max_examples=30, deadline=None)
@given(bundles())
def test_pseudonyms_agree_inside_bundles(case: tuple[Resource, Secrets]) -> None:
    bundle, _ = case
    result = masked(PSEUDONYMS, bundle)
    patients: dict[str, str] = {}
    for before, after in zip(bundle["entry"], result["entry"], strict=True):
        resource = after["resource"]
        assert resource["id"] == hmac_hex(before["resource"]["id"])
        assert id_part(after["fullUrl"]) == resource["id"]
        assert (
            after["fullUrl"].rsplit(resource["id"], 1)[0]
            == before["fullUrl"].rsplit(before["resource"]["id"], 1)[0]
        )
        if resource["resourceType"] == "Patient":
            patients[after["fullUrl"]] = resource["id"]
    for entry in result["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "Observation":
            reference = resource["subject"]["reference"]
            assert id_part(reference) in patients.values()
            if reference.startswith("urn:uuid:"):
                assert reference in patients  # still resolves to the Patient entry's fullUrl


# ---- 7. native per-patient date shift -------------------------------------------------------------------

DATE_SHIFT = [
    {"path": "nodesByType('date')", "method": "dateShift"},
    {"path": "nodesByType('dateTime')", "method": "dateShift"},
    {"path": "nodesByType('instant')", "method": "dateShift"},
]
NATIVE_SHIFT = build(DATE_SHIFT, parameters={"date_shift": {"key": "shift", "scope": "patient"}})


def shifts(before: Resource, after: Resource, *, into_entries: bool = True) -> list[int]:
    """Day shift of every generated date; native shifts keep everything after the day unchanged."""
    found = []
    for path, value in dates_in(before, into_entries=into_entries):
        new = at(after, path)
        assert new[10:] == value[10:], (path, value, new)
        found.append(day_shift(value, new))
    return found


@settings(max_examples=40, deadline=None)
@given(patient_record(safe_dates=True, uuid_ids=True))
def test_native_date_shift_is_one_offset_per_patient(record: PatientRecord) -> None:
    offsets = shifts(record.patient, masked(NATIVE_SHIFT, record.patient))
    for observation in record.observations:
        offsets += shifts(observation, masked(NATIVE_SHIFT, observation))
    assert len(set(offsets)) == 1
    offset = offsets[0]
    assert offset != 0
    assert -50 <= offset <= 50

    patient_url = f"urn:uuid:{record.patient['id']}"
    entries: list[Resource] = [{"fullUrl": patient_url, "resource": record.patient}]
    for index, observation in enumerate(record.observations):
        entry_id = f"00000000-0000-4000-8000-{index:012d}"
        inner = {**observation, "id": entry_id, "subject": {"reference": patient_url}}
        entries.append({"fullUrl": f"urn:uuid:{entry_id}", "resource": inner})
    bundle: Resource = {"resourceType": "Bundle", "type": "collection", "entry": entries}
    result = masked(NATIVE_SHIFT, bundle)
    in_bundle = [
        shift
        for before, after in zip(bundle["entry"], result["entry"], strict=True)
        for shift in shifts(before["resource"], after["resource"])
    ]
    assert set(in_bundle) == {offset}


# ---- 8. compatibility-mode date shift (MS anonymizer) ---------------------------------------------------

COMPAT_SHIFT = build(
    DATE_SHIFT, mode="compatibility", parameters={"date_shift": {"key": "shift", "scope": "resource"}}
)
_TIME = re.compile(r"T(\d\d:\d\d:\d\d(?:\.\d+)?)(Z|[+-]\d\d:\d\d)$")


def check_ms_shift(before: Resource, after: Resource, resource_id: str, *, into_entries: bool) -> None:
    expected = ms_offset(resource_id, SHIFT_KEY)
    for path, value in dates_in(before, into_entries=into_entries):
        new = at(after, path)
        assert day_shift(value, new) == expected, (path, value, new)
        zoned = _TIME.search(value)
        if zoned:  # MS keeps a time only with a zone, every digit zeroed
            time, zone = zoned.groups()
            assert new == new[:10] + "T" + re.sub(r"\d", "0", time) + zone
        else:
            assert len(new) == 10


@settings(max_examples=40, deadline=None)
@given(
    st.one_of(
        patient_cases(safe_dates=True).map(lambda case: case.resource),
        observation_resources(safe_dates=True),
    )
)
def test_compatibility_date_shift_uses_the_ms_offset_of_the_resource_id(resource: Resource) -> None:
    # Contained resources are shifted with their container's (the top-level resource's) id.
    check_ms_shift(resource, masked(COMPAT_SHIFT, resource), resource["id"], into_entries=True)


@settings(max_examples=20, deadline=None)
@given(bundles(safe_dates=True))
def test_compatibility_date_shift_in_bundles_uses_each_entry_id(case: tuple[Resource, Secrets]) -> None:
    bundle, _ = case
    result = masked(COMPAT_SHIFT, bundle)
    check_ms_shift(bundle, result, bundle["id"], into_entries=False)
    for before, after in zip(bundle["entry"], result["entry"], strict=True):
        resource = before["resource"]
        check_ms_shift(resource, after["resource"], resource["id"], into_entries=True)

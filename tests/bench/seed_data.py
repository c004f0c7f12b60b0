"""Seed data for the fhirwall benchmarks: one Patient and its Observations.

The resources come from FHIR JSON files (``*.json`` or ``*.json.gz``; a Bundle, or single
resources) found at a path given on the command line, else in the ``FHIRWALL_BENCH_DATA``
environment variable, else in the repository's ``examples/data/`` (the first file with a
Patient). When none of those holds a Patient, deterministic synthetic resources of realistic
size (a ~3.4 KB US-Core-style Patient, ~0.8 KB vital-sign Observations) are generated instead,
so the benchmark never depends on files outside the repository.
"""

from __future__ import annotations

import copy
import gzip
import json
import os
from pathlib import Path
from typing import Any

Json = dict[str, Any]

DATA_ENV = "FHIRWALL_BENCH_DATA"
# Synthea data: a 3.4 KB Patient with 60+ Observations (the carebundle patients there are smaller)
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "examples" / "data" / "synthea-r4"
JSON_SUFFIXES = (".json", ".json.gz")
MIN_OBSERVATIONS = 60
# Reference elements of an Observation that usually point into the source Bundle (urn:uuid:...)
# and would dangle once the Observation is created on its own.
LOCAL_REFERENCE_KEYS = ("id", "encounter", "hasMember", "derivedFrom", "partOf", "basedOn", "focus")

_V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
_US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition/"
_OMB = "urn:oid:2.16.840.1.113883.6.238"


def candidate_files(data_arg: str | None) -> list[Path]:
    """Return the JSON files to look for seed data in, in order of preference."""
    for source in (data_arg, os.environ.get(DATA_ENV), str(DEFAULT_DATA_DIR)):
        if not source:
            continue
        path = Path(source)
        if path.is_file():
            return [path]
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.name.endswith(JSON_SUFFIXES))
            if files:
                return files
    return []


def read_json(path: Path) -> object:
    """Parse a JSON file, gunzipping ``*.gz`` files."""
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        raw = gzip.decompress(raw)
    return json.loads(raw)


def resources_of(path: Path) -> list[Json]:
    """Return the resources in a JSON file: a Bundle's entries or a single resource."""
    try:
        doc = read_json(path)
    except (OSError, ValueError, EOFError):
        return []
    if not isinstance(doc, dict):
        return []
    if doc.get("resourceType") == "Bundle":
        return [e["resource"] for e in doc.get("entry", []) if isinstance(e.get("resource"), dict)]
    return [doc] if "resourceType" in doc else []


def load_seed(data_arg: str | None) -> tuple[Json, list[Json], str]:
    """Return a Patient, its Observations and a description of where they came from."""
    for path in candidate_files(data_arg):
        resources = resources_of(path)
        patients = [r for r in resources if r.get("resourceType") == "Patient"]
        if patients:
            observations = [r for r in resources if r.get("resourceType") == "Observation"]
            return patients[0], observations, str(path)
    observations = [synthetic_observation(n) for n in range(MIN_OBSERVATIONS + 20)]
    return synthetic_patient(), observations, "built-in synthetic data"


def _coding(system: str, code: str, display: str) -> Json:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _identifier(n: int) -> Json:
    kind = _coding(_V2_0203, "MR", "Medical Record Number")
    return {"system": f"https://example.org/fhir/mrn/{n}", "value": f"MRN-{n:06d}", "type": kind}


def _address(n: int) -> Json:
    return {
        "use": "home",
        "line": [f"{100 + n} Example Street", f"Apartment {n}"],
        "city": "Springfield",
        "state": "MA",
        "postalCode": "01101",
        "country": "US",
    }


def _race_extension() -> Json:
    parts = [
        {"url": "ombCategory", "valueCoding": {"system": _OMB, "code": "2106-3", "display": "White"}},
        {"url": "text", "valueString": "White"},
    ]
    return {"url": _US_CORE + "us-core-race", "extension": parts}


def synthetic_patient() -> Json:
    """Build a deterministic US-Core-style Patient of roughly 3.4 KB (once stored)."""
    div = '<div xmlns="http://www.w3.org/1999/xhtml">Synthetic benchmark patient</div>'
    return {
        "resourceType": "Patient",
        "meta": {"profile": [_US_CORE + "us-core-patient"]},
        "text": {"status": "generated", "div": div},
        "extension": [
            _race_extension(),
            {"url": _US_CORE + "us-core-birthsex", "valueCode": "F"},
        ],
        "identifier": [_identifier(n) for n in range(1, 9)],
        "name": [{"use": "official", "family": "Example", "given": ["Alex", "Jordan"], "prefix": ["Ms."]}],
        "telecom": [
            {"system": "phone", "value": "555-0100", "use": "home"},
            {"system": "email", "value": "alex.example@example.org"},
        ],
        "gender": "female",
        "birthDate": "1970-01-01",
        "address": [_address(n) for n in range(1, 4)],
        "maritalStatus": _coding("http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "M", "Married"),
        "communication": [{"language": _coding("urn:ietf:bcp:47", "en-US", "English (United States)")}],
    }


def synthetic_observation(n: int) -> Json:
    """Build a deterministic vital-signs Observation of roughly 0.8 KB (once stored)."""
    when = f"2020-{1 + n % 12:02d}-{1 + n % 28:02d}T10:{n % 60:02d}:00Z"
    category = "http://terminology.hl7.org/CodeSystem/observation-category"
    interpretation = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
    return {
        "resourceType": "Observation",
        "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/heartrate"]},
        "status": "final",
        "category": [_coding(category, "vital-signs", "Vital signs")],
        "code": _coding("http://loinc.org", "8867-4", "Heart rate"),
        "effectiveDateTime": when,
        "issued": when,
        "valueQuantity": _quantity(60 + n % 40),
        "interpretation": [_coding(interpretation, "N", "Normal")],
        "referenceRange": [{"low": _quantity(50), "high": _quantity(100), "text": "normal resting range"}],
    }


def _quantity(value: int) -> Json:
    return {"value": value, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"}


def prepare_observations(observations: list[Json], patient_id: str) -> list[Json]:
    """Copy the Observations to point at the seeded Patient, padded to MIN_OBSERVATIONS."""
    source = observations or [synthetic_observation(n) for n in range(MIN_OBSERVATIONS)]
    out: list[Json] = []
    while len(out) < max(MIN_OBSERVATIONS, len(source)):
        obs = copy.deepcopy(source[len(out) % len(source)])
        for key in LOCAL_REFERENCE_KEYS:
            obs.pop(key, None)
        obs["subject"] = {"reference": f"Patient/{patient_id}"}
        out.append(obs)
    return out


def transaction_bundle(resources: list[Json]) -> Json:
    """Wrap resources in a transaction Bundle that creates each of them."""
    entries = [{"resource": r, "request": {"method": "POST", "url": r["resourceType"]}} for r in resources]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}

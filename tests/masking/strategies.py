"""Hypothesis strategies for realistic FHIR R4 resources: Patients, Observations and Bundles of them.

Every identifying value the generators place (names, phone numbers, e-mail addresses, streets, cities,
birth dates) is recorded in a ``Secrets`` object, so tests can check that masking removed it everywhere.
Secret texts are built so they cannot be substrings of FHIR structure (keys, system URLs, codes, ids):
names and places are ``Zq`` + at least 8 random lower-case letters, phones are ``+1 (ddd) ddd-dddd``,
e-mail addresses ``zq...@mail.example.net``, and birth dates fall before 2000 while every other date
falls in 2000-2025.

Generated resources validate as FHIR R4B (``fhir.resources``); ``safe_dates=True`` generates only dates
with day precision that imply no age over 89, so a date shift never falls back to redaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

__all__ = [
    "BIRTH_PLACE_URL",
    "QUALIFIER_URL",
    "PatientCase",
    "PatientRecord",
    "Secrets",
    "bundles",
    "fhir_ids",
    "observations",
    "patient_cases",
    "patient_record",
    "uuid_texts",
]

Resource = dict[str, Any]

BIRTH_PLACE_URL = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace"
BIRTH_TIME_URL = "http://hl7.org/fhir/StructureDefinition/patient-birthTime"
OWN_NAME_URL = "http://hl7.org/fhir/StructureDefinition/humanname-own-name"
QUALIFIER_URL = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-qualifier"
STREET_NAME_URL = "http://hl7.org/fhir/StructureDefinition/iso21090-ADXP-streetName"
RACE_URL = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
ALIAS_URL = "http://example.org/fhir/StructureDefinition/alias-name"
EMERGENCY_URL = "http://example.org/fhir/StructureDefinition/emergency-contact"
GEOLOCATION_URL = "http://hl7.org/fhir/StructureDefinition/geolocation"
XHTML = "http://www.w3.org/1999/xhtml"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
BASE_URL = "https://fhir.example.org/r4"

_LOWER = "abcdefghijklmnopqrstuvwxyz"
_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-."
_STATES = ("MA", "NY", "CA", "TX", "WA", "IL", "OH", "GA")
_ZIP3 = ("021", "100", "945", "750", "980", "606", "441", "303", "036", "203", "556", "893")
_VITALS: tuple[tuple[str, str, str, str, float, float], ...] = (
    ("8302-2", "Body height", "cm", "cm", 40.0, 210.0),
    ("29463-7", "Body weight", "kg", "kg", 2.0, 180.0),
    ("8867-4", "Heart rate", "/min", "/min", 30.0, 200.0),
    ("8310-5", "Body temperature", "Cel", "Cel", 34.0, 42.0),
    ("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", "mg/dL", 40.0, 400.0),
)
_TEXT_RESULTS = ("negative", "positive", "trace", "not detected", "within normal limits")
_BIRTH_FLOOR_SAFE = date(1937, 1, 1)  # no age over 89 on any clock date before 2026-12-31


@dataclass
class Secrets:
    """Identifying values placed in generated resources, by kind."""

    names: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    emails: list[str] = field(default_factory=list)
    streets: list[str] = field(default_factory=list)
    cities: list[str] = field(default_factory=list)
    postal_codes: list[str] = field(default_factory=list)
    birth_dates: list[str] = field(default_factory=list)

    def texts(self) -> list[str]:
        """Every secret that must not reappear as a substring of masked output."""
        return [
            *self.names,
            *self.phones,
            *self.emails,
            *self.streets,
            *self.cities,
            *self.birth_dates,
        ]

    def merge(self, other: Secrets) -> None:
        """Add ``other``'s values to these."""
        for name in ("names", "phones", "emails", "streets", "cities", "postal_codes", "birth_dates"):
            getattr(self, name).extend(getattr(other, name))


@dataclass
class PatientCase:
    """A generated Patient and the secrets placed in it."""

    resource: Resource
    secrets: Secrets


# ---- primitive values ------------------------------------------------------------------------------


def fhir_ids() -> st.SearchStrategy[str]:
    """Resource ids: UUIDs, Synthea/EHR-like ids, or any text the FHIR id type allows."""
    return st.one_of(
        uuid_texts(),
        st.builds(lambda n: f"pat-{n}", st.integers(1, 10**9)),
        st.text(_ID_ALPHABET, min_size=1, max_size=64),
    )


def uuid_texts() -> st.SearchStrategy[str]:
    """Lower-case UUID texts (as in ``urn:uuid:`` full URLs)."""
    return st.uuids().map(str)


def _secret_word() -> st.SearchStrategy[str]:
    return st.text(_LOWER, min_size=8, max_size=12).map(lambda letters: "Zq" + letters)


def _digits(size: int) -> st.SearchStrategy[str]:
    return st.text("0123456789", min_size=size, max_size=size)


def _phones() -> st.SearchStrategy[str]:
    return st.builds(lambda a, b, c: f"+1 ({a}) {b}-{c}", _digits(3), _digits(3), _digits(4))


def _emails() -> st.SearchStrategy[str]:
    return st.text(_LOWER, min_size=8, max_size=12).map(lambda letters: f"zq{letters}@mail.example.net")


def _postal_codes() -> st.SearchStrategy[str]:
    plain = st.builds(lambda zip3, rest: zip3 + rest, st.sampled_from(_ZIP3), _digits(2))
    return st.one_of(plain, st.builds(lambda zip5, plus4: f"{zip5}-{plus4}", plain, _digits(4)))


def _dates(low: date, high: date) -> st.SearchStrategy[date]:
    return st.dates(min_value=low, max_value=high)


_ZONES = ("Z", "+00:00", "-05:00", "+01:00", "+05:30", "-10:00")


def _date_times(low: date, high: date, *, safe: bool) -> st.SearchStrategy[str]:
    """dateTime texts: with a zone (and optional fraction) or day precision; coarser ones unless safe."""
    full = st.builds(
        _format_date_time,
        st.datetimes(
            min_value=datetime.combine(low, datetime.min.time()),
            max_value=datetime.combine(high, datetime.min.time()),
        ),
        st.sampled_from(_ZONES),
        st.sampled_from(("", ".1", ".123", ".123456")),
    )
    day = _dates(low, high).map(date.isoformat)
    if safe:
        return st.one_of(full, day)
    coarse = st.builds(
        lambda value, size: value.isoformat()[:size], _dates(low, high), st.sampled_from((4, 7))
    )
    return st.one_of(full, day, coarse)


def _format_date_time(value: datetime, zone: str, fraction: str) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S") + fraction + zone


def _instants(low: date, high: date) -> st.SearchStrategy[str]:
    return st.builds(
        _format_date_time,
        st.datetimes(
            min_value=datetime.combine(low, datetime.min.time()),
            max_value=datetime.combine(high, datetime.min.time()),
        ),
        st.sampled_from(_ZONES),
        st.sampled_from(("", ".000", ".5")),
    )


_EVENT_LOW = date(2000, 1, 1)
_EVENT_HIGH = date(2025, 12, 1)


# ---- data types ------------------------------------------------------------------------------------


@st.composite
def _human_name(draw: st.DrawFn, secrets: Secrets) -> Resource:
    family = draw(_secret_word())
    given = draw(st.lists(_secret_word(), min_size=1, max_size=2))
    secrets.names += [family, *given]
    name: Resource = {"use": draw(st.sampled_from(("official", "usual", "maiden", "nickname")))}
    name["family"] = family
    if draw(st.booleans()):
        name["_family"] = {"extension": [{"url": OWN_NAME_URL, "valueString": family}]}
    name["given"] = given
    if draw(st.booleans()):  # a middle initial, with the ISO 21090 qualifier on it (lists stay aligned)
        name["given"] = [*given, draw(st.sampled_from("ABCDEFGHJKLMNPRSTW"))]
        name["_given"] = [*([None] * len(given)), {"extension": [{"url": QUALIFIER_URL, "valueCode": "IN"}]}]
    if draw(st.booleans()):
        name["prefix"] = [draw(st.sampled_from(("Mr.", "Mrs.", "Ms.", "Dr.")))]
    if draw(st.booleans()):
        name["period"] = {"start": draw(_dates(_EVENT_LOW, _EVENT_HIGH)).isoformat()}
    return name


@st.composite
def _contact_point(draw: st.DrawFn, secrets: Secrets) -> Resource:
    system = draw(st.sampled_from(("phone", "email", "fax", "sms")))
    if system == "email":
        value = draw(_emails())
        secrets.emails.append(value)
    else:
        value = draw(_phones())
        secrets.phones.append(value)
    point: Resource = {"system": system, "value": value}
    if draw(st.booleans()):
        point["use"] = draw(st.sampled_from(("home", "work", "mobile")))
    if draw(st.booleans()):
        point["rank"] = draw(st.integers(1, 3))
    return point


@st.composite
def _address(draw: st.DrawFn, secrets: Secrets) -> Resource:
    street_name = draw(_secret_word())
    street = f"{draw(st.integers(1, 9999))} {street_name} Street"
    city = draw(_secret_word()) + "ville"
    postal_code = draw(_postal_codes())
    secrets.streets += [street, street_name]
    secrets.cities.append(city)
    secrets.postal_codes.append(postal_code)
    address: Resource = {"use": draw(st.sampled_from(("home", "work", "old")))}
    address["line"] = [street]
    if draw(st.booleans()):
        address["_line"] = [{"extension": [{"url": STREET_NAME_URL, "valueString": street_name}]}]
    address.update(city=city, state=draw(st.sampled_from(_STATES)), postalCode=postal_code, country="US")
    if draw(st.booleans()):
        address["extension"] = [
            {
                "url": GEOLOCATION_URL,
                "extension": [
                    {"url": "latitude", "valueDecimal": draw(st.integers(-8999, 8999)) / 100},
                    {"url": "longitude", "valueDecimal": draw(st.integers(-17999, 17999)) / 100},
                ],
            }
        ]
    return address


def _coding(system: str, code: str, display: str) -> Resource:
    return {"system": system, "code": code, "display": display}


def _narrative(text: str) -> Resource:
    return {"status": "generated", "div": f'<div xmlns="{XHTML}"><p>{text}</p></div>'}


# ---- resources -------------------------------------------------------------------------------------


@st.composite
def patient_cases(
    draw: st.DrawFn,
    *,
    patient_id: str | None = None,
    safe_dates: bool = False,
    contained: bool = True,
) -> PatientCase:
    """A Patient with names, telecom, addresses, a birth date (with birth time), identifiers, simple, nested
    and primitive extensions, relatives, contained resources and a narrative echoing the name."""
    secrets = Secrets()
    resource: Resource = {
        "resourceType": "Patient",
        "id": patient_id if patient_id is not None else draw(fhir_ids()),
    }
    if draw(st.booleans()):
        resource["meta"] = {"lastUpdated": draw(_instants(_EVENT_LOW, _EVENT_HIGH))}
        if draw(st.booleans()):
            resource["meta"]["security"] = [
                _coding("http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "N", "normal")
            ]
    names = draw(st.lists(_human_name(secrets), min_size=1, max_size=2))
    telecom = draw(st.lists(_contact_point(secrets), max_size=3))
    addresses = draw(st.lists(_address(secrets), max_size=2))
    low = _BIRTH_FLOOR_SAFE if safe_dates else date(1920, 1, 1)
    birth = draw(_dates(low, date(1999, 12, 31)))
    birth_text = birth.isoformat()
    secrets.birth_dates.append(birth_text)
    div = f"{' '.join(names[0]['given'])} {names[0]['family']}, born {birth_text}"
    if telecom:
        div += f", {telecom[0]['value']}"
    if addresses:
        div += f", {addresses[0]['line'][0]}, {addresses[0]['city']}"
    resource["text"] = _narrative(div)
    resource["extension"] = draw(_patient_extensions(secrets))
    if not resource["extension"]:
        del resource["extension"]
    resource["identifier"] = [
        {
            "use": "usual",
            "type": {"coding": [_coding("http://terminology.hl7.org/CodeSystem/v2-0203", "MR", "MRN")]},
            "system": "http://hospital.example.org/mrn",
            "value": draw(st.builds(lambda n: f"MRN{n:08d}", st.integers(0, 10**8 - 1))),
        }
    ]
    if draw(st.booleans()):
        resource["identifier"].append(
            {
                "system": "http://hl7.org/fhir/sid/us-ssn",
                "value": draw(st.builds(lambda a, b, c: f"{a}-{b}-{c}", _digits(3), _digits(2), _digits(4))),
                "period": {"start": draw(_dates(_EVENT_LOW, _EVENT_HIGH)).isoformat()},
            }
        )
    resource["active"] = draw(st.booleans())
    resource["name"] = names
    if telecom:
        resource["telecom"] = telecom
    resource["gender"] = draw(st.sampled_from(("male", "female", "other", "unknown")))
    resource["birthDate"] = birth_text
    if draw(st.booleans()):
        clock = draw(st.times()).strftime("%H:%M:%S")
        resource["_birthDate"] = {
            "extension": [{"url": BIRTH_TIME_URL, "valueDateTime": f"{birth_text}T{clock}-05:00"}]
        }
    if draw(st.booleans()):
        resource["deceasedDateTime"] = draw(_date_times(_EVENT_LOW, _EVENT_HIGH, safe=safe_dates))
    if addresses:
        resource["address"] = addresses
    if draw(st.booleans()):
        resource["contact"] = [
            {
                "relationship": [
                    {"coding": [_coding("http://terminology.hl7.org/CodeSystem/v2-0131", "N", "Next-of-Kin")]}
                ],
                "name": draw(_human_name(secrets)),
                "telecom": draw(st.lists(_contact_point(secrets), min_size=1, max_size=2)),
                "address": draw(_address(secrets)),
            }
        ]
    if contained and draw(st.booleans()):
        resource["contained"] = [draw(_contained_practitioner(secrets))]
        resource["generalPractitioner"] = [{"reference": "#" + resource["contained"][0]["id"]}]
    return PatientCase(resource, secrets)


@st.composite
def _patient_extensions(draw: st.DrawFn, secrets: Secrets) -> list[Resource]:
    extensions: list[Resource] = []
    if draw(st.booleans()):
        extensions.append(
            {
                "url": RACE_URL,
                "extension": [
                    {
                        "url": "ombCategory",
                        "valueCoding": _coding("urn:oid:2.16.840.1.113883.6.238", "2106-3", "White"),
                    },
                    {"url": "text", "valueString": "White"},
                ],
            }
        )
    if draw(st.booleans()):
        extensions.append({"url": BIRTH_PLACE_URL, "valueAddress": draw(_address(secrets))})
    if draw(st.booleans()):
        extensions.append({"url": ALIAS_URL, "valueHumanName": draw(_human_name(secrets))})
    if draw(st.booleans()):
        extensions.append(
            {
                "url": EMERGENCY_URL,
                "extension": [
                    {"url": "name", "valueHumanName": draw(_human_name(secrets))},
                    {"url": "telecom", "valueContactPoint": draw(_contact_point(secrets))},
                ],
            }
        )
    return extensions


@st.composite
def _contained_practitioner(draw: st.DrawFn, secrets: Secrets) -> Resource:
    practitioner: Resource = {
        "resourceType": "Practitioner",
        "id": draw(st.text(_LOWER, min_size=1, max_size=8)),
        "name": [draw(_human_name(secrets))],
    }
    if draw(st.booleans()):
        practitioner["telecom"] = [draw(_contact_point(secrets))]
    if draw(st.booleans()):
        practitioner["address"] = [draw(_address(secrets))]
    return practitioner


@st.composite
def observations(
    draw: st.DrawFn,
    subject: str | None = None,
    *,
    safe_dates: bool = False,
    observation_id: str | None = None,
) -> Resource:
    """A vital-sign or lab Observation (Quantity or string value, components, period or dateTime)."""
    loinc, display, unit, code, low, high = draw(st.sampled_from(_VITALS))
    resource: Resource = {
        "resourceType": "Observation",
        "id": observation_id if observation_id is not None else draw(fhir_ids()),
    }
    if draw(st.booleans()):
        resource["meta"] = {"lastUpdated": draw(_instants(_EVENT_LOW, _EVENT_HIGH))}
    resource["status"] = draw(st.sampled_from(("final", "amended", "preliminary", "registered")))
    resource["category"] = [
        {
            "coding": [
                _coding(
                    "http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs", "Vital Signs"
                )
            ]
        }
    ]
    resource["code"] = {"coding": [_coding(LOINC, loinc, display)], "text": display}
    if subject is not None:
        resource["subject"] = {"reference": subject}
    if draw(st.booleans()):
        resource["effectiveDateTime"] = draw(_date_times(_EVENT_LOW, _EVENT_HIGH, safe=safe_dates))
    else:
        start = draw(_dates(_EVENT_LOW, _EVENT_HIGH))
        end = start + timedelta(days=draw(st.integers(0, 30)))
        resource["effectivePeriod"] = {"start": start.isoformat(), "end": end.isoformat()}
    resource["issued"] = draw(_instants(_EVENT_LOW, _EVENT_HIGH))
    kind = draw(st.sampled_from(("quantity", "string", "components")))
    if kind == "quantity":
        value = round(draw(st.floats(low, high, allow_nan=False)), 1)
        resource["valueQuantity"] = {"value": value, "unit": unit, "system": UCUM, "code": code}
        resource["text"] = _narrative(f"{display}: {value} {unit}")
    elif kind == "string":
        resource["valueString"] = draw(st.sampled_from(_TEXT_RESULTS))
    else:
        resource["code"] = {
            "coding": [_coding(LOINC, "85354-9", "Blood pressure panel")],
            "text": "Blood pressure",
        }
        resource["component"] = [
            {
                "code": {"coding": [_coding(LOINC, part_code, part)]},
                "valueQuantity": {
                    "value": draw(st.integers(40, 220)),
                    "unit": "mm[Hg]",
                    "system": UCUM,
                    "code": "mm[Hg]",
                },
            }
            for part_code, part in (
                ("8480-6", "Systolic blood pressure"),
                ("8462-4", "Diastolic blood pressure"),
            )
        ]
    if draw(st.booleans()):
        resource["performer"] = [{"reference": f"Practitioner/{draw(fhir_ids())}"}]
    return resource


@dataclass
class PatientRecord:
    """One patient's resources: the Patient and Observations referencing it, and the secrets placed."""

    patient: Resource
    observations: list[Resource]
    secrets: Secrets


def _reference_forms(patient_id: str) -> st.SearchStrategy[str]:
    return st.sampled_from(
        (
            f"Patient/{patient_id}",
            f"{BASE_URL}/Patient/{patient_id}",
            f"Patient/{patient_id}/_history/2",
        )
    )


@st.composite
def patient_record(
    draw: st.DrawFn, *, safe_dates: bool = False, max_observations: int = 4, uuid_ids: bool = False
) -> PatientRecord:
    """A Patient plus Observations whose subject is ``Patient/<id>`` (relative, absolute or versioned)."""
    patient_id = draw(uuid_texts() if uuid_ids else fhir_ids())
    case = draw(patient_cases(patient_id=patient_id, safe_dates=safe_dates))
    found = [
        draw(observations(draw(_reference_forms(patient_id)), safe_dates=safe_dates))
        for _ in range(draw(st.integers(1, max_observations)))
    ]
    return PatientRecord(case.resource, found, case.secrets)


@st.composite
def bundles(draw: st.DrawFn, *, safe_dates: bool = False, max_patients: int = 2) -> tuple[Resource, Secrets]:
    """A searchset (absolute fullUrls) or collection (``urn:uuid:`` fullUrls, Observations referencing the
    Patient's full URL) Bundle of Patients and their Observations."""
    kind = draw(st.sampled_from(("searchset", "collection")))
    secrets = Secrets()
    entries: list[Resource] = []
    for _ in range(draw(st.integers(1, max_patients))):
        record = draw(patient_record(safe_dates=safe_dates, max_observations=3, uuid_ids=True))
        secrets.merge(record.secrets)
        patient = record.patient
        if kind == "collection":
            patient_url = f"urn:uuid:{patient['id']}"
            for observation in record.observations:
                observation["id"] = draw(uuid_texts())
                observation["subject"] = {"reference": patient_url}
            entries.append({"fullUrl": patient_url, "resource": patient})
            entries += [
                {"fullUrl": f"urn:uuid:{observation['id']}", "resource": observation}
                for observation in record.observations
            ]
        else:
            entries.append(
                {
                    "fullUrl": f"{BASE_URL}/Patient/{patient['id']}",
                    "resource": patient,
                    "search": {"mode": "match"},
                }
            )
            entries += [
                {
                    "fullUrl": f"{BASE_URL}/Observation/{observation['id']}",
                    "resource": observation,
                    "search": {"mode": "include"},
                }
                for observation in record.observations
            ]
    bundle: Resource = {
        "resourceType": "Bundle",
        "id": draw(uuid_texts()),
        "type": kind,
        "timestamp": draw(_instants(_EVENT_LOW, _EVENT_HIGH)),
        "entry": entries,
    }
    if kind == "searchset":
        bundle["total"] = len(entries)
    return bundle, secrets

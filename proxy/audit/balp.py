"""One request's ``AuditRecord`` as FHIR R4 AuditEvents following IHE Basic Audit Log Patterns (BALP).

Pure functions over dicts; :func:`audit_events` returns the AuditEvents for one record.

**Events.** Query-like interactions (``search-*``, ``history-*``, ``operation``) follow the BALP
patient-query pattern: one AuditEvent *per patient* whose data the answer carried (sorted by id), each
holding only that patient; with no patient, one event. Every other interaction gives one event holding all
its patients. A break-glass record (``break_glass``) adds a Security Alert event, and so does a consent
denial (decision ``deny`` with error type ``ConsentDeniedError`` or a reason starting with "consent").
Ids are ``uuid5(ID_NAMESPACE, "{request_id}:{patient or '-'}")`` (alerts: ``"{request_id}:alert:{kind}"``),
so a resent record gives the same ids and delivery can ``PUT AuditEvent/<id>`` (a record without a request
id uses ``started|method|route|client_address`` in its place).

**REST event.**
``type`` audit-event-type ``rest``; ``subtype`` the restful-interaction code (``urn:fhirwall:interaction``
for a request that was never classified) plus, for operations, the operation name without ``$`` in
``urn:fhirwall:operation``; ``action`` C create, R read/vread/history-*/capabilities, U update/patch,
D delete, E search/operation/batch/transaction; ``recorded`` = ``period.start`` = ``started`` (UTC instant
with milliseconds), ``period.end`` = started + ``duration_ms``; ``outcome`` 0/4/8 from the status, and for
failures ``outcomeDesc`` = ``"HTTP <status> <error type>: <reasons>"`` (reasons are the proxy's own policy
texts and issue codes, never request values).

**Agents** (BALP basic RESTful + OAuth "comprehensive" patterns):

- user (only with a subject or fhirUser, and not when the subject is just the client id, as in backend
  services): ``requestor`` true; type v3-ParticipationType ``IRCP``, or ``AUT`` for create/update/patch and
  ``INF`` for delete (BALP binds writes to its DataSources value set); ``who.reference`` = fhirUser,
  ``who.identifier`` = {issuer, subject}; ``name`` = subject; ``role`` one CodeableConcept per token role
  (``text`` = the role, plus a ``urn:fhirwall:role`` coding when the role is a valid FHIR code: the proxy
  does not know the issuer's role vocabulary); ``purposeOfUse`` v3-ActReason codings as given; ``policy`` =
  ``urn:ietf:params:oauth:jti:<jti>``. BALP forbids ``network`` on the user: it is on the client.
- client: type DCM ``110150`` Application plus the BALP direction code (``110153`` Source Role ID, or
  ``110152`` Destination Role ID for read/vread/capabilities, where data flows to the client);
  ``who.identifier`` = {issuer or ``urn:fhirwall:client``, client_id}; ``network`` = client address (type 2
  IP, else 1 machine name). It is the requestor (and carries the jti) when there is no user.
- server (this proxy): the other direction code (plus provenance-participant-type ``custodian`` for
  delete); ``who`` = the observer reference; ``network`` = observer URL (type 5) when known.

``source``: ``observer`` = {identifier ``urn:fhirwall:observer`` / name, display name}, ``site``, type
security-source-type 4 (Application Server).

**Entities**: for query-like interactions a query entity (type 2, role 24, no ``what``) whose ``query`` is
base64 of ``"{method} {path}[?{query}]"``: ``path`` is ``route`` with ``{id}`` filled from ``resource_id``
(the record keeps no raw path, so a compartment id stays ``{id}``) and ``query`` is the raw query string.
Then the resources (``Type/id``: the requested one and ``resources``, first :data:`MAX_RESOURCE_ENTITIES`,
type 2 / role 4), left out of per-patient events when a query touched several patients (they cannot be
attributed to one patient); then one patient entity (type 1 / role 1) per patient; then the request id
as BALP's ``XrequestId`` entity (``what.identifier.value``), which is where the request id is found.

**Extensions** (``https://fhirwall.org/fhir/StructureDefinition/``): ``audit-decision`` (valueCode
permit | deny | not-evaluated), ``audit-reason`` (valueString, repeating), ``audit-break-glass``
(valueBoolean, only when true), ``audit-masking`` (``profile`` valueString + ``count`` valueInteger, only
when a profile applied), ``audit-consent`` (valueReference ``Consent/<id>``, repeating).

**Security Alert** events: type DCM ``110113``, action E, subtype ``urn:fhirwall:security-alert``
``break-glass`` or ``consent-deny`` (the latter also BALP AuthZsubType ``AuthZ-Consent``), the same agents,
source, outcome and extensions, and entities for the patients, the Consents (type resource-types
``Consent``) and the request id.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import ipaddress
import math
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from proxy.audit.record import AuditRecord, Decision, Outcome

__all__ = ["EXTENSION_BASE", "ID_NAMESPACE", "MAX_RESOURCE_ENTITIES", "ObserverInfo", "audit_events"]

Json = dict[str, Any]

MAX_RESOURCE_ENTITIES = 100
"""At most this many resource entities per event (a large Bundle is summarised by its patients)."""

ID_NAMESPACE = uuid.UUID("08d9c390-56d5-4095-a2c6-711765a381a4")
"""The fixed uuid5 namespace of AuditEvent ids (never change it: ids must stay stable across releases)."""

_NAMESPACE_BYTES = ID_NAMESPACE.bytes
_LAST_FAST_SECOND = 253_402_300_799  # 9999-12-31T23:59:59Z: later (or negative) instants take the slow path

EXTENSION_BASE = "https://fhirwall.org/fhir/StructureDefinition/"

_DCM = "http://dicom.nema.org/resources/ontology/DCM"
_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
_INTERACTION = "http://hl7.org/fhir/restful-interaction"
_PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
_ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
_SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
_OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
_PROVENANCE_PARTICIPANT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
_RESOURCE_TYPES = "http://hl7.org/fhir/resource-types"
_BALP_ENTITY_TYPE = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
_BALP_AUTHZ = "https://profiles.ihe.net/ITI/BALP/CodeSystem/AuthZsubType"
_OWN_INTERACTION = "urn:fhirwall:interaction"
_OPERATION = "urn:fhirwall:operation"
_ALERT = "urn:fhirwall:security-alert"
_ROLE = "urn:fhirwall:role"
_CLIENT = "urn:fhirwall:client"
_OBSERVER = "urn:fhirwall:observer"
_JTI_PREFIX = "urn:ietf:params:oauth:jti:"

_ACTIONS = {
    "create": "C",
    "read": "R",
    "vread": "R",
    "history": "R",
    "history-instance": "R",
    "history-type": "R",
    "history-system": "R",
    "capabilities": "R",
    "update": "U",
    "patch": "U",
    "delete": "D",
    "search": "E",
    "search-type": "E",
    "search-system": "E",
    "search-compartment": "E",
    "operation": "E",
    "batch": "E",
    "transaction": "E",
}
"""AuditEvent.action per restful-interaction code (the keys are all the R4 codes)."""
_QUERIES = frozenset(
    code for code in _ACTIONS if code.startswith(("search", "history")) or code == "operation"
)
_SERVER_SOURCED = frozenset({"read", "vread", "capabilities"})
_CODE = re.compile(r"[^\s]+( [^\s]+)*")


@dataclass(frozen=True)
class ObserverInfo:
    """This proxy as the audit source: its name, site (e.g. host or deployment) and public base URL."""

    name: str
    site: str | None = None
    url: str | None = None


def audit_events(record: AuditRecord, *, observer: ObserverInfo) -> list[Json]:
    """The BALP AuditEvents for one request: the REST event(s), then any Security Alert events."""
    common = _common(record, observer)
    events = [_rest_event(record, common, key, patients) for key, patients in _event_patients(record)]
    return events + _alerts(record, common)


# --- events ------------------------------------------------------------------------------------------


def _event_patients(record: AuditRecord) -> list[tuple[str, list[str]]]:
    """(id key, patients) per REST event: one per patient for queries, else one event with them all."""
    patients = sorted(record.patients)
    if record.interaction in _QUERIES and patients:
        return [(patient, [patient]) for patient in patients]
    return [("-", patients)]


def _rest_event(record: AuditRecord, common: Json, key: str, patients: list[str]) -> Json:
    attributable = record.interaction not in _QUERIES or len(record.patients) <= 1
    entities = _query_entities(record) + (_resource_entities(record) if attributable else [])
    entities += [_patient_entity(patient) for patient in patients] + _request_entities(record)
    kind = {
        "type": _coding(_EVENT_TYPE, "rest", "Restful Operation"),
        "subtype": _subtypes(record),
        "action": _ACTIONS.get(record.interaction, "E"),
    }
    return _event(_event_id(record, key), kind, common, entities)


def _alerts(record: AuditRecord, common: Json) -> list[Json]:
    alerts = []
    if record.break_glass:
        alerts.append(_alert(record, common, "break-glass", []))
    if _consent_denied(record):
        alerts.append(_alert(record, common, "consent-deny", [_coding(_BALP_AUTHZ, "AuthZ-Consent")]))
    return alerts


def _alert(record: AuditRecord, common: Json, kind: str, extra: list[Json]) -> Json:
    entities = [_patient_entity(patient) for patient in sorted(record.patients)]
    entities += [_consent_entity(consent) for consent in _unique(record.consent_ids)]
    entities += _request_entities(record)
    alert_kind = {
        "type": _coding(_DCM, "110113", "Security Alert"),
        "subtype": [*extra, _coding(_ALERT, kind)],
        "action": "E",
    }
    return _event(_event_id(record, f"alert:{kind}"), alert_kind, common, entities)


def _consent_denied(record: AuditRecord) -> bool:
    if record.decision != Decision.DENY:
        return False
    by_consent = any(reason.lower().startswith("consent") for reason in record.reasons)
    return by_consent or record.error_type == "ConsentDeniedError"


def _event(event_id: str, kind: Json, common: Json, entities: list[Json]) -> Json:
    event: Json = {
        "resourceType": "AuditEvent",
        "id": event_id,
        "extension": common["extension"],
        **kind,
        **common,
    }
    if entities:
        event["entity"] = entities
    return event


def _event_id(record: AuditRecord, key: str) -> str:
    base = record.request_id or f"{record.started!r}|{record.method}|{record.route}|{record.client_address}"
    return _uuid5(f"{base}:{key}")


def _uuid5(name: str) -> str:
    """``str(uuid.uuid5(ID_NAMESPACE, name))`` without the UUID object (it costs more than the hash)."""
    digest = bytearray(
        hashlib.sha1(_NAMESPACE_BYTES + name.encode("utf-8"), usedforsecurity=False).digest()[:16]
    )
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _subtypes(record: AuditRecord) -> list[Json]:
    code = record.interaction or "unclassified"
    subtypes = [_coding(_INTERACTION if code in _ACTIONS else _OWN_INTERACTION, code)]
    if record.operation:
        subtypes.append(_coding(_OPERATION, record.operation.lstrip("$")))
    return subtypes


# --- what every event of a record shares -------------------------------------------------------------


def _common(record: AuditRecord, observer: ObserverInfo) -> Json:
    recorded = _instant(record.started)
    common: Json = {
        "extension": _extensions(record),
        "recorded": recorded,
        "period": {
            "start": recorded,
            "end": _instant(record.started + max(record.duration_ms, 0.0) / 1000),
        },
        "outcome": record.outcome,
    }
    if record.outcome != Outcome.SUCCESS:
        common["outcomeDesc"] = _outcome_description(record)
    common["agent"] = _agents(record, observer)
    common["source"] = _source(observer.name, observer.site)  # not keyed by the observer: it hashes slowly
    return common


def _instant(seconds: float) -> str:
    """The UTC instant with milliseconds, as ``datetime.fromtimestamp(seconds, UTC).isoformat(timespec=
    "milliseconds")`` gives it with ``Z``: the whole second's text is memoised, the fraction rounded to
    microseconds half to even (as ``fromtimestamp`` does) and then truncated to milliseconds."""
    if not 0 <= seconds < _LAST_FAST_SECOND:
        return _exact_instant(seconds)
    fraction, whole = math.modf(seconds)
    micros = round(fraction * 1e6)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    return f"{_second(int(whole))}.{micros // 1000:03d}Z"


@functools.lru_cache(maxsize=4096)
def _second(whole: int) -> str:
    """The UTC instant of a whole second since the epoch, to the second, without a zone."""
    return datetime.fromtimestamp(whole, UTC).isoformat(timespec="seconds").removesuffix("+00:00")


def _exact_instant(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _outcome_description(record: AuditRecord) -> str:
    parts = [f"HTTP {record.status}" if record.status else "no HTTP answer"]
    if record.error_type:
        parts.append(record.error_type)
    head, reasons = " ".join(parts), _reasons(record)
    return f"{head}: {'; '.join(reasons)}" if reasons else head


def _reasons(record: AuditRecord) -> list[str]:
    return [reason.strip() for reason in record.reasons if reason.strip()]


def _extensions(record: AuditRecord) -> list[Json]:
    extensions = [_extension("audit-decision", valueCode=record.decision or Decision.NOT_EVALUATED)]
    extensions += [_extension("audit-reason", valueString=reason) for reason in _reasons(record)]
    if record.break_glass:
        extensions.append(_extension("audit-break-glass", valueBoolean=True))
    if record.masking_profile:
        parts: list[Json] = [{"url": "profile", "valueString": record.masking_profile}]
        parts.append({"url": "count", "valueInteger": record.masked_values})
        extensions.append(_extension("audit-masking", extension=parts))
    for consent in _unique(record.consent_ids):
        extensions.append(_extension("audit-consent", valueReference={"reference": f"Consent/{consent}"}))
    return extensions


def _extension(name: str, **value: Any) -> Json:
    return {"url": EXTENSION_BASE + name, **value}


# --- agents and source -------------------------------------------------------------------------------


def _agents(record: AuditRecord, observer: ObserverInfo) -> list[Json]:
    user = _user_agent(record) if _has_user(record) else None
    client = _client_agent(record, requestor=user is None)
    server = _server_agent(record, observer)
    return [client, server] if user is None else [user, client, server]


def _has_user(record: AuditRecord) -> bool:
    if record.fhir_user:
        return True
    return bool(record.subject) and record.subject != record.client_id


def _user_agent(record: AuditRecord) -> Json:
    who: Json = {}
    if record.fhir_user:
        who["reference"] = record.fhir_user
    if record.subject:
        who["identifier"] = _identifier(record.issuer, record.subject)
    agent: Json = {"type": {"coding": [_user_type(record.interaction)]}, "who": who, "requestor": True}
    if record.subject:
        agent["name"] = record.subject
    if record.roles:
        agent["role"] = [_role(role) for role in record.roles]
    if record.purpose_of_use:
        agent["purposeOfUse"] = [{"coding": [_coding(_ACT_REASON, code)]} for code in record.purpose_of_use]
    return agent | _token_policy(record)


def _user_type(interaction: str) -> Json:
    if interaction in ("create", "update", "patch"):
        return _coding(_PARTICIPATION, "AUT", "author (originator)")
    if interaction == "delete":
        return _coding(_PARTICIPATION, "INF", "informant")
    return _coding(_PARTICIPATION, "IRCP", "information recipient")


def _role(role: str) -> Json:
    if _CODE.fullmatch(role):
        return {"coding": [{"system": _ROLE, "code": role}], "text": role}
    return {"text": role}


def _client_agent(record: AuditRecord, *, requestor: bool) -> Json:
    client_role, _ = _directions(record)
    agent: Json = {
        "type": {"coding": [_coding(_DCM, "110150", "Application"), client_role]},
        "who": _client_who(record),
        "requestor": requestor,
    }
    if record.client_address:
        agent["network"] = {"address": record.client_address, "type": _address_type(record.client_address)}
    return agent | (_token_policy(record) if requestor else {})


def _client_who(record: AuditRecord) -> Json:
    if record.client_id:
        return {"identifier": _identifier(record.issuer or _CLIENT, record.client_id)}
    return {"display": "unidentified client"}


def _token_policy(record: AuditRecord) -> Json:
    return {"policy": [_JTI_PREFIX + record.token_id]} if record.token_id else {}


@functools.lru_cache(maxsize=4096)
def _address_type(address: str) -> str:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return "1"  # machine name
    return "2"  # IP address


def _server_agent(record: AuditRecord, observer: ObserverInfo) -> Json:
    _, server_role = _directions(record)
    codings = [server_role]
    if record.interaction == "delete":
        codings.append(_coding(_PROVENANCE_PARTICIPANT, "custodian", "Custodian"))
    agent: Json = {"type": {"coding": codings}, "who": _observer_reference(observer.name), "requestor": False}
    if observer.url:
        agent["network"] = {"address": observer.url, "type": "5"}  # URI
    return agent


def _directions(record: AuditRecord) -> tuple[Json, Json]:
    """(client, server) DICOM role ids: the side the request's data flows from is the source."""
    source = _coding(_DCM, "110153", "Source Role ID")
    destination = _coding(_DCM, "110152", "Destination Role ID")
    return (destination, source) if record.interaction in _SERVER_SOURCED else (source, destination)


@functools.lru_cache(maxsize=16)
def _source(name: str, site: str | None) -> Json:
    source: Json = {"observer": _observer_reference(name)}
    if site:
        source["site"] = site
    source["type"] = [_coding(_SOURCE_TYPE, "4", "Application Server")]
    return source


def _observer_reference(name: str) -> Json:
    return {"identifier": {"system": _OBSERVER, "value": name}, "display": name}


# --- entities ----------------------------------------------------------------------------------------


def _query_entities(record: AuditRecord) -> list[Json]:
    if record.interaction not in _QUERIES:
        return []
    raw = f"{record.method} {_request_path(record)}" + (f"?{record.query}" if record.query else "")
    return [
        {
            "type": _coding(_ENTITY_TYPE, "2", "System Object"),
            "role": _coding(_OBJECT_ROLE, "24", "Query"),
            "query": base64.b64encode(raw.encode()).decode("ascii"),
        }
    ]


def _request_path(record: AuditRecord) -> str:
    """The route with ``{id}`` filled in where the record knows the id (it keeps no raw path)."""
    if record.resource_id and record.route.count("{id}") == 1:
        return record.route.replace("{id}", record.resource_id)
    return record.route


def _resource_entities(record: AuditRecord) -> list[Json]:
    known = record.resource_type and record.resource_id
    requested = f"{record.resource_type}/{record.resource_id}" if known else ""
    references = _unique([requested, *record.resources])[:MAX_RESOURCE_ENTITIES]
    return [
        {
            "what": {"reference": reference},
            "type": _coding(_ENTITY_TYPE, "2", "System Object"),
            "role": _coding(_OBJECT_ROLE, "4", "Domain Resource"),
        }
        for reference in references
    ]


def _patient_entity(patient: str) -> Json:
    return {
        "what": {"reference": f"Patient/{patient}"},
        "type": _coding(_ENTITY_TYPE, "1", "Person"),
        "role": _coding(_OBJECT_ROLE, "1", "Patient"),
    }


def _consent_entity(consent: str) -> Json:
    return {
        "what": {"reference": f"Consent/{consent}"},
        "type": _coding(_RESOURCE_TYPES, "Consent", "Consent"),
    }


def _request_entities(record: AuditRecord) -> list[Json]:
    if not record.request_id:
        return []
    return [
        {
            "what": {"identifier": {"value": record.request_id}},
            "type": _coding(_BALP_ENTITY_TYPE, "XrequestId"),
        }
    ]


# --- helpers -----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _coding(system: str, code: str, display: str | None = None) -> Json:
    """A Coding (memoised: events are serialised once and never changed, so they may share codings)."""
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return coding


def _identifier(system: str | None, value: str) -> Json:
    return {"system": system, "value": value} if system else {"value": value}


def _unique(items: list[str]) -> list[str]:
    """The non-empty items, each once, in order."""
    unique = dict.fromkeys(items)
    return list(unique) if all(unique) else [item for item in unique if item]

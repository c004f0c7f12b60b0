"""One request's entry in the audit log: the facts of its ``AuditRecord`` that the AuditEvents are made of.

The trail appends one entry per request (``proxy.audit.chain.AuditChainWriter.append_request``) instead of
building the BALP AuditEvents while the client waits: writing the facts is several times cheaper, and the
events are made from them when the log is read (``read_events``, delivery, ``fhirwall audit query`` and
``report``). That is deterministic: ids are uuid5 of record facts and instants come from the stored times, so
the events made from an entry are the same whenever they are made, and the same as ``audit_events`` made
from the record itself.

An entry is a JSON object holding, under the record's field names, what ``proxy.audit.balp`` reads:
``request_id``, ``method``, ``route``, ``interaction``, ``started`` (seconds since the epoch), ``status``,
``duration_ms``, ``decision`` and ``observer`` (the observer's name) always; ``site`` and ``observer_url``
(the observer's), ``resource_type``, ``resource_id``, ``operation``, ``query``, ``client_address``,
``error_type``, ``client_id``, ``subject``, ``fhir_user``, ``token_id``, ``issuer``, ``roles``,
``purpose_of_use``, ``reasons``, ``patients`` (sorted), ``resources`` (at most ``MAX_RESOURCE_ENTITIES``: no
event names more), ``consent_ids``, ``break_glass``, ``masking_profile`` and ``masked_values`` only when set.
Like the events, an entry holds PHI.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from proxy.audit.balp import MAX_RESOURCE_ENTITIES, ObserverInfo, audit_events
from proxy.audit.record import AuditRecord

__all__ = ["EntryError", "entry_events", "entry_record", "request_entry"]

Json = dict[str, Any]

_TEXT: Final = (
    "resource_type",
    "resource_id",
    "operation",
    "query",
    "client_address",
    "error_type",
    "client_id",
    "subject",
    "fhir_user",
    "token_id",
    "issuer",
    "masking_profile",
)
_LISTS: Final = ("roles", "purpose_of_use", "reasons", "consent_ids")
_REQUIRED_TEXT: Final = ("request_id", "method", "route", "interaction", "decision")
_NUMBERS: Final = ("started", "duration_ms")
_TUPLES: Final = frozenset(("roles", "purpose_of_use"))
_OTHERS: Final = (
    "status",
    "observer",
    "site",
    "observer_url",
    "patients",
    "resources",
    "break_glass",
    "masked_values",
)
_KNOWN: Final = frozenset((*_TEXT, *_LISTS, *_REQUIRED_TEXT, *_NUMBERS, *_OTHERS))
_REQUIRED: Final = frozenset((*_REQUIRED_TEXT, *_NUMBERS, "status", "observer"))
_OPTIONAL_TEXT: Final = frozenset((*_TEXT, "site", "observer_url"))
_OBSERVER_FIELDS: Final = frozenset(("observer", "site", "observer_url"))
_KINDS: Final[dict[str, tuple[str, type]]] = {
    name: (name, kind)
    for names, kind in (
        ((*_TEXT, *_REQUIRED_TEXT, "observer", "site", "observer_url"), str),
        ((*_LISTS, "patients", "resources"), list),
        (_NUMBERS, float),
        (("status", "masked_values"), int),
        (("break_glass",), bool),
    )
    for name in names
}
"""Each field's name and the exact type of its value on the quick path (a number may also be an int)."""


class EntryError(ValueError):
    """An entry that is not a request entry this version can read."""


def request_entry(record: AuditRecord, observer: ObserverInfo) -> Json:
    """The log entry of ``record`` (a new dict; fields at their defaults are left out).

    Spelled out field by field: this runs for every request, before its answer goes out."""
    entry: Json = {
        "request_id": record.request_id,
        "method": record.method,
        "route": record.route,
        "interaction": record.interaction,
        "started": record.started,
        "status": record.status,
        "duration_ms": record.duration_ms,
        "decision": record.decision,
        "observer": observer.name,
    }
    if observer.site:
        entry["site"] = observer.site
    if observer.url:
        entry["observer_url"] = observer.url
    if record.resource_type:
        entry["resource_type"] = record.resource_type
    if record.resource_id:
        entry["resource_id"] = record.resource_id
    if record.operation:
        entry["operation"] = record.operation
    if record.query:
        entry["query"] = record.query
    if record.client_address:
        entry["client_address"] = record.client_address
    if record.error_type:
        entry["error_type"] = record.error_type
    if record.client_id:
        entry["client_id"] = record.client_id
    if record.subject:
        entry["subject"] = record.subject
    if record.fhir_user:
        entry["fhir_user"] = record.fhir_user
    if record.token_id:
        entry["token_id"] = record.token_id
    if record.issuer:
        entry["issuer"] = record.issuer
    if record.roles:
        entry["roles"] = record.roles  # a tuple: written as a JSON array
    if record.purpose_of_use:
        entry["purpose_of_use"] = record.purpose_of_use
    if record.reasons:
        entry["reasons"] = record.reasons
    if record.patients:
        entry["patients"] = sorted(record.patients)
    if record.resources:
        resources = record.resources
        if len(resources) > MAX_RESOURCE_ENTITIES:
            resources = list(dict.fromkeys(item for item in resources if item))[:MAX_RESOURCE_ENTITIES]
        entry["resources"] = resources
    if record.consent_ids:
        entry["consent_ids"] = record.consent_ids
    if record.break_glass:
        entry["break_glass"] = True
    if record.masking_profile:
        entry["masking_profile"] = record.masking_profile
    if record.masked_values:
        entry["masked_values"] = record.masked_values
    return entry


def entry_record(entry: Mapping[str, Any]) -> tuple[AuditRecord, ObserverInfo]:
    """The record and observer an entry was made from (``EntryError`` when it is not a valid entry).

    A plain entry (a dict whose values have exactly the expected types) takes a quick path; anything
    else is checked field by field, which also says what is wrong."""
    fields = _plain_fields(entry)
    if fields is None:
        return _checked_record(entry)
    observer = ObserverInfo(name=entry["observer"], site=entry.get("site"), url=entry.get("observer_url"))
    return AuditRecord(**fields), observer


def _plain_fields(entry: object) -> dict[str, Any] | None:
    """The record fields of a valid entry whose values all have their exact types, else None."""
    if type(entry) is not dict or not _REQUIRED.issubset(entry) or not _KNOWN.issuperset(entry):
        return None
    fields: dict[str, Any] = {}
    for key, value in entry.items():
        name, kind = _KINDS[key]  # our own (interned) name: keyword arguments match it much faster
        if kind is list:
            if type(value) is not list or not all(type(item) is str for item in value):
                return None
            value = tuple(value) if name in _TUPLES else set(value) if name == "patients" else list(value)
        elif type(value) is not kind and not _also_plain(name, kind, value):
            return None
        if name not in _OBSERVER_FIELDS:
            fields[name] = value
    return fields


def _also_plain(name: str, kind: type, value: object) -> bool:
    """Whether a value not of its field's type is still plain: None for an optional text, an int for a
    number."""
    if kind is float:
        return type(value) is int
    return value is None and name in _OPTIONAL_TEXT


def _checked_record(entry: Mapping[str, Any]) -> tuple[AuditRecord, ObserverInfo]:
    """``entry_record`` field by field: a valid entry's record and observer, else ``EntryError``."""
    if not isinstance(entry, Mapping):
        raise EntryError("a request entry must be a JSON object")
    unknown = set(entry) - _KNOWN
    if unknown:
        raise EntryError(f"unknown request entry field(s): {', '.join(sorted(unknown))}")
    fields: dict[str, Any] = {}
    for name in _REQUIRED_TEXT:
        fields[name] = _text(entry, name, required=True)
    for name in _NUMBERS:
        value = entry.get(name)
        if not _is_number(value):
            raise EntryError(f"request entry field {name} must be a number")
        fields[name] = value  # as written: an id made from ``started`` uses its repr
    fields["status"] = _integer(entry, "status", required=True)
    for name in _TEXT:
        if name in entry:
            fields[name] = _text(entry, name)
    for name in (*_LISTS, "patients", "resources"):
        if name in entry:
            items = _texts(entry, name)
            fields[name] = tuple(items) if name in _TUPLES else set(items) if name == "patients" else items
    if "break_glass" in entry:
        if not isinstance(entry["break_glass"], bool):
            raise EntryError("request entry field break_glass must be a boolean")
        fields["break_glass"] = entry["break_glass"]
    if "masked_values" in entry:
        fields["masked_values"] = _integer(entry, "masked_values")
    observer = ObserverInfo(
        name=_text(entry, "observer", required=True),
        site=_text(entry, "site"),
        url=_text(entry, "observer_url"),
    )
    return AuditRecord(**fields), observer


def entry_events(entry: Mapping[str, Any]) -> list[Json]:
    """The BALP AuditEvents of a request entry (``EntryError`` when it is not a valid entry)."""
    record, observer = entry_record(entry)
    return audit_events(record, observer=observer)


def _text(entry: Mapping[str, Any], name: str, *, required: bool = False) -> Any:
    value = entry.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise EntryError(f"request entry field {name} must be a string")
    return value


def _texts(entry: Mapping[str, Any], name: str) -> list[str]:
    value = entry[name]
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise EntryError(f"request entry field {name} must be a list of strings")
    return list(value)


def _integer(entry: Mapping[str, Any], name: str, *, required: bool = False) -> int:
    value = entry.get(name, None if required else 0)
    if not isinstance(value, int) or isinstance(value, bool):
        raise EntryError(f"request entry field {name} must be an integer")
    return value


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)

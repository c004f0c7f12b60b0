"""Response checks: every resource in every (nested) Bundle re-checked against the principal's access.

Bundles are taken apart with ``msgspec.Raw``: each member and entry keeps the exact bytes the upstream sent,
only what the decision needs is parsed, and the Bundle is re-assembled from the kept raw entries — so what
passes is byte-for-byte what the server said (FHIR decimals keep their precision). When the checks only read
compartment elements (no granular scope), entries are decoded slim (see ``proxy.fhir.slim``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson

from proxy.fhir.compartment import patient_references
from proxy.fhir.slim import decode_slim_entries, slim_mapping

__all__ = ["FilterResult", "entry_count", "filter_bundle", "patients_of_entries"]

_RAW_OBJECT = msgspec.json.Decoder(dict[str, msgspec.Raw])
_RAW_LIST = msgspec.json.Decoder(list[msgspec.Raw])
_ENCODER = msgspec.json.Encoder()

Visible = Callable[[dict[str, Any]], bool]
LinkSealer = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
Verdicts = tuple[list[msgspec.Raw] | None, int]
_RESPONSE_BUNDLES = frozenset({"batch-response", "transaction-response"})


@dataclass(frozen=True, slots=True)
class FilterResult:
    """The filtered body and how many resources were withheld (``dropped``)."""

    body: bytes
    dropped: int


def filter_bundle(
    body: bytes,
    visible: Visible | None,
    *,
    keep_total: bool,
    seal_links: LinkSealer | None,
    slim: bool = False,
) -> FilterResult:
    """Drop entries whose resource is not visible (``visible=None``: keep all), fix or remove ``total``,
    seal paging links. ``slim``: ``visible`` reads only compartment elements, so entries are decoded slim."""
    members = _RAW_OBJECT.decode(body)
    bundle_type = orjson.loads(memoryview(members["type"])) if "type" in members else None
    kept, dropped = _filter(members.get("entry"), visible, bundle_type, slim=slim)
    changed = dropped > 0 or kept is not None
    if kept is not None:
        members["entry"] = msgspec.Raw(_ENCODER.encode(kept))
    if "total" in members and (dropped or not keep_total):
        del members["total"]
        changed = True
    if seal_links is not None and "link" in members:
        members["link"] = msgspec.Raw(orjson.dumps(seal_links(orjson.loads(memoryview(members["link"])))))
        changed = True
    return FilterResult(_ENCODER.encode(members) if changed else body, dropped)


def _filter(
    raw: msgspec.Raw | None, visible: Visible | None, bundle_type: str | None, *, slim: bool
) -> Verdicts:
    """The kept raw entries (None when all were kept unchanged) and how many were dropped."""
    if raw is None or visible is None:
        return None, 0
    if slim:
        return _filter_slim(raw, visible, bundle_type)
    return _filter_full(raw, visible, bundle_type)


def _filter_slim(raw: msgspec.Raw, visible: Visible, bundle_type: str | None) -> Verdicts:
    verdicts: list[bool] = []
    for entry in decode_slim_entries(memoryview(raw)):
        resource = entry.resource
        if resource is not None and resource.resourceType == "Bundle":
            return _filter_full(raw, visible, bundle_type)  # nested Bundles take the full path
        if resource is None:
            verdicts.append(bundle_type in _RESPONSE_BUNDLES)
        else:
            verdicts.append(resource.resourceType == "OperationOutcome" or visible(slim_mapping(resource)))
    if all(verdicts):
        return None, 0
    kept = [entry for entry, ok in zip(_RAW_LIST.decode(raw), verdicts, strict=True) if ok]
    return kept, len(verdicts) - len(kept)


def _filter_full(raw: msgspec.Raw, visible: Visible, bundle_type: str | None) -> Verdicts:
    kept: list[msgspec.Raw] = []
    dropped = 0
    modified = False
    for raw_entry in _RAW_LIST.decode(raw):
        entry, removed, changed = _check_entry(raw_entry, visible, bundle_type)
        dropped += removed
        modified = modified or changed
        if entry is not None:
            kept.append(entry)
    if dropped == 0 and not modified:
        return None, 0
    return kept, dropped


def _check_entry(
    raw_entry: msgspec.Raw, visible: Visible, bundle_type: str | None
) -> tuple[msgspec.Raw | None, int, bool]:
    members = _RAW_OBJECT.decode(raw_entry)
    raw_resource = members.get("resource")
    if raw_resource is None:
        # batch/transaction answers without a resource only report the client's own request; anything else
        # (a history entry for a deletion) cannot be checked and is withheld
        return (raw_entry, 0, False) if bundle_type in _RESPONSE_BUNDLES else (None, 1, False)
    resource = orjson.loads(memoryview(raw_resource))
    if isinstance(resource, dict) and resource.get("resourceType") == "Bundle":
        original = bytes(raw_resource)
        inner = filter_bundle(original, visible, keep_total=False, seal_links=None)
        if inner.body is original:
            return raw_entry, 0, False
        members["resource"] = msgspec.Raw(inner.body)
        return msgspec.Raw(_ENCODER.encode(members)), inner.dropped, True
    if isinstance(resource, dict) and (
        resource.get("resourceType") == "OperationOutcome" or visible(resource)
    ):
        return raw_entry, 0, False
    return None, 1, False


def entry_count(body: bytes) -> int:
    """How many entries a Bundle has (the entries are not decoded)."""
    entries = _RAW_OBJECT.decode(body).get("entry")
    return 0 if entries is None else len(_RAW_LIST.decode(entries))


def patients_of_entries(body: bytes) -> set[str]:
    """The patients of a Bundle's entries, read with the slim decoder (nested Bundles: a full parse)."""
    entries = _RAW_OBJECT.decode(body).get("entry")
    if entries is None:
        return set()
    found: set[str] = set()
    for entry in decode_slim_entries(memoryview(entries)):
        resource = entry.resource
        if resource is None:
            continue
        if resource.resourceType == "Bundle":
            return _patients_in(orjson.loads(body))
        found |= patient_references(slim_mapping(resource))
    return found


def _patients_in(document: Any) -> set[str]:
    """Every patient whose compartment holds a resource anywhere in ``document`` (nested Bundles too)."""
    found: set[str] = set()
    for entry in document.get("entry", []) if isinstance(document, dict) else []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            continue
        if resource.get("resourceType") == "Bundle":
            found |= _patients_in(resource)
        else:
            found |= patient_references(resource)
    return found

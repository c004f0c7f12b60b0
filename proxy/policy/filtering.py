"""Response checks: every resource in every (nested) Bundle re-checked against the principal's access.

Bundles are taken apart with ``msgspec.Raw``: each member and entry keeps the exact bytes the upstream sent,
only the resources are parsed (for the decision), and the Bundle is re-assembled from the kept raw entries
— so what passes is byte-for-byte what the server said (FHIR decimals keep their precision).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson

__all__ = ["FilterResult", "filter_bundle"]

_RAW_OBJECT = msgspec.json.Decoder(dict[str, msgspec.Raw])
_RAW_LIST = msgspec.json.Decoder(list[msgspec.Raw])
_ENCODER = msgspec.json.Encoder()

Visible = Callable[[dict[str, Any]], bool]
LinkSealer = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
_RESPONSE_BUNDLES = frozenset({"batch-response", "transaction-response"})


@dataclass(frozen=True, slots=True)
class FilterResult:
    """The filtered body and how many resources were withheld (``dropped``)."""

    body: bytes
    dropped: int


def filter_bundle(
    body: bytes, visible: Visible | None, *, keep_total: bool, seal_links: LinkSealer | None
) -> FilterResult:
    """Drop entries whose resource is not visible (``visible=None``: keep all); fix or remove ``total``;
    seal paging links."""
    members = _RAW_OBJECT.decode(body)
    bundle_type = orjson.loads(memoryview(members["type"])) if "type" in members else None
    kept, dropped = (
        (None, 0) if visible is None else _filter_entries(members.get("entry"), visible, bundle_type)
    )
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


def _filter_entries(
    raw: msgspec.Raw | None, visible: Visible, bundle_type: str | None
) -> tuple[list[msgspec.Raw] | None, int]:
    """The kept entries (None when every entry was kept unchanged) and the number dropped."""
    if raw is None:
        return None, 0
    entries = _RAW_LIST.decode(raw)
    kept: list[msgspec.Raw] = []
    dropped = 0
    modified = False
    for raw_entry in entries:
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

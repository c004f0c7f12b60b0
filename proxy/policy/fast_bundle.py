"""The fast path for the commonest restricted response: a patient-context searchset of one type.

One msgspec decode validates the whole Bundle and reads only what the check needs: the Bundle's type and
``link`` (kept as raw bytes), and for each entry the searched type's compartment references. When every
entry is of the searched type and names the token's patient in a compartment element, every entry is
visible; the sealed links are then spliced into the original bytes at the place of the upstream's links, so
nothing else in the body is rewritten. Any other shape returns None and takes the general path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import msgspec
import orjson

from proxy.fhir.slim import TYPE_ROOTS, Reference, list_of

__all__ = ["LinkSealer", "ProvenSearchset", "fast_patient_searchset"]

_NULL = msgspec.Raw(b"null")
_RESOURCE_TYPE = attrgetter("resource.resourceType")
_META = attrgetter("resource.meta")
_SECURITY = attrgetter("security")
_Meta = msgspec.defstruct("FastMeta", [("security", Any, None)])
_PREFERRED = ("patient", "subject", "beneficiary", "individual")
_SINGLE_REFERENCE = {
    resource_type: tuple(
        attrgetter(f"resource.{root}.reference")
        for root in sorted(roots, key=lambda r: (r not in _PREFERRED, r))
    )
    for resource_type, roots in TYPE_ROOTS.items()
}
_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {}
LinkSealer = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class ProvenSearchset:
    """A searchset whose every entry names ``patient``: its body (links sealed, total dropped as asked) and
    whether any entry's resource carries security labels (``meta.security``)."""

    body: bytes
    patient: str
    labelled: bool


def _decoder(resource_type: str) -> msgspec.json.Decoder[Any]:
    fields = [(root, Reference | list[Reference] | None, None) for root in TYPE_ROOTS.get(resource_type, ())]
    resource = msgspec.defstruct(
        f"Fast{resource_type}", [("resourceType", str), ("meta", _Meta | None, None), *fields]
    )
    entry = msgspec.defstruct(f"Fast{resource_type}Entry", [("resource", resource | None, None)])
    bundle = msgspec.defstruct(
        f"Fast{resource_type}Bundle",
        [
            ("resourceType", str),
            ("type", Any, None),
            ("total", Any, None),
            ("link", msgspec.Raw, _NULL),
            ("entry", list_of(entry), []),
        ],
    )
    return msgspec.json.Decoder(bundle)


def fast_patient_searchset(
    body: bytes, resource_type: str, patient_id: str, seal_links: LinkSealer | None, *, total_allowed: bool
) -> ProvenSearchset | None:
    """The body with sealed links if every entry provably belongs to the patient; None when not proven."""
    decoder = _DECODERS.get(resource_type) or _DECODERS.setdefault(resource_type, _decoder(resource_type))
    try:
        bundle = decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    if bundle.resourceType != "Bundle" or bundle.type != "searchset":
        return None
    if not _all_name_patient(bundle.entry, resource_type, "Patient/" + patient_id):
        return None
    if not total_allowed and bundle.total is not None:
        without_total = _drop_total(body, bundle.total)
        if without_total is None:
            return None
        body = without_total
    if seal_links is not None and bundle.link is not _NULL:
        sealed = _splice_links(body, bytes(bundle.link), seal_links)
        if sealed is None:
            return None
        body = sealed
    # every entry has a resource by now; C-level passes over their labels
    labelled = any(map(_SECURITY, filter(None, map(_META, bundle.entry))))
    return ProvenSearchset(body, patient_id, labelled)


def _drop_total(body: bytes, total: Any) -> bytes | None:
    """Remove the Bundle's own ``"total":N`` member (it comes before the entries); None if not found so."""
    if isinstance(total, bool) or not isinstance(total, int):
        return None
    member = b'"total":' + str(total).encode()
    start = body.find(member)
    entries = body.find(b'"entry"')
    if start < 0 or (0 <= entries < start):
        return None
    end = start + len(member)
    if body[end : end + 1] == b",":
        return body[:start] + body[end + 1 :]
    if body[start - 1 : start] == b",":
        return body[: start - 1] + body[end:]
    return None


def _all_name_patient(entries: list[Any], resource_type: str, reference: str) -> bool:
    if not entries:
        return True
    try:
        if set(map(_RESOURCE_TYPE, entries)) != {resource_type}:
            return False
        for getter in _SINGLE_REFERENCE.get(resource_type, ()):
            if set(map(getter, entries)) == {reference}:
                return True  # one element names the patient in every entry (C-level passes)
    except AttributeError:
        pass  # an entry without a resource, or the element absent or repeated: look entry by entry
    return _each_names_patient(entries, resource_type, reference)


def _each_names_patient(entries: list[Any], resource_type: str, reference: str) -> bool:
    roots = TYPE_ROOTS.get(resource_type, ())
    for entry in entries:
        resource = entry.resource
        if resource is None or resource.resourceType != resource_type:
            return False
        for root in roots:
            value = getattr(resource, root)
            if value is None:
                continue
            if type(value) is list:
                if any(item.reference == reference for item in value):
                    break
            elif value.reference == reference:
                break
        else:
            return False
    return True


def _splice_links(body: bytes, raw_links: bytes, seal_links: LinkSealer) -> bytes | None:
    """Replace the upstream's link array in place. Its first occurrence is the Bundle's own when it comes
    before the entries (a JSON array cannot occur unescaped inside a string); otherwise: not here."""
    start = body.find(raw_links)
    entries = body.find(b'"entry"')
    if start < 0 or (0 <= entries < start):
        return None
    sealed = orjson.dumps(seal_links(orjson.loads(raw_links)))
    return b"".join((body[:start], sealed, body[start + len(raw_links) :]))

"""Media types: which request bodies the proxy accepts and which response formats it can produce.

The proxy enforces policy and masking on FHIR JSON only. Anything that would make the upstream answer in
another format (``Accept: application/fhir+xml``, ``_format=xml``, ``_format=ttl``) is refused with 406 rather
than passed through unchecked; raw ``Binary`` content is the one exception (it has no FHIR structure).
"""

from __future__ import annotations

from enum import Enum

from proxy.errors import NotAcceptableError, UnsupportedMediaTypeError

__all__ = [
    "FHIR_JSON_TYPES",
    "BodyKind",
    "body_kind",
    "check_accept",
    "check_format_param",
    "media_type",
]

FHIR_JSON_TYPES = frozenset({"application/fhir+json", "application/json", "application/json+fhir"})
JSON_PATCH = "application/json-patch+json"
FORM = "application/x-www-form-urlencoded"
_JSON_FORMAT_PARAMS = FHIR_JSON_TYPES | {"json"}
_ACCEPT_WILDCARDS = frozenset({"*/*", "application/*"})


class BodyKind(Enum):
    """How the proxy treats a request body."""

    FHIR_JSON = "fhir-json"
    JSON_PATCH = "json-patch"
    FORM = "form"
    RAW = "raw"


def media_type(header_value: str | None) -> str:
    """The bare, lower-cased media type of a Content-Type/Accept item (parameters dropped)."""
    if not header_value:
        return ""
    return header_value.split(";", 1)[0].strip().lower()


def body_kind(
    content_type: str | None, *, raw_allowed: bool, patch: bool = False, form: bool = False
) -> BodyKind:
    """Classify a request body by its Content-Type, or raise 415.

    ``raw_allowed`` is true for Binary create/update (any content type streams through); ``patch`` allows
    JSON Patch; ``form`` allows form-encoded search parameters (``POST _search``).
    """
    kind = media_type(content_type)
    if kind in FHIR_JSON_TYPES:
        return BodyKind.FHIR_JSON
    if patch and kind == JSON_PATCH:
        return BodyKind.JSON_PATCH
    if form and kind == FORM:
        return BodyKind.FORM
    if raw_allowed and kind and "xml" not in kind:
        return BodyKind.RAW
    if not kind:
        raise UnsupportedMediaTypeError("a Content-Type header is required: send application/fhir+json")
    raise UnsupportedMediaTypeError()


def check_format_param(values: list[str]) -> None:
    """Refuse ``_format`` values other than JSON ones (406)."""
    for value in values:
        if media_type(value) not in _JSON_FORMAT_PARAMS:
            raise NotAcceptableError()


def check_accept(accept: str | None, *, raw_allowed: bool) -> bool:
    """Validate an Accept header; True when the client asked for raw (non-FHIR) content.

    Raw content is only acceptable for Binary reads (``raw_allowed``). Anything else must accept FHIR JSON.
    """
    if not accept:
        return False
    items = [media_type(part) for part in accept.split(",")]
    if any(item in FHIR_JSON_TYPES or item in _ACCEPT_WILDCARDS for item in items):
        return False
    if raw_allowed and items and not any("xml" in item for item in items):
        return True
    raise NotAcceptableError()

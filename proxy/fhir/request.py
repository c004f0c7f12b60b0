"""Classify an HTTP request into a FHIR REST interaction (pure; no I/O).

The path is normalised once and then must be exactly one of the R4 REST shapes; anything else is refused
rather than guessed: percent-encoded characters (except ``%24`` for ``$``), empty segments, trailing
slashes, non-ASCII look-alikes, lower-case or unknown types and invalid ids all fail here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import parse_qsl

from proxy.errors import (
    InvalidPathError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    UnknownResourceTypeError,
)
from proxy.fhir.resource_types import R4_RESOURCE_TYPES, is_valid_id, is_valid_operation_name, looks_like_type

__all__ = ["Compartment", "FhirRequest", "Interaction", "classify", "parse_query", "searched_patient"]

MAX_PATH_LENGTH = 2048


class Interaction(StrEnum):
    """The FHIR R4 RESTful interactions (plus operations)."""

    CAPABILITIES = "capabilities"
    READ = "read"
    VREAD = "vread"
    UPDATE = "update"
    PATCH = "patch"
    DELETE = "delete"
    HISTORY_INSTANCE = "history-instance"
    HISTORY_TYPE = "history-type"
    HISTORY_SYSTEM = "history-system"
    CREATE = "create"
    SEARCH_TYPE = "search-type"
    SEARCH_SYSTEM = "search-system"
    SEARCH_COMPARTMENT = "search-compartment"
    BATCH = "batch"
    TRANSACTION = "transaction"
    OPERATION = "operation"
    PAGE = "page"  # a proxy-sealed paging link (``[base]/_page?token=...``)


@dataclass(frozen=True, slots=True)
class Compartment:
    """A compartment named in the URL, e.g. ``Patient/123`` in ``Patient/123/Observation``."""

    resource_type: str
    id: str


@dataclass(frozen=True, slots=True)
class FhirRequest:
    """One classified FHIR request. ``params`` are the decoded query (and form) parameters, in order."""

    interaction: Interaction
    method: str
    resource_type: str | None = None
    id: str | None = None
    version_id: str | None = None
    operation: str | None = None
    compartment: Compartment | None = None
    params: tuple[tuple[str, str], ...] = field(default=())

    @property
    def conditional(self) -> bool:
        """True for conditional update/patch/delete (``PUT Type?search``)."""
        conditional_kinds = (Interaction.UPDATE, Interaction.PATCH, Interaction.DELETE)
        return self.interaction in conditional_kinds and self.id is None

    @property
    def level(self) -> str:
        """``system``, ``type`` or ``instance``."""
        if self.id is not None:
            return "instance"
        return "type" if self.resource_type is not None else "system"

    def param_values(self, name: str) -> list[str]:
        """All values of parameter ``name`` (exact name, modifiers included)."""
        return [value for key, value in self.params if key == name]


def parse_query(query: str) -> tuple[tuple[str, str], ...]:
    """Decode a query string (or form body) into ordered (name, value) pairs."""
    if not query:
        return ()
    try:
        return tuple(parse_qsl(query, keep_blank_values=True, strict_parsing=True, errors="strict"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequestError("the query string is not valid") from exc


def classify(method: str, raw_path: str, query: str = "") -> FhirRequest:
    """Classify ``method`` + the path below the FHIR base (raw, still percent-encoded) + the query string."""
    segments = _segments(raw_path)
    params = parse_query(query)
    return _classify_segments(method, segments, params)


def _segments(raw_path: str) -> list[str]:
    if len(raw_path) > MAX_PATH_LENGTH:
        raise InvalidPathError("the request path is too long")
    if not raw_path.isascii() or "\\" in raw_path:
        raise InvalidPathError()
    path = raw_path.replace("%24", "$")
    if "%" in path:
        raise InvalidPathError("percent-encoded characters are not allowed in FHIR REST paths")
    if path in ("", "/"):
        return []
    if not path.startswith("/"):
        raise InvalidPathError()
    segments = path[1:].split("/")
    if any(segment == "" for segment in segments):
        raise InvalidPathError("empty path segments (double or trailing slashes) are not allowed")
    if any(segment in (".", "..") for segment in segments):
        raise InvalidPathError()
    return segments


def _resource_type(segment: str) -> str:
    if segment in R4_RESOURCE_TYPES:
        return segment
    if looks_like_type(segment) and segment[0].isupper():
        raise UnknownResourceTypeError()
    raise InvalidPathError("the path does not name a FHIR resource type (types are case-sensitive)")


def _id(segment: str) -> str:
    if not is_valid_id(segment):
        raise InvalidPathError("the resource id is not a valid FHIR id (1-64 characters of A-Z a-z 0-9 - .)")
    return segment


def _operation(segment: str) -> str:
    if not is_valid_operation_name(segment):
        raise InvalidPathError("the operation name is not valid")
    return segment[1:]


def _allow(method: str, allowed: tuple[str, ...]) -> None:
    if method not in allowed:
        raise MethodNotAllowedError(headers={"Allow": ", ".join(allowed)})


def _classify_segments(method: str, segments: list[str], params: tuple[tuple[str, str], ...]) -> FhirRequest:
    if len(segments) == 0:
        return _system(method, params)
    first = segments[0]
    if first in ("metadata", "_history", "_search", "_page") or first.startswith("$"):
        return _system_named(method, segments, params)
    resource_type = _resource_type(first)
    if len(segments) == 1:
        return _type_level(method, resource_type, params)
    second = segments[1]
    if (len(segments) == 2 and second in ("_history", "_search")) or second.startswith("$"):
        return _type_named(method, resource_type, segments[1:], params)
    return _instance_level(method, resource_type, _id(second), segments[2:], params)


def _system(method: str, params: tuple[tuple[str, str], ...]) -> FhirRequest:
    _allow(method, ("GET", "POST"))
    if method == "GET":
        return FhirRequest(Interaction.SEARCH_SYSTEM, method, params=params)
    # batch vs transaction is decided from Bundle.type once the body is parsed
    return FhirRequest(Interaction.BATCH, method, params=params)


def _system_named(method: str, segments: list[str], params: tuple[tuple[str, str], ...]) -> FhirRequest:
    name = segments[0]
    if len(segments) > 1:
        raise NotFoundError()
    if name == "metadata":
        _allow(method, ("GET",))
        return FhirRequest(Interaction.CAPABILITIES, method, params=params)
    if name == "_history":
        _allow(method, ("GET",))
        return FhirRequest(Interaction.HISTORY_SYSTEM, method, params=params)
    if name == "_search":
        _allow(method, ("POST",))
        return FhirRequest(Interaction.SEARCH_SYSTEM, method, params=params)
    if name == "_page":
        _allow(method, ("GET",))
        return FhirRequest(Interaction.PAGE, method, params=params)
    _allow(method, ("GET", "POST"))
    return FhirRequest(Interaction.OPERATION, method, operation=_operation(name), params=params)


def _type_level(method: str, resource_type: str, params: tuple[tuple[str, str], ...]) -> FhirRequest:
    _allow(method, ("GET", "POST", "PUT", "PATCH", "DELETE"))
    if method in ("PUT", "PATCH", "DELETE") and not params:
        raise InvalidRequestError(
            f"{method} on a resource type needs search parameters (conditional {method})"
        )
    interaction = {
        "GET": Interaction.SEARCH_TYPE,
        "POST": Interaction.CREATE,
        "PUT": Interaction.UPDATE,
        "PATCH": Interaction.PATCH,
        "DELETE": Interaction.DELETE,
    }[method]
    return FhirRequest(interaction, method, resource_type=resource_type, params=params)


def _type_named(
    method: str, resource_type: str, rest: list[str], params: tuple[tuple[str, str], ...]
) -> FhirRequest:
    name = rest[0]
    if len(rest) > 1:
        raise NotFoundError()
    if name == "_history":
        _allow(method, ("GET",))
        return FhirRequest(Interaction.HISTORY_TYPE, method, resource_type=resource_type, params=params)
    if name == "_search":
        _allow(method, ("POST",))
        return FhirRequest(Interaction.SEARCH_TYPE, method, resource_type=resource_type, params=params)
    _allow(method, ("GET", "POST"))
    return FhirRequest(
        Interaction.OPERATION, method, resource_type=resource_type, operation=_operation(name), params=params
    )


def _instance_level(
    method: str, resource_type: str, rid: str, rest: list[str], params: tuple[tuple[str, str], ...]
) -> FhirRequest:
    if not rest:
        _allow(method, ("GET", "PUT", "PATCH", "DELETE"))
        interaction = {
            "GET": Interaction.READ,
            "PUT": Interaction.UPDATE,
            "PATCH": Interaction.PATCH,
            "DELETE": Interaction.DELETE,
        }[method]
        return FhirRequest(interaction, method, resource_type=resource_type, id=rid, params=params)
    head = rest[0]
    if head == "_history":
        return _instance_history(method, resource_type, rid, rest[1:], params)
    if len(rest) == 1 and head.startswith("$"):
        _allow(method, ("GET", "POST"))
        op = _operation(head)
        return FhirRequest(Interaction.OPERATION, method, resource_type, rid, operation=op, params=params)
    if len(rest) == 1:
        _allow(method, ("GET",))
        target = _resource_type(head)
        compartment = Compartment(resource_type, rid)
        return FhirRequest(
            Interaction.SEARCH_COMPARTMENT, method, target, compartment=compartment, params=params
        )
    raise NotFoundError()


def _instance_history(
    method: str, resource_type: str, rid: str, rest: list[str], params: tuple[tuple[str, str], ...]
) -> FhirRequest:
    _allow(method, ("GET",))
    if not rest:
        return FhirRequest(Interaction.HISTORY_INSTANCE, method, resource_type, rid, params=params)
    if len(rest) == 1:
        vid = _id(rest[0])
        return FhirRequest(Interaction.VREAD, method, resource_type, rid, version_id=vid, params=params)
    raise NotFoundError()


def searched_patient(request: FhirRequest) -> tuple[str, str] | None:
    """``(type, patient id)`` when the request searches one type for exactly one patient."""
    resource_type = request.resource_type
    if resource_type is None or any(key.startswith(("_include", "_revinclude")) for key, _ in request.params):
        return None
    compartment = request.compartment
    if request.interaction is Interaction.SEARCH_COMPARTMENT and compartment is not None:
        return (resource_type, compartment.id) if compartment.resource_type == "Patient" else None
    if request.interaction is not Interaction.SEARCH_TYPE:
        return None
    named = {value for key, value in request.params if key in ("patient", "subject")}
    if len(named) != 1:
        return None
    value = named.pop()
    patient = value.removeprefix("Patient/") if value.startswith("Patient/") else None
    if patient is None and "/" not in value and "," not in value and ("patient", value) in request.params:
        patient = value  # patient=<id> names a Patient
    return (resource_type, patient) if patient else None

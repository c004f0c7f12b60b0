"""Filling an ``AuditRecord`` from what the pipeline learns: the request, the caller, the answer.

Small pure helpers the enforcement point calls at each stage, so the pipeline itself only says *when*.
Routes are templates (``/Patient/{id}``), never raw paths: ids are PHI.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from proxy.audit.record import AuditRecord, Decision
from proxy.auth.principal import Principal
from proxy.errors import AuthenticationError, ForbiddenError, NotFoundError, ProxyError
from proxy.fhir.compartment import patient_references
from proxy.fhir.request import Compartment, FhirRequest, Interaction

__all__ = [
    "describe_principal",
    "describe_request",
    "note_error",
    "note_patients_in_body",
    "note_stage",
    "route_template",
    "start_record",
]

_UNCLASSIFIED = "unclassified"


def start_record(scope: Mapping[str, Any], request_id: str, *, telemetry: bool = True) -> AuditRecord:
    """A record for a request that has just arrived (nothing classified yet). ``telemetry`` false: none
    will be made from it, so what only telemetry uses is not gathered (``AuditRecord.telemetry``)."""
    client = scope.get("client")
    method = str(scope.get("method", ""))
    client_address = client[0] if client else None
    if not telemetry:
        return AuditRecord(
            request_id, method, _UNCLASSIFIED, _UNCLASSIFIED, client_address=client_address, telemetry=False
        )
    user_agent = traceparent = None
    for name, value in scope.get("headers", ()):  # the last one wins, as in a dict of the headers
        if name == b"user-agent":
            user_agent = value.decode("latin-1") or None
        elif name == b"traceparent":
            traceparent = value.decode("latin-1") or None
    return AuditRecord(
        request_id=request_id,
        method=method,
        route=_UNCLASSIFIED,
        interaction=_UNCLASSIFIED,
        client_address=client_address,
        user_agent=user_agent,
        scheme=scope.get("scheme"),
        traceparent=traceparent,
    )


def describe_request(record: AuditRecord, request: FhirRequest, query: str) -> None:
    """What was asked: interaction, route template, type, id, operation and the raw query (PHI)."""
    compartment = request.compartment
    record.interaction, record.route = _shape(
        request.interaction,
        request.resource_type,
        compartment.resource_type if compartment is not None else None,
        request.id is not None,
        request.version_id is not None,
        request.operation,
    )
    record.resource_type = request.resource_type
    record.resource_id = request.id
    record.operation = request.operation
    record.query = query
    if request.compartment is not None and request.compartment.resource_type == "Patient":
        record.patients.add(request.compartment.id)
    if request.resource_type == "Patient" and request.id:
        record.patients.add(request.id)
    if request.id and request.resource_type:
        record.resources.append(f"{request.resource_type}/{request.id}")


def describe_principal(record: AuditRecord, principal: Principal) -> None:
    """Who asked: client, user, token, roles, purpose of use and granted scopes."""
    record.client_id = principal.client_id
    record.subject = principal.subject
    record.fhir_user = principal.fhir_user
    record.token_id = principal.token_id
    record.issuer = principal.issuer
    record.roles = principal.roles
    record.purpose_of_use = principal.purpose_of_use
    if record.telemetry:
        record.scopes = tuple(principal.scope_text.split())


def note_error(record: AuditRecord, error: ProxyError) -> None:
    """A refusal or failure: its status, type and reason; refusals by policy are denials."""
    record.status = error.status_code
    record.error_type = type(error).__name__
    record.reasons.append(error.issue_code)
    refused = isinstance(error, ForbiddenError | AuthenticationError)
    hidden_after_decision = isinstance(error, NotFoundError) and record.decision == Decision.PERMIT
    if refused or hidden_after_decision:  # a 404 after a permit: withheld by consent or the compartment
        record.decision = Decision.DENY


def note_stage(record: AuditRecord | None, name: str, started: float) -> None:
    """A timed stage of the request (``token``, ``policy``, ``upstream``, ``consent``, ``masking``), for
    telemetry's child spans."""
    if record is not None and record.telemetry:
        record.stages.append((name, started, time.time()))


def note_patients_in_body(record: AuditRecord, body: bytes) -> None:
    """The patients (and resources) whose data an answer carries (a resource, or a Bundle's entries)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return
    if not isinstance(document, dict):
        return
    resources: Iterable[Any] = (
        (entry.get("resource") for entry in document.get("entry") or () if isinstance(entry, dict))
        if document.get("resourceType") == "Bundle"
        else (document,)
    )
    for resource in resources:
        if isinstance(resource, dict) and resource.get("resourceType") not in (None, "OperationOutcome"):
            record.patients |= patient_references(resource)
            _note_resource(record, resource)


def _note_resource(record: AuditRecord, resource: dict[str, Any]) -> None:
    resource_id = resource.get("id")
    if isinstance(resource_id, str):
        reference = f"{resource['resourceType']}/{resource_id}"
        if reference not in record.resources:
            record.resources.append(reference)


@functools.lru_cache(maxsize=1024)
def _shape(
    interaction: Interaction,
    resource_type: str | None,
    compartment_type: str | None,
    has_id: bool,
    has_version: bool,
    operation: str | None,
) -> tuple[str, str]:
    """(interaction code, route template) of a request of this shape (memoised: the shapes are few, and
    nothing in them is PHI, ids being reduced to whether there is one)."""
    compartment = Compartment(compartment_type, "{id}") if compartment_type is not None else None
    request = FhirRequest(
        interaction,
        "",
        resource_type=resource_type,
        id="{id}" if has_id else None,
        version_id="{vid}" if has_version else None,
        operation=operation,
        compartment=compartment,
    )
    return _interaction(request), route_template(request)


def route_template(request: FhirRequest) -> str:
    """The request's shape with ids replaced: ``/Patient/{id}/_history/{vid}``, ``/Observation``."""
    parts = [""]
    if request.compartment is not None:
        parts += [request.compartment.resource_type, "{id}"]
    if request.resource_type and request.interaction is not Interaction.PAGE:
        parts.append(request.resource_type)
    if request.id:
        parts.append("{id}")
    if request.interaction in (
        Interaction.HISTORY_INSTANCE,
        Interaction.HISTORY_TYPE,
        Interaction.HISTORY_SYSTEM,
    ):
        parts.append("_history")
    if request.version_id:
        parts += ["_history", "{vid}"]
    if request.operation:
        parts.append(f"${request.operation}")
    if request.interaction is Interaction.PAGE:
        parts.append("_page")
    if request.interaction is Interaction.CAPABILITIES:
        parts.append("metadata")
    return "/".join(parts) or "/"


def _interaction(request: FhirRequest) -> str:
    """The restful-interaction code (compartment searches and sealed pages are type searches)."""
    if request.interaction in (Interaction.SEARCH_COMPARTMENT, Interaction.PAGE):
        return Interaction.SEARCH_TYPE.value
    return request.interaction.value

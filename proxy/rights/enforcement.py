"""Carrying out the access policy around the upstream call (the PEP's half for this layer).

Before forwarding: the operation must be granted on the type; what is written must meet the grant's
condition and care relationship — for updates, patches and deletes the stored resource too (fetched, checked,
and its version pinned with ``If-Match`` so the checked version is the one changed); batch and transaction
entries are checked one by one. After the answer: every returned resource is re-checked (``answer_body``).
"""

from __future__ import annotations

from typing import Any

import jsonpatch
import orjson

from proxy.authorization import FetchCurrent, pin_version, stored_resource
from proxy.call import ProxyCall
from proxy.errors import InvalidRequestError, NotFoundError
from proxy.fhir.bundle import classify_entries
from proxy.fhir.documents import decode_resource_head
from proxy.fhir.request import FhirRequest, Interaction
from proxy.rights.errors import PolicyDeniedError
from proxy.rights.gate import RightsView
from proxy.rights.operations import operation_of, response_operations
from proxy.upstream import Upstream

__all__ = ["answer_body", "authorize_rights"]

_WRITES_DOCUMENT = frozenset({Interaction.CREATE, Interaction.UPDATE})
_CHANGES_STORED = frozenset({Interaction.UPDATE, Interaction.PATCH, Interaction.DELETE})


async def authorize_rights(
    call: ProxyCall, rights: RightsView, upstream: Upstream, fetch_current: FetchCurrent
) -> str | None:
    """Check the request against the policy (raises when denied); returns its policy operation."""
    request = call.request
    if request.interaction in (Interaction.BATCH, Interaction.TRANSACTION):
        await _authorize_entries(call, rights)
        return "batch"
    operation = operation_of(request, raw_binary=call.raw_response)
    if operation is None:
        return None
    for resource_type in _types(request):
        rights.check_operation(resource_type, operation)
    if call.raw_response and rights.restricted("Binary", (operation,)):
        raise PolicyDeniedError("raw content is only served to unrestricted roles: ask for FHIR JSON")
    if request.interaction in _WRITES_DOCUMENT and call.document is not None:
        await rights.check_written(call.document, operation)
    if request.interaction in _CHANGES_STORED and request.resource_type is not None:
        await _check_stored(call, rights, operation, upstream, fetch_current)
    return operation


def _types(request: FhirRequest) -> list[str | None]:
    """The types the request operates on (a system-level search names them in ``_type``)."""
    if request.resource_type is not None:
        return [request.resource_type]
    named = [item for value in request.param_values("_type") for item in value.split(",") if item]
    return list(named) if named else [None]


async def _check_stored(
    call: ProxyCall, rights: RightsView, operation: str, upstream: Upstream, fetch: FetchCurrent
) -> None:
    request = call.request
    assert request.resource_type is not None
    if not rights.restricted(request.resource_type, (operation,)):
        return
    if request.id is None:
        raise PolicyDeniedError(
            "conditional update, patch and delete are only available to roles unrestricted on the type"
        )
    current = await stored_resource(call, upstream, fetch)
    if current is None:
        return
    await rights.check_written(current, operation)
    if request.interaction is Interaction.PATCH:
        await rights.check_written(_patched(current, call), operation)
    pin_version(call, current)


def _patched(current: dict[str, Any], call: ProxyCall) -> dict[str, Any]:
    """The resource as a JSON Patch would leave it (FHIRPath Patch cannot be checked: refused)."""
    if call.document is not None:
        raise PolicyDeniedError("FHIRPath Patch is not available to restricted roles: use JSON Patch or PUT")
    try:
        patched = jsonpatch.apply_patch(current, orjson.loads(call.body or b"[]"))
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, ValueError, TypeError) as exc:
        raise InvalidRequestError("the JSON Patch cannot be applied to the stored resource") from exc
    if not isinstance(patched, dict) or patched.get("resourceType") != current.get("resourceType"):
        raise PolicyDeniedError("the patch would change the resource type")
    return patched


async def _authorize_entries(call: ProxyCall, rights: RightsView) -> None:
    """Every entry on its own; entries that would need the stored resource must be sent alone."""
    assert call.document is not None
    requests = classify_entries(call.document, call.public_base)
    entries = call.document.get("entry", [])
    for index, (request, entry) in enumerate(zip(requests, entries, strict=True)):
        try:
            resource = entry.get("resource") if isinstance(entry, dict) else None
            await _authorize_entry(rights, request, resource)
        except (PolicyDeniedError, NotFoundError) as error:
            raise PolicyDeniedError(f"Bundle.entry[{index}]: {error.message}") from error


async def _authorize_entry(rights: RightsView, request: FhirRequest, resource: Any) -> None:
    if request.interaction in (Interaction.BATCH, Interaction.TRANSACTION):
        raise PolicyDeniedError("nested batches are not allowed")
    operation = operation_of(request)
    if operation is None:
        return
    for resource_type in _types(request):
        rights.check_operation(resource_type, operation)
    if request.interaction in _WRITES_DOCUMENT and isinstance(resource, dict):
        await rights.check_written(resource, operation)
    stored = request.interaction in _CHANGES_STORED and request.resource_type is not None
    if stored and rights.restricted(str(request.resource_type), (operation,)):
        raise PolicyDeniedError(
            "this request must be sent on its own, not in a batch (the stored resource must be checked)"
        )


async def answer_body(
    rights: RightsView, operation: str | None, body: bytes, proven: tuple[str, str] | None = None
) -> tuple[bytes, int]:
    """The answer as the policy lets the caller see it: Bundles filtered (count of dropped entries), one
    resource refused when it may not be seen. ``proven``: ``(type, patient id)`` when every entry of the
    Bundle is known to be of that type and that patient's."""
    operations = response_operations(operation or "read")
    head = decode_resource_head(body)
    if head.resourceType == "Bundle":
        return await rights.filter_body(body, operations, proven)
    await rights.check_resource(body, operations)
    return body, 0

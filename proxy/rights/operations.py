"""Which access-policy operation a FHIR request performs (pure)."""

from __future__ import annotations

from proxy.fhir.request import FhirRequest, Interaction

__all__ = ["READ_OPERATIONS", "operation_of", "response_operations"]

READ_OPERATIONS = frozenset({"read", "search"})

_BY_INTERACTION = {
    Interaction.READ: "read",
    Interaction.VREAD: "history",
    Interaction.SEARCH_TYPE: "search",
    Interaction.SEARCH_SYSTEM: "search",
    Interaction.SEARCH_COMPARTMENT: "search",
    Interaction.PAGE: "search",
    Interaction.HISTORY_INSTANCE: "history",
    Interaction.HISTORY_TYPE: "history",
    Interaction.HISTORY_SYSTEM: "history",
    Interaction.CREATE: "create",
    Interaction.UPDATE: "update",
    Interaction.PATCH: "update",
    Interaction.DELETE: "delete",
}
_CONTENT_READS = (Interaction.READ, Interaction.VREAD)
_RENAMED_OPERATIONS = {"export": "export", "reidentify": "reidentify"}


def operation_of(request: FhirRequest, *, raw_binary: bool = False) -> str | None:
    """The policy operation of ``request``; None for what the policy does not govern (capabilities) and for
    batch/transaction (their entries are checked one by one). ``raw_binary``: the request reads raw Binary
    content (a download)."""
    interaction = request.interaction
    if interaction is Interaction.OPERATION:
        name = request.operation or ""
        return _RENAMED_OPERATIONS.get(name, f"${name}")
    if raw_binary or (request.resource_type == "Binary" and interaction in _CONTENT_READS):
        return "download"
    return _BY_INTERACTION.get(interaction)


def response_operations(operation: str) -> frozenset[str]:
    """The operations under which the resources in an answer to ``operation`` may be seen: a history shows
    past versions; everything else (reads, searches, includes, operation results, the resource a write
    returns) shows current data; the resource a write returns may also be seen under the write itself."""
    if operation == "history":
        return frozenset({"history"})
    if operation in ("create", "update"):
        return READ_OPERATIONS | {operation}
    return READ_OPERATIONS

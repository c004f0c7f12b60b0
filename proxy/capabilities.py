"""The proxy's own CapabilityStatement, derived from its upstreams' statements."""

from __future__ import annotations

from typing import Any

__all__ = ["JSON_FORMATS", "proxy_capabilities", "resource_entries"]

JSON_FORMATS = ["application/fhir+json", "json"]
_JSON_PATCH_FORMATS = {"application/json-patch+json", "application/fhir+json"}


def proxy_capabilities(
    default: dict[str, Any], routed: dict[str, dict[str, Any]], public_base: str
) -> dict[str, Any]:
    """The default upstream's statement, re-based on ``public_base``, JSON-only, with routed types merged in.

    ``routed`` maps a resource type served by another upstream to that upstream's resource entry.
    """
    statement = dict(default)
    statement["format"] = list(JSON_FORMATS)
    statement["patchFormat"] = [fmt for fmt in statement.get("patchFormat", []) if fmt in _JSON_PATCH_FORMATS]
    implementation = dict(statement.get("implementation") or {})
    implementation["url"] = public_base
    implementation.setdefault("description", "FHIR API protected by fhirwall")
    statement["implementation"] = implementation
    statement["rest"] = [_rest_with_routes(rest, routed) for rest in statement.get("rest", [])]
    return statement


def _rest_with_routes(rest: dict[str, Any], routed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if rest.get("mode") != "server":
        return rest
    rest = dict(rest)
    kept = [entry for entry in rest.get("resource", []) if entry.get("type") not in routed]
    rest["resource"] = sorted([*kept, *routed.values()], key=lambda entry: str(entry.get("type")))
    return rest


def resource_entries(statement: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The server ``rest.resource`` entries of a statement, by type."""
    entries: dict[str, dict[str, Any]] = {}
    for rest in statement.get("rest", []):
        if rest.get("mode") == "server":
            entries.update({entry["type"]: entry for entry in rest.get("resource", []) if "type" in entry})
    return entries

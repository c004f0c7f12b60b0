"""Turning verified token claims (or an introspection response) into a ``Principal``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.auth.principal import Principal, claim_at, string_list
from proxy.settings import ClaimSettings

__all__ = ["principal_from_claims"]


def principal_from_claims(claims: Mapping[str, Any], issuer: str, settings: ClaimSettings) -> Principal:
    """Build the principal; SMART launch context comes from ``patient``/``encounter``/``fhirUser``."""
    scope = claims.get("scope") or claims.get("scp") or ""
    scope_text = " ".join(scope) if isinstance(scope, list) else str(scope)
    return Principal(
        issuer=issuer,
        subject=_text(claims.get("sub")),
        client_id=_text(claims.get("client_id") or claims.get("azp") or claims.get("cid")),
        scope_text=scope_text,
        expires_at=float(claims["exp"]),
        patient=_reference_id(claims.get("patient"), "Patient"),
        encounter=_reference_id(claims.get("encounter"), "Encounter"),
        fhir_user=_text(claims.get("fhirUser")),
        purpose_of_use=_first_present(claims, settings.purpose_of_use),
        roles=_first_present(claims, settings.roles),
        organizations=_first_present(claims, settings.organizations),
        token_id=_text(claims.get("jti")),
        claims=dict(claims),
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _reference_id(value: Any, resource_type: str) -> str | None:
    """``123`` or ``Patient/123`` -> ``123``."""
    text = _text(value)
    if text is None:
        return None
    return text.removeprefix(f"{resource_type}/")


def _first_present(claims: Mapping[str, Any], paths: list[str]) -> tuple[str, ...]:
    for path in paths:
        values = string_list(claim_at(claims, path))
        if values:
            return values
    return ()

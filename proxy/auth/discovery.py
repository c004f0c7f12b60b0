"""SMART discovery: ``/.well-known/smart-configuration`` and the CapabilityStatement's ``rest.security``.

The endpoints come from the configured authorization server's own metadata (OpenID Connect discovery or
RFC 8414), fetched once and cached; explicit settings override them. Endpoint URLs are absolute.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from proxy.auth.scopes import CONTEXTS
from proxy.errors import IssuerUnavailableError
from proxy.settings import AuthSettings

__all__ = ["SmartDiscovery", "security_extension"]

METADATA_TTL_SECONDS = 3600.0
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
_OAUTH_URI_NAMES = {
    "authorization_endpoint": "authorize",
    "token_endpoint": "token",
    "introspection_endpoint": "introspect",
    "revocation_endpoint": "revoke",
    "management_endpoint": "manage",
    "registration_endpoint": "register",
}
_METADATA_KEYS = (
    "issuer",
    "jwks_uri",
    "authorization_endpoint",
    "token_endpoint",
    "introspection_endpoint",
    "revocation_endpoint",
    "registration_endpoint",
    "management_endpoint",
    "token_endpoint_auth_methods_supported",
    "token_endpoint_auth_signing_alg_values_supported",
    "grant_types_supported",
    "response_types_supported",
    "code_challenge_methods_supported",
)


class SmartDiscovery:
    """Builds the SMART configuration document from settings and the authorization server's metadata."""

    def __init__(self, settings: AuthSettings, client: httpx.AsyncClient, dev_issuer: str | None) -> None:
        self.settings = settings
        self._client = client
        self._dev_issuer = dev_issuer
        self._metadata: dict[str, Any] | None = None
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def configuration(self, public_base: str) -> dict[str, Any]:
        """The ``smart-configuration`` document for the FHIR base ``public_base``."""
        server = self.settings.authorization_server
        metadata = await self._server_metadata()
        document: dict[str, Any] = {key: metadata[key] for key in _METADATA_KEYS if key in metadata}
        if self._dev_issuer is not None and "issuer" not in document:
            document["issuer"] = self._dev_issuer
            document["jwks_uri"] = f"{self._dev_issuer}/jwks.json"
            document["token_endpoint"] = f"{self._dev_issuer}/token"
            document["grant_types_supported"] = ["client_credentials"]
            document["token_endpoint_auth_methods_supported"] = ["none"]
        for key in ("authorization_endpoint", "token_endpoint"):
            override = getattr(server, key)
            if override:
                document[key] = override
        document.setdefault("grant_types_supported", ["authorization_code", "client_credentials"])
        document["code_challenge_methods_supported"] = ["S256"]
        document["capabilities"] = list(server.capabilities)
        document["scopes_supported"] = scopes_supported()
        document.setdefault("response_types_supported", ["code"])
        document["fhir_base"] = public_base
        return document

    async def _server_metadata(self) -> dict[str, Any]:
        url = self.settings.authorization_server.metadata_url
        if url is None:
            return {}
        if self._metadata is None or time.monotonic() - self._fetched_at > METADATA_TTL_SECONDS:
            async with self._lock:
                if self._metadata is None or time.monotonic() - self._fetched_at > METADATA_TTL_SECONDS:
                    self._metadata = await self._fetch(url)
                    self._fetched_at = time.monotonic()
        return self._metadata

    async def _fetch(self, url: str) -> dict[str, Any]:
        try:
            response = await self._client.get(url, headers={"accept": "application/json"})
            response.raise_for_status()
            metadata = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            if self._metadata is not None:
                return self._metadata  # keep the last good copy
            raise IssuerUnavailableError("the authorization server's metadata could not be fetched") from exc
        if not isinstance(metadata, dict):
            raise IssuerUnavailableError("the authorization server's metadata is not a JSON object")
        return metadata


def scopes_supported() -> list[str]:
    """The scope shapes the proxy enforces."""
    resource = [f"{context}/*.{letters}" for context in CONTEXTS for letters in ("cruds", "rs")]
    return [
        "openid",
        "fhirUser",
        "launch",
        "launch/patient",
        "launch/encounter",
        "offline_access",
        "online_access",
        *resource,
        "patient/*.read",
        "user/*.read",
        "system/*.read",
    ]


def security_extension(configuration: dict[str, Any]) -> dict[str, Any]:
    """The CapabilityStatement ``rest.security`` element for a SMART-protected server."""
    uris = [
        {"url": name, "valueUri": configuration[key]}
        for key, name in _OAUTH_URI_NAMES.items()
        if key in configuration
    ]
    return {
        "cors": True,
        "service": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR",
                    }
                ],
                "text": "OAuth2 using SMART-on-FHIR profile",
            }
        ],
        "extension": [{"url": OAUTH_URIS, "extension": uris}] if uris else [],
        "description": "Bearer access tokens (SMART App Launch 2.x scopes, v1 and v2) are required.",
    }

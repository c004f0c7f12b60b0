"""Where a patient's Consents come from: a FHIR server, through a cache.

``FhirConsentStore`` reads ``Consent?patient=<id>`` from the upstream serving Consent (all pages, bounded);
``CachedConsentStore`` puts a ``ConsentCache`` in front of it. Every failure — upstream down, a Consent that
cannot be parsed, a cache that cannot be reached — raises ``ConsentLookupError``: access is then denied, never
assumed.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from consent.cache import ConsentCache
from consent.errors import ConsentLookupError
from consent.model import ConsentDirective, ConsentParseError, parse_consent
from proxy.errors import ProxyError
from proxy.fhir.urls import rebase_url
from proxy.upstream import Upstream

__all__ = ["CachedConsentStore", "ConsentStore", "FhirConsentStore", "parse_bundle_consents"]

MAX_PAGES = 20
PAGE_SIZE = 100


class ConsentStore(Protocol):
    """Gives the parsed Consents on file for one patient."""

    async def consents_for(self, patient_id: str) -> tuple[ConsentDirective, ...]: ...

    async def invalidate(self, patient_id: str) -> None: ...

    async def invalidate_all(self) -> None: ...


class FhirConsentStore:
    """Reads Consents from a FHIR server (the upstream routed for Consent)."""

    def __init__(self, upstream: Upstream, max_bytes: int) -> None:
        self._upstream = upstream
        self._max_bytes = max_bytes

    async def raw_consents_for(self, patient_id: str) -> list[dict[str, Any]]:
        """The Consent resources on file for the patient, as JSON objects."""
        path = f"/Consent?patient=Patient/{patient_id}&_count={PAGE_SIZE}"
        resources: list[dict[str, Any]] = []
        for _ in range(MAX_PAGES):
            bundle = await self._get(path)
            resources += [
                entry["resource"]
                for entry in bundle.get("entry", [])
                if isinstance(entry, dict)
                and isinstance(entry.get("resource"), dict)
                and entry["resource"].get("resourceType") == "Consent"
            ]
            next_path = self._next_path(bundle)
            if next_path is None:
                return resources
            path = next_path
        raise ConsentLookupError("the patient has more Consent records than the proxy reads")

    async def consents_for(self, patient_id: str) -> tuple[ConsentDirective, ...]:
        return parse_bundle_consents(await self.raw_consents_for(patient_id))

    async def _get(self, path: str) -> dict[str, Any]:
        headers = {"accept": "application/fhir+json"}
        try:
            answer = await self._upstream.send(
                "GET", self._upstream.url_for(path), headers, None, max_bytes=self._max_bytes
            )
        except ProxyError as exc:
            raise ConsentLookupError() from exc
        if answer.status != 200:
            raise ConsentLookupError(f"the consent server answered {answer.status}")
        try:
            bundle = orjson.loads(answer.body)
        except orjson.JSONDecodeError as exc:
            raise ConsentLookupError("the consent server sent malformed JSON") from exc
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise ConsentLookupError("the consent server did not answer with a Bundle")
        return bundle

    def _next_path(self, bundle: dict[str, Any]) -> str | None:
        for link in bundle.get("link", []):
            if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
                relative = rebase_url(link["url"], [self._upstream.base_url], "")
                if relative == link["url"]:
                    raise ConsentLookupError("the consent server's paging link points elsewhere")
                return relative
        return None


def parse_bundle_consents(resources: list[dict[str, Any]]) -> tuple[ConsentDirective, ...]:
    """Parse every Consent; one that cannot be understood fails the lookup (it might have denied access)."""
    try:
        return tuple(parse_consent(resource) for resource in resources)
    except ConsentParseError as exc:
        raise ConsentLookupError("a Consent on file could not be understood, so access is denied") from exc


class CachedConsentStore:
    """A ``FhirConsentStore`` behind a cache holding the raw Consents per patient (bounded TTL)."""

    def __init__(self, source: FhirConsentStore, cache: ConsentCache) -> None:
        self.source = source
        self.cache = cache

    async def consents_for(self, patient_id: str) -> tuple[ConsentDirective, ...]:
        cached = await self.cache.get(patient_id)
        if cached is not None:
            return cached
        raw = await self.source.raw_consents_for(patient_id)
        parsed = parse_bundle_consents(raw)
        await self.cache.put(patient_id, raw, parsed)
        return parsed

    async def invalidate(self, patient_id: str) -> None:
        """Forget the patient's Consents here and on every replica (after a Consent was written)."""
        await self.cache.invalidate(patient_id)

    async def invalidate_all(self) -> None:
        """Forget every patient's Consents (when a change cannot be tied to one patient)."""
        await self.cache.invalidate_all()

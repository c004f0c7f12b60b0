"""Who the caller is to the access policy: roles, organisations, locations and specialties.

From the token (roles claim, organisation claims, extra claim paths from the policy), from the policy's
own assignments (by client_id, by user), and — for practitioners — from the FHIR server:
``PractitionerRole?practitioner=<fhirUser>``, of which only active roles within their period count. Looked-up
attributes are reused for ``attributes.cache_seconds``: an ended or inactivated PractitionerRole stops
granting within that time. A failed lookup fails the request (``RightsLookupError``, 503): rights are
never guessed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from consent.dates import FhirDateError, parse_period
from proxy.auth.principal import Principal, claim_at, string_list
from proxy.errors import ProxyError
from proxy.rights.errors import RightsLookupError
from proxy.rights.model import AccessPolicy
from proxy.upstream import UpstreamRouter

__all__ = ["AttributeResolver", "StaffAttributes"]

_PAGE = 200


@dataclass(frozen=True, slots=True)
class StaffAttributes:
    """The caller's attributes as the access policy sees them (references are ``Type/id``)."""

    roles: frozenset[str]
    organizations: frozenset[str] = frozenset()
    locations: frozenset[str] = frozenset()
    specialties: frozenset[str] = frozenset()
    practitioner_roles: frozenset[str] = frozenset()
    fhir_user: str | None = None
    subject: str | None = None
    client_id: str | None = None
    environment: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def references(self) -> frozenset[str]:
        """Every reference that stands for the caller in a care relationship."""
        own = {self.fhir_user} if self.fhir_user else set()
        return frozenset(own) | self.practitioner_roles | self.organizations | self.locations


@dataclass(frozen=True, slots=True)
class _Looked:
    roles: frozenset[str] = frozenset()
    organizations: frozenset[str] = frozenset()
    locations: frozenset[str] = frozenset()
    specialties: frozenset[str] = frozenset()
    practitioner_roles: frozenset[str] = frozenset()


class AttributeResolver:
    """Builds ``StaffAttributes`` for a principal (looked-up parts cached per user for a bounded time)."""

    def __init__(self, policy: AccessPolicy, router: UpstreamRouter, max_bytes: int) -> None:
        self.policy = policy
        self._router = router
        self._max_bytes = max_bytes
        self._cache: dict[str, tuple[float, _Looked]] = {}

    async def attributes_for(self, principal: Principal) -> StaffAttributes:
        """The caller's attributes (token + assignments + looked-up PractitionerRoles)."""
        looked = await self._looked_up(principal.fhir_user)
        settings = self.policy.attributes
        assignments = self.policy.assignments
        roles = set(looked.roles)
        if assignments.from_token:
            roles |= set(principal.roles)
        roles |= set(assignments.clients.get(principal.client_id or "", ()))
        for user in (principal.fhir_user, principal.subject):
            roles |= set(assignments.users.get(user or "", ()))
        organizations = looked.organizations | _references(principal.organizations, "Organization")
        organizations |= _references(_claims(principal, settings.organizations_claims), "Organization")
        locations = looked.locations | _references(_claims(principal, settings.locations_claims), "Location")
        specialties = looked.specialties | frozenset(_claims(principal, settings.specialties_claims))
        known = frozenset(role for role in roles if role in self.policy.roles)
        return StaffAttributes(
            roles=known,
            organizations=organizations,
            locations=locations,
            specialties=specialties,
            practitioner_roles=looked.practitioner_roles,
            fhir_user=principal.fhir_user,
            subject=principal.subject,
            client_id=principal.client_id,
            environment=_environment(principal, known, organizations, locations, specialties),
        )

    def forget(self, fhir_user: str | None = None) -> None:
        """Drop cached lookups (one user, or everyone)."""
        if fhir_user is None:
            self._cache.clear()
        else:
            self._cache.pop(fhir_user, None)

    async def _looked_up(self, fhir_user: str | None) -> _Looked:
        if not self.policy.attributes.practitioner_roles or not fhir_user:
            return _Looked()
        if not fhir_user.startswith("Practitioner/"):
            return _Looked()
        now = time.monotonic()
        cached = self._cache.get(fhir_user)
        if cached is not None and cached[0] > now:
            return cached[1]
        looked = self._summarise(await self._practitioner_roles(fhir_user), fhir_user)
        if len(self._cache) > 50_000:
            self._cache.clear()
        self._cache[fhir_user] = (now + self.policy.attributes.cache_seconds, looked)
        return looked

    async def _practitioner_roles(self, fhir_user: str) -> list[dict[str, Any]]:
        upstream = self._router.for_type("PractitionerRole")
        url = upstream.url_for("/PractitionerRole", f"practitioner={fhir_user}&_count={_PAGE}")
        try:
            answer = await upstream.send(
                "GET", url, {"accept": "application/fhir+json"}, None, max_bytes=self._max_bytes
            )
            bundle = orjson.loads(answer.body) if answer.status == 200 else None
        except (ProxyError, orjson.JSONDecodeError) as exc:
            raise RightsLookupError() from exc
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise RightsLookupError()
        if any(isinstance(link, dict) and link.get("relation") == "next" for link in bundle.get("link", [])):
            raise RightsLookupError(f"the caller holds more than {_PAGE} PractitionerRoles")
        return [
            entry["resource"]
            for entry in bundle.get("entry", [])
            if isinstance(entry, dict)
            and isinstance(entry.get("resource"), dict)
            and entry["resource"].get("resourceType") == "PractitionerRole"
        ]

    def _summarise(self, resources: Iterable[dict[str, Any]], fhir_user: str) -> _Looked:
        codes = self.policy.assignments.practitioner_role_codes
        now = datetime.now(UTC)
        roles: set[str] = set()
        organizations: set[str] = set()
        locations: set[str] = set()
        specialties: set[str] = set()
        ids: set[str] = set()
        for resource in resources:
            if not _current(resource, fhir_user, now):
                continue
            ids.add(f"PractitionerRole/{resource['id']}")
            organizations |= _reference_set([resource.get("organization")], "Organization")
            locations |= _reference_set(_as_list(resource.get("location")), "Location")
            specialties |= _codes(resource.get("specialty"))
            for concept in _as_list(resource.get("code")):
                for coding in _as_list(concept.get("coding") if isinstance(concept, dict) else None):
                    role = _mapped(coding, codes)
                    if role is not None:
                        roles.add(role)
        return _Looked(
            frozenset(roles),
            frozenset(organizations),
            frozenset(locations),
            frozenset(specialties),
            frozenset(ids),
        )


def _current(resource: dict[str, Any], fhir_user: str, now: datetime) -> bool:
    """An active PractitionerRole of this practitioner, in its period (the server's search is checked; an
    unreadable period grants nothing)."""
    if not isinstance(resource.get("id"), str) or resource.get("active") is False:
        return False
    practitioner = resource.get("practitioner")
    if not isinstance(practitioner, dict) or practitioner.get("reference") != fhir_user:
        return False
    if "period" not in resource:
        return True
    try:
        return parse_period(resource["period"]).contains(now)
    except FhirDateError:
        return False


def _mapped(coding: Any, codes: dict[str, str]) -> str | None:
    if not isinstance(coding, dict) or not isinstance(coding.get("code"), str):
        return None
    system = coding.get("system")
    if isinstance(system, str) and f"{system}|{coding['code']}" in codes:
        return codes[f"{system}|{coding['code']}"]
    return codes.get(coding["code"])


def _codes(value: Any) -> set[str]:
    return {
        coding["code"]
        for concept in _as_list(value)
        if isinstance(concept, dict)
        for coding in _as_list(concept.get("coding"))
        if isinstance(coding, dict) and isinstance(coding.get("code"), str)
    }


def _reference_set(values: Iterable[Any], resource_type: str) -> set[str]:
    return {
        value["reference"]
        for value in values
        if isinstance(value, dict)
        and isinstance(value.get("reference"), str)
        and value["reference"].startswith(f"{resource_type}/")
    }


def _references(values: Iterable[str], resource_type: str) -> frozenset[str]:
    return frozenset(v if v.startswith(f"{resource_type}/") else f"{resource_type}/{v}" for v in values if v)


def _claims(principal: Principal, paths: list[str]) -> tuple[str, ...]:
    return tuple(value for path in paths for value in string_list(claim_at(principal.claims, path)))


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _environment(
    principal: Principal,
    roles: frozenset[str],
    organizations: frozenset[str],
    locations: frozenset[str],
    specialties: frozenset[str],
) -> dict[str, Any]:
    """``%principal`` for conditions (sorted lists; absent values left out)."""
    environment: dict[str, Any] = {
        "roles": sorted(roles),
        "organizations": sorted(organizations),
        "locations": sorted(locations),
        "specialties": sorted(specialties),
    }
    for key, value in (
        ("fhirUser", principal.fhir_user),
        ("subject", principal.subject),
        ("clientId", principal.client_id),
    ):
        if value:
            environment[key] = value
    return environment

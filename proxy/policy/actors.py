"""Who the requester is, as Consent actors: the token's ``fhirUser`` and organisations, plus what the FHIR
server says about that user — their PractitionerRoles (and the roles' organisations), the CareTeams they take
part in and the Groups they belong to. Looked up once per user and cached for a bounded time; a failed lookup
fails the consent check (it could have matched a deny)."""

from __future__ import annotations

import time
from typing import Any

import orjson

from consent.errors import ConsentLookupError
from proxy.auth.principal import Principal
from proxy.errors import ProxyError
from proxy.upstream import UpstreamRouter

__all__ = ["ActorResolver", "token_actors"]

# per membership: resource type, search parameter naming the user, the path where the user must really be
# (servers may ignore a search parameter they do not support: results are checked here), references to collect
_MEMBERSHIPS = (
    ("PractitionerRole", "practitioner", ("practitioner",), ("organization",)),
    ("CareTeam", "participant", ("participant", "member"), ()),
    ("Group", "member", ("member", "entity"), ()),
)
_SEARCHABLE_USERS = ("Practitioner/", "PractitionerRole/", "Patient/", "RelatedPerson/")
_ENDED = frozenset({"inactive", "entered-in-error", "suspended"})


def token_actors(principal: Principal) -> frozenset[str]:
    """The actors the token states itself: ``fhirUser`` and organisations (as ``Organization/<id>``)."""
    actors = {principal.fhir_user} if principal.fhir_user else set()
    for organization in principal.organizations:
        actors.add(
            organization if organization.startswith("Organization/") else f"Organization/{organization}"
        )
    return frozenset(actor for actor in actors if actor)


class ActorResolver:
    """Adds the user's memberships from the FHIR server to the token's actors (cached per user)."""

    def __init__(self, router: UpstreamRouter, ttl: float, max_bytes: int) -> None:
        self._router = router
        self._ttl = ttl
        self._max_bytes = max_bytes
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}

    async def actors_for(self, principal: Principal) -> frozenset[str]:
        """Every reference the requester counts as when a Consent names an actor."""
        actors = token_actors(principal)
        user = principal.fhir_user
        if not user or not user.startswith(_SEARCHABLE_USERS):
            return actors
        cached = self._cache.get(user)
        if cached is None or time.monotonic() >= cached[0]:
            cached = (time.monotonic() + self._ttl, await self._memberships(user))
            if len(self._cache) > 50_000:
                self._cache.clear()
            self._cache[user] = cached
        return actors | cached[1]

    async def _memberships(self, user: str) -> frozenset[str]:
        found: set[str] = set()
        for resource_type, parameter, path, elements in _MEMBERSHIPS:
            for resource in await self._search(resource_type, f"{parameter}={user}"):
                if resource.get("active") is False or resource.get("status") in _ENDED:
                    continue  # an ended role or membership grants nothing
                if user not in _references_at(resource, path):
                    continue  # the server ignored the search parameter: not a membership
                found.add(f"{resource_type}/{resource['id']}")
                found |= _references(resource, elements)
        return frozenset(found)

    async def _search(self, resource_type: str, query: str) -> list[dict[str, Any]]:
        upstream = self._router.for_type(resource_type)
        url = upstream.url_for(f"/{resource_type}", f"{query}&_count=200")
        try:
            answer = await upstream.send(
                "GET", url, {"accept": "application/fhir+json"}, None, max_bytes=self._max_bytes
            )
            bundle = orjson.loads(answer.body) if answer.status == 200 else None
        except (ProxyError, orjson.JSONDecodeError) as exc:
            raise ConsentLookupError("the requester's care teams and roles could not be looked up") from exc
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise ConsentLookupError("the requester's care teams and roles could not be looked up")
        return [
            entry["resource"]
            for entry in bundle.get("entry", [])
            if isinstance(entry, dict)
            and isinstance(entry.get("resource"), dict)
            and entry["resource"].get("resourceType") == resource_type
            and "id" in entry["resource"]
        ]


def _references_at(resource: dict[str, Any], path: tuple[str, ...]) -> set[str]:
    """The ``Type/id`` references at ``path`` (arrays walked), e.g. CareTeam participant.member."""
    nodes: list[Any] = [resource]
    for step in path:
        nodes = [child for node in nodes if isinstance(node, dict) for child in _as_list(node.get(step))]
    return {
        node["reference"]
        for node in nodes
        if isinstance(node, dict) and isinstance(node.get("reference"), str)
    }


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _references(resource: dict[str, Any], elements: tuple[str, ...]) -> set[str]:
    found = set()
    for element in elements:
        value = resource.get(element)
        reference = value.get("reference") if isinstance(value, dict) else None
        if isinstance(reference, str) and reference.count("/") == 1:
            found.add(reference)
    return found

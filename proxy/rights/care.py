"""Department isolation: is a patient in the caller's care?

A patient is in a user's care while the FHIR server shows one of (as configured in ``isolation.sources``):
an Encounter that is active or ended at most ``recent_days`` ago, at one of the user's organisations
(``serviceProvider``) or locations, or with the user (or one of their PractitionerRoles) as participant; an
EpisodeOfCare, likewise current, managed by one of the user's organisations or by the user
(``careManager``); an active CareTeam with the user, their role or their organisation as member.

Per patient the relationships are read once (all sources, paged, bounded) into ``CareFacts`` — which
references relate to the patient and until when — and reused for ``isolation.cache_seconds``; every user's
question about that patient is then a set lookup. Results are checked here, not trusted to the server's
search. A failed lookup raises ``RightsLookupError``: the data is withheld.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from consent.dates import FhirDateError, instant_range
from proxy.errors import ProxyError
from proxy.fhir.compartment import patient_id_of_reference
from proxy.fhir.urls import rebase_url
from proxy.rights.errors import RightsLookupError
from proxy.rights.model import IsolationSettings
from proxy.upstream import UpstreamRouter

__all__ = ["CareFacts", "CareIndex", "facts_from_resources"]

_ACTIVE_ENCOUNTER = ("planned", "arrived", "triaged", "in-progress", "onleave")
_ACTIVE_EPISODE = ("planned", "waitlist", "active", "onhold")
_MAX_PAGES = 10
_PAGE = 200
_FOREVER = float("inf")


@dataclass(frozen=True, slots=True)
class CareFacts:
    """The references related to one patient's care, each with the time (epoch s) it stops counting."""

    until: dict[str, float]

    def relates(self, references: Iterable[str], now: float) -> bool:
        """Does any of ``references`` (the caller) have a current care relationship with the patient?"""
        until = self.until
        return any(until.get(reference, 0.0) >= now for reference in references)


class CareIndex:
    """Reads and caches each patient's care relationships from the FHIR server."""

    def __init__(self, settings: IsolationSettings, router: UpstreamRouter, max_bytes: int) -> None:
        self.settings = settings
        self._router = router
        self._max_bytes = max_bytes
        self._cache: dict[str, tuple[float, CareFacts]] = {}
        self._pending: dict[str, asyncio.Future[CareFacts]] = {}
        self._limit = asyncio.Semaphore(8)

    async def facts_for(self, patient: str) -> CareFacts:
        """The patient's care relationships (cached; concurrent requests share one lookup)."""
        now = time.monotonic()
        cached = self._cache.get(patient)
        if cached is not None and cached[0] > now:
            return cached[1]
        pending = self._pending.get(patient)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[CareFacts] = asyncio.get_running_loop().create_future()
        self._pending[patient] = future
        try:
            facts = await self._read(patient)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody logs it as unhandled
            raise
        finally:
            del self._pending[patient]
        future.set_result(facts)
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[patient] = (time.monotonic() + self.settings.cache_seconds, facts)
        return facts

    async def facts_for_all(self, patients: Iterable[str]) -> dict[str, CareFacts]:
        """Facts for several patients (looked up concurrently)."""
        unique = sorted(set(patients))
        found = await asyncio.gather(*(self.facts_for(patient) for patient in unique))
        return dict(zip(unique, found, strict=True))

    def forget(self, patient: str | None = None) -> None:
        """Drop cached facts (one patient, or all)."""
        if patient is None:
            self._cache.clear()
        else:
            self._cache.pop(patient, None)

    async def _read(self, patient: str) -> CareFacts:
        reference = f"Patient/{patient}"
        cutoff = datetime.now(UTC) - timedelta(days=self.settings.recent_days)
        queries: list[tuple[str, str]] = []
        sources = self.settings.sources
        if "encounter" in sources:
            queries.append(("Encounter", f"patient={reference}&date=ge{cutoff.date().isoformat()}"))
            queries.append(("Encounter", f"patient={reference}&status={','.join(_ACTIVE_ENCOUNTER)}"))
        if "episode-of-care" in sources:
            queries.append(("EpisodeOfCare", f"patient={reference}"))
        if "care-team" in sources:
            queries.append(("CareTeam", f"patient={reference}&status=active"))
        results = await asyncio.gather(*(self._search(kind, query) for kind, query in queries))
        resources = [resource for found in results for resource in found]
        return facts_from_resources(resources, patient, self.settings.recent_days)

    async def _search(self, resource_type: str, query: str) -> list[dict[str, Any]]:
        upstream = self._router.for_type(resource_type)
        path: str | None = f"/{resource_type}?{query}&_count={_PAGE}"
        found: list[dict[str, Any]] = []
        for _ in range(_MAX_PAGES):
            if path is None:
                return found
            bundle = await self._get(upstream, path)
            found += [
                entry["resource"]
                for entry in bundle.get("entry", [])
                if isinstance(entry, dict)
                and isinstance(entry.get("resource"), dict)
                and entry["resource"].get("resourceType") == resource_type
            ]
            path = _next_path(bundle, upstream.base_url)
        raise RightsLookupError("the patient has more care records than the proxy reads")

    async def _get(self, upstream: Any, path: str) -> dict[str, Any]:
        relative, _, query = path.partition("?")
        async with self._limit:
            try:
                answer = await upstream.send(
                    "GET",
                    upstream.url_for(relative, query),
                    {"accept": "application/fhir+json"},
                    None,
                    max_bytes=self._max_bytes,
                )
                bundle = orjson.loads(answer.body) if answer.status == 200 else None
            except (ProxyError, orjson.JSONDecodeError) as exc:
                raise RightsLookupError() from exc
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise RightsLookupError()
        return bundle


def _next_path(bundle: dict[str, Any], base_url: str) -> str | None:
    for link in bundle.get("link", []):
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            relative = rebase_url(link["url"], [base_url], "")
            if relative == link["url"]:
                raise RightsLookupError("the server's paging link points elsewhere")
            return relative
    return None


def facts_from_resources(resources: Iterable[dict[str, Any]], patient: str, recent_days: int) -> CareFacts:
    """The care facts in Encounters, EpisodesOfCare and CareTeams of ``patient`` (others are ignored)."""
    grace = recent_days * 86_400.0
    until: dict[str, float] = {}
    for resource in resources:
        if _subject(resource) != patient:
            continue  # the server ignored the patient parameter: not this patient's record
        ends = _ends(resource)
        if ends is None:
            continue
        limit = ends + grace if ends != _FOREVER else _FOREVER
        for reference in _related(resource):
            until[reference] = max(until.get(reference, 0.0), limit)
    return CareFacts(until)


def _subject(resource: dict[str, Any]) -> str | None:
    key = "subject" if resource.get("resourceType") in ("Encounter", "CareTeam") else "patient"
    value = resource.get(key)
    reference = value.get("reference") if isinstance(value, dict) else None
    return patient_id_of_reference(reference) if isinstance(reference, str) else None


def _ends(resource: dict[str, Any]) -> float | None:
    """When the relationship ended (epoch s), ``_FOREVER`` while current, None when it never counts."""
    resource_type = resource.get("resourceType")
    status = resource.get("status")
    raw_period = resource.get("period")
    period: dict[str, Any] = raw_period if isinstance(raw_period, dict) else {}
    if resource_type == "CareTeam":
        return _FOREVER if status == "active" and not _ended(period) else None
    active = _ACTIVE_ENCOUNTER if resource_type == "Encounter" else _ACTIVE_EPISODE
    if status in active:
        return _FOREVER
    if status != "finished":
        return None  # cancelled, entered-in-error, unknown: never a care relationship
    end = period.get("end") or period.get("start")
    return _epoch(end) if isinstance(end, str) else None


def _ended(period: dict[str, Any]) -> bool:
    end = period.get("end")
    return isinstance(end, str) and (_epoch(end) or _FOREVER) < time.time()


def _related(resource: dict[str, Any]) -> set[str]:
    """The references that stand in a care relationship through this resource."""
    resource_type = resource.get("resourceType")
    if resource_type == "Encounter":
        locations = (item.get("location") for item in _dicts(resource.get("location")))
        participants = (item.get("individual") for item in _dicts(resource.get("participant")))
        return _refs([resource.get("serviceProvider")]) | _refs(locations) | _refs(participants)
    if resource_type == "EpisodeOfCare":
        managers = [resource.get("managingOrganization"), resource.get("careManager")]
        return _refs(managers) | _refs(_list(resource.get("team")))
    members = (item.get("member") for item in _dicts(resource.get("participant")))
    return _refs(_list(resource.get("managingOrganization"))) | _refs(members)


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in _list(value) if isinstance(item, dict)]


def _refs(values: Iterable[Any]) -> set[str]:
    return {
        value["reference"]
        for value in values
        if isinstance(value, dict)
        and isinstance(value.get("reference"), str)
        and value["reference"].count("/") == 1
    }


def _list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _epoch(text: str) -> float | None:
    """The end of the span a FHIR date/dateTime stands for, as epoch seconds; None if it is not one."""
    try:
        end = instant_range(text).end
    except FhirDateError:
        return None
    return end.timestamp() if end is not None else None

"""Carrying out access decisions around the upstream call (the I/O-free parts of the enforcement point).

Request side: narrowing queries and form bodies, checking a JSON Patch's result before it is applied.
Response side: one resource must be visible; every Bundle is filtered and its paging links sealed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

import jsonpatch
import orjson

from proxy.errors import ForbiddenError, InvalidRequestError, NotFoundError
from proxy.fhir.compartment import PATIENT_COMPARTMENT_TYPES
from proxy.fhir.documents import ResourceHead
from proxy.fhir.request import FhirRequest, Interaction
from proxy.fhir.urls import rebase_url
from proxy.policy.access import READ_PERMISSIONS, AccessView
from proxy.policy.decision import AccessDecision, ResponseCheck
from proxy.policy.fast_bundle import ProvenSearchset, fast_patient_searchset
from proxy.policy.filtering import filter_bundle
from proxy.policy.paging import PageLocation, PageSealer

__all__ = ["LinkContext", "check_patch_result", "checked_body", "fast_checked_body", "narrowed_query"]

_READS = frozenset({Interaction.READ, Interaction.VREAD, Interaction.OPERATION})


def narrowed_query(query: str, extra: tuple[tuple[str, str], ...]) -> str:
    """``query`` with the decision's extra parameters appended."""
    if not extra:
        return query
    addition = urlencode(extra)
    return f"{query}&{addition}" if query else addition


def check_patch_result(
    view: AccessView, current: dict[str, Any], patch_body: bytes | None, document: dict[str, Any] | None
) -> None:
    """A restricted principal's PATCH: the patched resource must still be writable by it."""
    if document is not None:
        raise ForbiddenError("FHIRPath Patch is not available to restricted tokens: use JSON Patch or PUT")
    try:
        patched = jsonpatch.apply_patch(current, orjson.loads(patch_body or b"[]"))
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, ValueError, TypeError) as exc:
        raise InvalidRequestError("the JSON Patch cannot be applied to the stored resource") from exc
    if not isinstance(patched, dict) or patched.get("resourceType") != current.get("resourceType"):
        raise ForbiddenError("the patch would change the resource type")
    if patched.get("id") != current.get("id") or not view.can_write(patched, "u"):
        raise ForbiddenError("the patched resource would be outside what the token may write")


class LinkContext:
    """Turns upstream paging links into sealed proxy links for one request."""

    def __init__(
        self,
        sealer: PageSealer,
        upstream_name: str,
        upstream_base: str,
        public_base: str,
        resource_type: str | None,
        binding: str,
        total_is_exact: bool,
    ) -> None:
        self._sealer = sealer
        self._upstream_name = upstream_name
        self._upstream_base = upstream_base
        self._public_base = public_base
        self._resource_type = resource_type
        self._binding = binding
        self._exact = total_is_exact

    def seal(self, links: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Links under the upstream base, sealed (one token for all); others are dropped, never followed."""
        paths: dict[str, str] = {}
        kept: list[dict[str, Any]] = []
        for link in links:
            url = link.get("url") if isinstance(link, dict) else None
            relation = link.get("relation") if isinstance(link, dict) else None
            if not isinstance(url, str) or not isinstance(relation, str) or relation in paths:
                continue
            relative = rebase_url(url, [self._upstream_base], "")
            if relative != url:
                paths[relation] = relative
                kept.append(link)
        if not paths:
            return []
        location = PageLocation(self._upstream_name, paths, self._resource_type, self._binding, self._exact)
        prefix = f"{self._public_base}/_page?token={self._sealer.seal(location)}&rel="
        return [{**link, "url": prefix + quote(link["relation"], safe="")} for link in kept]


_SEARCHES = frozenset({Interaction.SEARCH_TYPE, Interaction.SEARCH_COMPARTMENT, Interaction.PAGE})


def fast_checked_body(
    view: AccessView,
    request: FhirRequest,
    decision: AccessDecision,
    body: bytes,
    links: LinkContext | None,
    *,
    drop_total: bool = False,
) -> ProvenSearchset | None:
    """The body of a patient-context searchset of one compartment type when every entry provably names the
    token's patient (see ``proxy.policy.fast_bundle``); None when the general path must decide.
    ``drop_total``: remove ``Bundle.total`` even when the query enforced every restriction."""
    resource_type = request.resource_type
    patient = view.principal.patient
    if (
        decision.response is not ResponseCheck.BUNDLE
        or request.interaction not in _SEARCHES
        or resource_type not in PATIENT_COMPARTMENT_TYPES
        or patient is None
        or view.uses_criteria()
        or not any(view.allows_type(resource_type, permission) for permission in READ_PERMISSIONS)
    ):
        return None
    seal = links.seal if links else None
    total_allowed = decision.total_is_exact and not drop_total
    return fast_patient_searchset(body, resource_type, patient, seal, total_allowed=total_allowed)


def checked_body(
    view: AccessView,
    request: FhirRequest,
    decision: AccessDecision,
    head: ResourceHead,
    body: bytes,
    links: LinkContext | None,
) -> bytes:
    """The response body as the principal may see it (raises when a single resource must be withheld)."""
    if head.resourceType == "Bundle" and decision.response is not ResponseCheck.NONE:
        seal: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = links.seal if links else None
        visible = None if view.sees_everything() else view.can_see
        slim = not view.uses_criteria()
        return filter_bundle(
            body, visible, keep_total=decision.total_is_exact, seal_links=seal, slim=slim
        ).body
    if decision.response is ResponseCheck.NONE or head.resourceType == "OperationOutcome":
        return body
    resource = orjson.loads(body)
    permissions = READ_PERMISSIONS if request.interaction in _READS else (*READ_PERMISSIONS, "c", "u")
    if view.can_see(resource, permissions):
        return body
    if request.interaction in _READS and view.settings.hide_existence:
        raise NotFoundError()
    raise ForbiddenError("the response was withheld: it is outside what the token may see")

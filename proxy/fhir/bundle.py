"""Bundle helpers: the requests inside a batch or transaction."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from proxy.errors import InvalidRequestError, ProxyError
from proxy.fhir.request import FhirRequest, classify

__all__ = ["classify_entries"]

_ENTRY_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})


def classify_entries(bundle: dict[str, Any], public_base: str) -> list[FhirRequest]:
    """Classify each ``entry.request`` of a batch/transaction Bundle; one invalid entry fails the call."""
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise InvalidRequestError("Bundle.entry must be an array")
    return [_classify_entry(index, entry, public_base) for index, entry in enumerate(entries)]


def _classify_entry(index: int, entry: Any, public_base: str) -> FhirRequest:
    request = entry.get("request") if isinstance(entry, dict) else None
    if not isinstance(request, dict):
        raise InvalidRequestError(f"Bundle.entry[{index}] has no request")
    method, url = request.get("method"), request.get("url")
    if method not in _ENTRY_METHODS or not isinstance(url, str) or not url:
        raise InvalidRequestError(f"Bundle.entry[{index}].request needs a method and a url")
    path, query = _relative(url, public_base)
    try:
        return classify("GET" if method == "HEAD" else method, path, query)
    except ProxyError as error:
        raise InvalidRequestError(f"Bundle.entry[{index}].request.url: {error.message}") from error


def _relative(url: str, public_base: str) -> tuple[str, str]:
    if url.startswith(public_base + "/"):
        url = url[len(public_base) + 1 :]
    elif urlsplit(url).scheme:
        raise InvalidRequestError("Bundle entry request URLs must be relative to this server")
    path, _, query = url.partition("?")
    return "/" + path, query

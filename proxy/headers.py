"""Header hygiene: what crosses the proxy in each direction, by allow-list.

Request headers reach the upstream only if listed here; the client's ``Authorization``, cookies, hop-by-hop
headers and any identity/audit header a client might try to smuggle are never on the list. Headers that ask a
server to reinterpret the method or the URL are refused outright.
"""

from __future__ import annotations

from collections.abc import Iterable

from proxy.errors import ForbiddenHeaderError

__all__ = [
    "FORWARDED_REQUEST_HEADERS",
    "FORWARDED_RESPONSE_HEADERS",
    "REFUSED_REQUEST_HEADERS",
    "check_refused_headers",
    "connection_listed",
    "forwardable_request_headers",
    "forwardable_response_headers",
]

#: Client headers passed to the upstream (FHIR conditional and preference headers).
FORWARDED_REQUEST_HEADERS = frozenset(
    {"if-match", "if-none-match", "if-modified-since", "if-none-exist", "prefer", "accept-language"}
)

#: Upstream headers passed back to the client. Content-Type is set by the proxy for FHIR JSON.
FORWARDED_RESPONSE_HEADERS = frozenset(
    {
        "etag",
        "last-modified",
        "location",
        "content-location",
        "retry-after",
        "cache-control",
        "expires",
        "content-disposition",
        "x-progress",
    }
)

#: Headers that would let a client change the method or path behind the proxy's back.
REFUSED_REQUEST_HEADERS = frozenset(
    {"x-http-method-override", "x-http-method", "x-method-override", "x-original-url", "x-rewrite-url"}
)


def check_refused_headers(headers: Iterable[tuple[bytes, bytes]]) -> None:
    """Raise ``ForbiddenHeaderError`` if a method/URL override header is present."""
    for name, _ in headers:
        if name.decode("latin-1").lower() in REFUSED_REQUEST_HEADERS:
            raise ForbiddenHeaderError(
                "method and URL override headers (X-HTTP-Method-Override, ...) are refused"
            )


def connection_listed(headers: dict[str, str]) -> set[str]:
    """Header names a ``Connection`` header declares hop-by-hop (they must not be forwarded)."""
    value = headers.get("connection", "")
    return {token.strip().lower() for token in value.split(",") if token.strip()}


def forwardable_request_headers(headers: dict[str, str]) -> dict[str, str]:
    """The client headers that may go upstream (names lower-cased)."""
    hop = connection_listed(headers)
    return {
        name: value
        for name, value in headers.items()
        if name in FORWARDED_REQUEST_HEADERS and name not in hop
    }


def forwardable_response_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The upstream headers that may go back to the client (names lower-cased)."""
    pairs = [(name.lower(), value) for name, value in headers]
    hop = {
        token.strip().lower() for name, value in pairs if name == "connection" for token in value.split(",")
    }
    return [(name, value) for name, value in pairs if name in FORWARDED_RESPONSE_HEADERS and name not in hop]

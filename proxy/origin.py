"""Where a request came from and which public base it addressed.

``X-Forwarded-For/-Proto/-Host/-Prefix`` and ``Forwarded`` are honoured only when the direct peer is a
configured trusted proxy; from anyone else they are ignored (and never forwarded upstream).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_address

from proxy.errors import InvalidRequestError

__all__ = ["RequestOrigin", "resolve_origin"]

_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
_PREFIX = re.compile(r"(/[A-Za-z0-9._~\-]+)*")


@dataclass(frozen=True, slots=True)
class RequestOrigin:
    """The client address and the public URL root of one request."""

    client_ip: str
    scheme: str
    host: str
    prefix: str

    def base_url(self, base_path: str) -> str:
        """The public FHIR base for this request."""
        return f"{self.scheme}://{self.host}{self.prefix}{base_path}"


def resolve_origin(
    peer: str | None,
    scheme: str,
    headers: dict[str, str],
    trusted: Sequence[IPv4Network | IPv6Network],
) -> RequestOrigin:
    """Resolve client address, scheme, host and path prefix for a request from ``peer``."""
    host = headers.get("host", "")
    origin = RequestOrigin(peer or "", scheme, host, "")
    if trusted and peer and _is_trusted(peer, trusted):
        origin = _apply_forwarded(origin, headers, trusted)
    if not _HOST.fullmatch(origin.host):
        raise InvalidRequestError("the Host header is missing or not a valid host name")
    return origin


def _is_trusted(address: str, trusted: Sequence[IPv4Network | IPv6Network]) -> bool:
    try:
        ip = ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def _apply_forwarded(
    origin: RequestOrigin, headers: dict[str, str], trusted: Sequence[IPv4Network | IPv6Network]
) -> RequestOrigin:
    forwarded = _parse_forwarded(headers.get("forwarded", ""))
    chain = [item.get("for", "") for item in forwarded] or _split(headers.get("x-forwarded-for", ""))
    client_ip = _rightmost_untrusted(chain, trusted) or origin.client_ip
    first = forwarded[0] if forwarded else {}
    scheme = first.get("proto") or _first(headers.get("x-forwarded-proto")) or origin.scheme
    host = first.get("host") or _first(headers.get("x-forwarded-host")) or origin.host
    prefix = _first(headers.get("x-forwarded-prefix")) or ""
    if scheme not in ("http", "https"):
        scheme = origin.scheme
    if not _PREFIX.fullmatch(prefix.rstrip("/")):
        prefix = ""
    return RequestOrigin(client_ip, scheme, host, prefix.rstrip("/"))


def _parse_forwarded(value: str) -> list[dict[str, str]]:
    elements: list[dict[str, str]] = []
    for element in _split(value):
        pairs: dict[str, str] = {}
        for pair in element.split(";"):
            key, _, raw = pair.partition("=")
            pairs[key.strip().lower()] = raw.strip().strip('"')
        elements.append(pairs)
    return elements


def _rightmost_untrusted(chain: list[str], trusted: Sequence[IPv4Network | IPv6Network]) -> str | None:
    for address in reversed(chain):
        candidate = address.strip().strip("[]")
        if candidate and not _is_trusted(candidate, trusted):
            return candidate
    return None


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _first(value: str | None) -> str | None:
    items = _split(value or "")
    return items[0] if items else None

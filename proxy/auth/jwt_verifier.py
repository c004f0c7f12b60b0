"""JWT access tokens from trusted issuers (RFC 7519 / RFC 9068 style), verified with joserfc.

Checked, in order: the header's ``alg`` is on the issuer's asymmetric allow-list (never ``none``, never
HMAC), the unverified ``iss`` names a trusted issuer, the ``kid`` is among that issuer's keys (one
rate-limited JWKS refresh on a miss), the signature verifies with that key, ``exp`` (required), ``nbf`` and
``iat`` hold within the clock skew, and ``aud`` contains an accepted audience.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from proxy.auth.claims import principal_from_claims
from proxy.auth.principal import Principal
from proxy.errors import AuthenticationError
from proxy.settings import ClaimSettings

__all__ = ["KeySource", "StaticKeys", "TrustedIssuer", "verify_jwt"]


class KeySource(Protocol):
    """Where an issuer's verification keys come from."""

    async def key_set(self, kid: str | None) -> KeySet | None: ...


class StaticKeys:
    """A fixed key set (the development issuer's own key)."""

    def __init__(self, keys: KeySet) -> None:
        self._keys = keys
        self._kids = frozenset(key.kid for key in keys.keys)

    async def key_set(self, kid: str | None) -> KeySet | None:
        return self._keys if kid is None or kid in self._kids else None


@dataclass(frozen=True)
class TrustedIssuer:
    """One trusted issuer: its ``iss``, keys, accepted algorithms and audiences (empty = the public base)."""

    issuer: str
    keys: KeySource
    algorithms: frozenset[str]
    audiences: tuple[str, ...] = ()


async def verify_jwt(
    token: str,
    issuers: Mapping[str, TrustedIssuer],
    *,
    default_audiences: Sequence[str],
    skew: float,
    claim_settings: ClaimSettings,
) -> Principal:
    """Verify ``token`` against the trusted issuers; its principal, or ``AuthenticationError``."""
    header, unverified = _unverified_parts(token)
    issuer = issuers.get(str(unverified.get("iss", "")))
    if issuer is None:
        raise AuthenticationError("the token's issuer is not trusted")
    algorithm = header.get("alg")
    if algorithm not in issuer.algorithms:
        raise AuthenticationError("the token's signature algorithm is not accepted")
    kid = header.get("kid")
    key_set = await issuer.keys.key_set(kid if isinstance(kid, str) else None)
    if key_set is None:
        raise AuthenticationError("the token was signed with an unknown key")
    if kid is None and len(key_set.keys) != 1:
        raise AuthenticationError("the token names no key id (kid)")
    claims = _verified_claims(token, key_set, str(algorithm))
    _check_times(claims, skew)
    _check_audience(claims, issuer.audiences or tuple(default_audiences))
    return principal_from_claims(claims, issuer.issuer, claim_settings)


def _unverified_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        compact = jws.extract_compact(token.encode("ascii"))
        claims = orjson.loads(compact.payload)
    except (JoseError, ValueError, UnicodeEncodeError) as exc:
        raise AuthenticationError("the token is not a well-formed JWT") from exc
    header = compact.headers()
    if not isinstance(claims, dict) or not isinstance(header, dict):
        raise AuthenticationError("the token is not a well-formed JWT")
    return header, claims


def _verified_claims(token: str, key_set: KeySet, algorithm: str) -> dict[str, Any]:
    try:
        verified = jwt.decode(token, key_set, algorithms=[algorithm])
    except (JoseError, ValueError) as exc:
        raise AuthenticationError("the token's signature does not verify") from exc
    return dict(verified.claims)


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthenticationError(f"the token's {name} claim is not a number")
    return float(value)


def _check_times(claims: Mapping[str, Any], skew: float) -> None:
    now = time.time()
    expires = _number(claims, "exp")
    if expires is None:
        raise AuthenticationError("the token has no expiry (exp)")
    if now > expires + skew:
        raise AuthenticationError("the token has expired")
    not_before = _number(claims, "nbf")
    if not_before is not None and now + skew < not_before:
        raise AuthenticationError("the token is not valid yet")
    issued = _number(claims, "iat")
    if issued is not None and issued > now + skew:
        raise AuthenticationError("the token was issued in the future")


def _check_audience(claims: Mapping[str, Any], accepted: Sequence[str]) -> None:
    audience = claims.get("aud")
    values = [audience] if isinstance(audience, str) else audience if isinstance(audience, list) else []
    accepted_set = {value.rstrip("/") for value in accepted}
    if not any(isinstance(value, str) and value.rstrip("/") in accepted_set for value in values):
        raise AuthenticationError("the token is not meant for this server (aud)")

"""Which rate-limit rules a request matches, and whose bucket each one charges (pure).

Bucket keys are ``fhirwall:rl:<rule>:<digest>``: the identity (issuer and client_id, user, both, or the client
address) is hashed, so no client, user or address appears in a key name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import Any

from proxy.auth.principal import Principal
from proxy.fhir.request import FhirRequest, Interaction
from proxy.origin import resolve_origin
from proxy.settings import RateLimitQuota, RateLimitRule

__all__ = [
    "KEY_PREFIX",
    "Limit",
    "client_address",
    "identity_of",
    "interaction_name",
    "limits_for",
    "matches",
]

KEY_PREFIX = "fhirwall:rl:"

_INTERACTIONS = {
    Interaction.READ: "read",
    Interaction.VREAD: "vread",
    Interaction.SEARCH_TYPE: "search",
    Interaction.SEARCH_SYSTEM: "search",
    Interaction.SEARCH_COMPARTMENT: "search",
    Interaction.PAGE: "search",
    Interaction.HISTORY_INSTANCE: "history",
    Interaction.HISTORY_TYPE: "history",
    Interaction.HISTORY_SYSTEM: "history",
    Interaction.CREATE: "create",
    Interaction.UPDATE: "update",
    Interaction.PATCH: "patch",
    Interaction.DELETE: "delete",
    Interaction.BATCH: "batch",
    Interaction.TRANSACTION: "batch",
    Interaction.OPERATION: "operation",
}


@dataclass(frozen=True, slots=True)
class Limit:
    """What a request is charged under one rule: the bucket's key and the rule's numbers."""

    rule: str
    key: str
    rate: float
    burst: int
    cost: int
    quota: RateLimitQuota | None = None

    @property
    def quota_key(self) -> str:
        """Where the rule's quota window for the same identity is counted."""
        return self.key + ":quota"


def interaction_name(request: FhirRequest) -> str | None:
    """The rule vocabulary's name for ``request`` (None for capabilities, which no rule limits)."""
    return _INTERACTIONS.get(request.interaction)


def matches(rule: RateLimitRule, request: FhirRequest, principal: Principal | None) -> bool:
    """Whether every condition of ``rule`` holds; a type the URL does not name matches any type."""
    if rule.client_id is not None and (principal is None or principal.client_id not in rule.client_id):
        return False
    if rule.interaction is not None and interaction_name(request) not in rule.interaction:
        return False
    return rule.resource_type is None or request.resource_type in (None, *rule.resource_type)


def identity_of(rule: RateLimitRule, principal: Principal | None, address: str) -> str | None:
    """The identity ``rule`` counts by; None when a token-based rule meets a request without a token.
    A token lacking the identity (no client_id, no user) shares one bucket with the others lacking it."""
    if rule.per == "address":
        return address
    if principal is None:
        return None
    client = principal.client_id or ""
    user = principal.fhir_user or principal.subject or ""
    parts = {"client": (client,), "user": (user,), "client+user": (client, user)}[rule.per]
    return "\x1f".join((principal.issuer, *parts))


def limits_for(
    rules: Sequence[RateLimitRule], request: FhirRequest, principal: Principal | None, address: str
) -> list[Limit]:
    """The limits ``request`` is charged under: one per matching rule, in rule order."""
    limits: list[Limit] = []
    for rule in rules:
        if interaction_name(request) is None or not matches(rule, request, principal):
            continue
        identity = identity_of(rule, principal, address)
        if identity is not None:
            key = f"{KEY_PREFIX}{rule.name}:{_digest(rule.per, identity)}"
            limits.append(Limit(rule.name, key, rule.rate, rule.burst, rule.cost, rule.quota))
    return limits


def client_address(
    scope: Mapping[str, Any], headers: dict[str, str], trusted: Sequence[IPv4Network | IPv6Network]
) -> str:
    """The client's address: the peer's, or the forwarded one when the peer is a trusted proxy."""
    client = scope.get("client")
    return resolve_origin(client[0] if client else None, scope["scheme"], headers, trusted).client_ip


def _digest(per: str, identity: str) -> str:
    return hashlib.sha256(f"{per}\x1e{identity}".encode()).hexdigest()[:32]

"""Who is calling: the verified facts of an access token, as one immutable value."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.auth.scopes import ScopeSet, parse_scopes

__all__ = ["Principal", "claim_at", "string_list"]


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller, as established from a verified token (JWT claims or an introspection response)."""

    issuer: str
    subject: str | None
    client_id: str | None
    scope_text: str
    expires_at: float
    patient: str | None = None
    encounter: str | None = None
    fhir_user: str | None = None
    purpose_of_use: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    organizations: tuple[str, ...] = ()
    token_id: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    scopes: ScopeSet = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scopes", parse_scopes(self.scope_text))

    @property
    def binding(self) -> str:
        """A stable digest of who this is (issuer, subject, client, patient), for binding paging links."""
        parts = "\x1f".join(part or "" for part in (self.issuer, self.subject, self.client_id, self.patient))
        return hashlib.sha256(parts.encode()).hexdigest()[:32]


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted claim path (``extensions.ihe_iua.purpose_of_use``), or None."""
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def string_list(value: Any) -> tuple[str, ...]:
    """A claim value as a tuple of strings: a string, a list of strings, or Codings (their ``code``)."""
    if value is None:
        return ()
    items: Sequence[Any] = value if isinstance(value, list | tuple) else [value]
    result: list[str] = []
    for item in items:
        if isinstance(item, str) and item:
            result.append(item.rsplit("#", 1)[-1])
        elif isinstance(item, Mapping) and isinstance(item.get("code"), str):
            result.append(item["code"])
    return tuple(result)

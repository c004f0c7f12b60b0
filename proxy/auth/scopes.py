"""SMART App Launch 2.2 resource scopes: parsing (v1 and v2, granular) and union semantics (pure; no I/O).

A scope is accepted only when it is exactly one of the documented shapes; nothing is ever repaired. In
particular v2 permission letters must be a non-empty subsequence of ``cruds`` in that order, so ``.dr``,
``.dus``, ``.rr`` or ``.CRUDS`` are ignored instead of being read as some broader set of rights. Tokens that
are not resource scopes (``launch``, ``openid``, ``offline_access``, unknown or malformed ones) grant
nothing and are kept, verbatim, in :attr:`ScopeSet.ignored` for audit and debugging.

Scopes combine as a union: a type/permission is allowed when at least one scope grants it, unrestricted
when one of those scopes has no criteria, and otherwise restricted to "matches at least one" of the
granular scopes' criteria.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import unquote

from proxy.fhir.resource_types import R4_RESOURCE_TYPES

__all__ = [
    "CONTEXTS",
    "Permission",
    "ResourceScope",
    "ScopeSet",
    "parse_scope",
    "parse_scopes",
    "permission_for",
]

CONTEXTS: tuple[str, ...] = ("patient", "user", "system")
WILDCARD_TYPE = "*"

Criteria = tuple[tuple[str, str], ...]


class Permission(StrEnum):
    """The five SMART v2 permission letters (the values compare equal to the plain letters)."""

    CREATE = "c"
    READ = "r"
    UPDATE = "u"
    DELETE = "d"
    SEARCH = "s"


_V1_PERMISSIONS: dict[str, frozenset[Permission]] = {
    "read": frozenset({Permission.READ, Permission.SEARCH}),
    "write": frozenset({Permission.CREATE, Permission.UPDATE, Permission.DELETE}),
    "*": frozenset(Permission),
}

# RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
_RESOURCE_SCOPE = re.compile(
    r"(?P<context>patient|user|system)/(?P<type>[A-Za-z]+|\*)\.(?P<perms>[A-Za-z*]+)(?:\?(?P<query>.*))?",
    re.DOTALL,
)
_V2_PERMISSIONS = re.compile(r"c?r?u?d?s?")
_LETTERS: frozenset[str] = frozenset(Permission)
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Search parameter names, with modifiers and chains (``code:text``, ``subject:Patient.name``, ``_has:...``).
_PARAM_NAME = re.compile(r"[A-Za-z0-9_.:-]+")

_INTERACTION_PERMISSIONS: dict[str, Permission] = {
    "read": Permission.READ,
    "vread": Permission.READ,
    "history-instance": Permission.READ,
    "search-type": Permission.SEARCH,
    "search-system": Permission.SEARCH,
    "search-compartment": Permission.SEARCH,
    "history-type": Permission.SEARCH,
    "history-system": Permission.SEARCH,
    "create": Permission.CREATE,
    "update": Permission.UPDATE,
    "patch": Permission.UPDATE,
    "delete": Permission.DELETE,
}


@dataclass(frozen=True, slots=True)
class ResourceScope:
    """One parsed resource scope such as ``patient/Observation.rs?category=laboratory``.

    ``criteria`` are the decoded ``(name, value)`` pairs of a granular scope, in order (empty when the
    scope is not granular); ``version`` is 1 for ``.read``/``.write``/``.*`` scopes and 2 otherwise.
    """

    context: str
    resource_type: str
    permissions: frozenset[Permission]
    criteria: Criteria = ()
    raw: str = ""
    version: int = 2

    def __post_init__(self) -> None:
        if self.context not in CONTEXTS:
            raise ValueError(f"unknown scope context {self.context!r}")
        if self.resource_type != WILDCARD_TYPE and self.resource_type not in R4_RESOURCE_TYPES:
            raise ValueError(f"unknown resource type {self.resource_type!r}")
        if not self.permissions or not self.permissions <= _LETTERS:
            raise ValueError("permissions must be a non-empty set of the letters c, r, u, d, s")
        if self.version not in (1, 2):
            raise ValueError("version must be 1 or 2")


@dataclass(frozen=True, slots=True)
class ScopeSet:
    """The resource scopes of one token, plus the raw tokens that granted nothing."""

    resource_scopes: tuple[ResourceScope, ...] = ()
    ignored: tuple[str, ...] = field(default=())

    @property
    def contexts(self) -> frozenset[str]:
        """The contexts (``patient``, ``user``, ``system``) that at least one resource scope uses."""
        return frozenset(scope.context for scope in self.resource_scopes)

    def grants(
        self, resource_type: str, permission: str, contexts: Collection[str] | None = None
    ) -> tuple[ResourceScope, ...]:
        """The scopes granting ``permission`` on ``resource_type``; empty means not allowed.

        A ``*`` scope matches every type; asking about ``resource_type="*"`` (e.g. a search across all
        types) matches only ``*`` scopes. ``contexts`` limits the answer to scopes of those contexts.
        Raises ``ValueError`` for an unknown type, permission letter or context.
        """
        _check_type(resource_type)
        _check_permission(permission)
        wanted = _check_contexts(contexts)
        return tuple(
            scope
            for scope in self.resource_scopes
            if permission in scope.permissions
            and scope.resource_type in (WILDCARD_TYPE, resource_type)
            and (wanted is None or scope.context in wanted)
        )

    def allows(self, resource_type: str, permission: str, contexts: Collection[str] | None = None) -> bool:
        """True when at least one scope grants ``permission`` on ``resource_type``."""
        return bool(self.grants(resource_type, permission, contexts))

    def unrestricted(
        self, resource_type: str, permission: str, contexts: Collection[str] | None = None
    ) -> bool:
        """True when some granting scope has no criteria (so granular scopes add no restriction)."""
        return any(not scope.criteria for scope in self.grants(resource_type, permission, contexts))

    def criteria_alternatives(
        self, resource_type: str, permission: str, contexts: Collection[str] | None = None
    ) -> tuple[Criteria, ...] | None:
        """``None`` when unrestricted, else the criteria of each granting granular scope (deduplicated).

        The caller must require a match with at least one alternative. An empty tuple means nothing is
        granted at all, so do not test the result for truthiness: compare with ``None`` explicitly.
        """
        granting = self.grants(resource_type, permission, contexts)
        if any(not scope.criteria for scope in granting):
            return None
        return tuple(dict.fromkeys(scope.criteria for scope in granting))


def parse_scope(text: str) -> ResourceScope | None:
    """Parse one scope token; ``None`` for anything that is not a well-formed resource scope."""
    if not _SCOPE_TOKEN.fullmatch(text):
        return None
    match = _RESOURCE_SCOPE.fullmatch(text)
    if match is None:
        return None
    resource_type = match["type"]
    if resource_type != WILDCARD_TYPE and resource_type not in R4_RESOURCE_TYPES:
        return None
    letters, query = match["perms"], match["query"]
    if letters in _V1_PERMISSIONS:
        if query is not None:
            return None
        return ResourceScope(match["context"], resource_type, _V1_PERMISSIONS[letters], (), text, 1)
    permissions = _v2_permissions(letters)
    if permissions is None:
        return None
    criteria: Criteria = ()
    if query is not None:
        parsed = _parse_criteria(query)
        if parsed is None:
            return None
        criteria = parsed
    return ResourceScope(match["context"], resource_type, permissions, criteria, text, 2)


def parse_scopes(scopes: str | Iterable[str]) -> ScopeSet:
    """Parse a space-separated scope string (or a list of tokens) into a :class:`ScopeSet`.

    Duplicates are accepted and collapsed; the order of first appearance is kept.
    """
    items = [scopes] if isinstance(scopes, str) else list(scopes)
    tokens = dict.fromkeys(token for item in items for token in item.split())
    parsed: dict[ResourceScope, None] = {}
    ignored: list[str] = []
    for token in tokens:
        scope = parse_scope(token)
        if scope is None:
            ignored.append(token)
        else:
            parsed[scope] = None
    return ScopeSet(tuple(parsed), tuple(ignored))


def permission_for(interaction: str) -> Permission:
    """The v2 permission letter a REST interaction needs (``read`` -> ``r``, ``search-type`` -> ``s``, ...).

    Operations, batch/transaction and capabilities have no letter of their own (the caller applies
    explicit rules to them, or authorises each inner request): they raise ``ValueError``, as does any
    unknown name.
    """
    try:
        return _INTERACTION_PERMISSIONS[str(interaction)]
    except KeyError:
        raise ValueError(f"no scope permission is defined for interaction {interaction!r}") from None


def _v2_permissions(letters: str) -> frozenset[Permission] | None:
    if not letters or not _V2_PERMISSIONS.fullmatch(letters):
        return None
    return frozenset(Permission(letter) for letter in letters)


def _parse_criteria(query: str) -> Criteria | None:
    """Decode ``name=value&...``; ``None`` if any pair is empty, lacks ``=``, is badly encoded or names no
    plausible search parameter (letters, digits and ``_ . : -`` only).

    Percent-decoding follows RFC 3986 (``+`` stays a literal plus sign). Empty values are refused too:
    a search parameter with no value restricts nothing, so accepting it could widen access.
    """
    if not query or _BAD_PERCENT.search(query):
        return None
    pairs: list[tuple[str, str]] = []
    for part in query.split("&"):
        raw_name, equals, raw_value = part.partition("=")
        if not equals or not raw_name or not raw_value:
            return None
        try:
            name = unquote(raw_name, errors="strict")
            value = unquote(raw_value, errors="strict")
        except UnicodeDecodeError:
            return None
        if not _PARAM_NAME.fullmatch(name) or not value:
            return None
        pairs.append((name, value))
    return tuple(pairs)


def _check_type(resource_type: str) -> None:
    if resource_type != WILDCARD_TYPE and resource_type not in R4_RESOURCE_TYPES:
        raise ValueError(f"unknown resource type {resource_type!r}")


def _check_permission(permission: str) -> None:
    if permission not in _LETTERS:
        raise ValueError(f"unknown permission {permission!r} (expected one of c, r, u, d, s)")


def _check_contexts(contexts: Collection[str] | None) -> frozenset[str] | None:
    if contexts is None:
        return None
    if isinstance(contexts, str):
        raise TypeError("contexts must be a collection of context names, not a single string")
    unknown = [context for context in contexts if context not in CONTEXTS]
    if unknown:
        raise ValueError(f"unknown scope contexts {unknown!r}")
    return frozenset(contexts)

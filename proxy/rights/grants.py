"""The access policy compiled for lookups: which roles grant an operation on a type, under which condition,
with or without department isolation (pure; FHIRPath conditions compiled once)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import fhirpathpy

from proxy.rights.model import AccessPolicy

__all__ = ["CompiledPolicy", "Condition", "Grant"]

Evaluator = Callable[[Any, dict[str, Any]], list[Any]]


class Condition:
    """A compiled ``when`` expression; true only when it yields exactly ``true`` (errors count as false)."""

    def __init__(self, expression: str) -> None:
        self.expression = expression
        self._evaluate: Evaluator = fhirpathpy.compile(expression, None)

    def holds(self, resource: Mapping[str, Any], principal: Mapping[str, Any]) -> bool:
        """Evaluate over ``resource`` with ``%principal``; anything but ``[true]`` is false (fail closed)."""
        try:
            result = self._evaluate(dict(resource), {"principal": principal})
        except Exception:  # a condition that cannot be evaluated grants nothing
            return False
        return result == [True]


@dataclass(frozen=True, slots=True)
class Grant:
    """One role's permission for an operation on a type."""

    role: str
    condition: Condition | None
    isolated: bool


class CompiledPolicy:
    """Answers "which grants do these roles have for this operation on this type" quickly (memoised)."""

    def __init__(self, policy: AccessPolicy) -> None:
        self.policy = policy
        self._by_role: dict[str, list[tuple[frozenset[str], frozenset[str], Grant]]] = {}
        for name, role in policy.roles.items():
            isolated = policy.isolation_of(name) == "care-relationship"
            self._by_role[name] = [
                (
                    frozenset(permission.resources),
                    frozenset(permission.operations),
                    Grant(name, Condition(permission.when) if permission.when else None, isolated),
                )
                for permission in role.permissions
            ]
        self._memo: dict[tuple[frozenset[str], str, str], tuple[Grant, ...]] = {}

    def grants(self, roles: frozenset[str], resource_type: str, operation: str) -> tuple[Grant, ...]:
        """The grants of ``roles`` for ``operation`` on ``resource_type`` (empty: not allowed at all)."""
        key = (roles, resource_type, operation)
        found = self._memo.get(key)
        if found is None:
            found = tuple(self._matching(roles, resource_type, operation))
            if len(self._memo) > 100_000:
                self._memo.clear()
            self._memo[key] = found
        return found

    def _matching(self, roles: Iterable[str], resource_type: str, operation: str) -> Iterable[Grant]:
        for role in sorted(roles):
            for types, operations, grant in self._by_role.get(role, ()):
                type_matches = "*" in types or resource_type in types
                if type_matches and ("*" in operations or operation in operations):
                    yield grant

    def all_grants(self, roles: frozenset[str], operations: Iterable[str]) -> tuple[Grant, ...]:
        """Every grant of ``roles`` for any of ``operations``, whatever the type."""
        wanted = set(operations)
        return tuple(
            grant
            for role in sorted(roles)
            for _types, ops, grant in self._by_role.get(role, ())
            if "*" in ops or ops & wanted
        )

    def known_roles(self, roles: Iterable[str]) -> frozenset[str]:
        """The roles the policy defines, out of ``roles`` (token roles it does not know grant nothing)."""
        return frozenset(role for role in roles if role in self.policy.roles)

    def approvers_of(self, rule: str) -> frozenset[str]:
        """The roles whose holders may approve ``rule``."""
        return frozenset(
            name for name, role in self.policy.roles.items() if rule in role.approves or "*" in role.approves
        )

    def administrators(self, right: str) -> frozenset[str]:
        """The roles holding the administrative ``right`` (e.g. ``revocations``)."""
        return frozenset(name for name, role in self.policy.roles.items() if right in role.administers)

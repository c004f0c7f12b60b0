"""What one principal may see and write, resource by resource (pure).

A resource is visible when some scope granting the permission accepts it: a ``patient/`` scope only
within the token patient's compartment (types outside the Patient compartment as configured), a granular
scope only when the resource matches its criteria. A criterion the proxy cannot evaluate counts as no
match: unknown means deny.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from proxy.auth.principal import Principal
from proxy.auth.scopes import ResourceScope
from proxy.fhir.compartment import PATIENT_COMPARTMENT_TYPES, in_patient_compartment, patient_references
from proxy.fhir.matching import UnsupportedCriterionError, matches
from proxy.fhir.resource_types import R4_RESOURCE_TYPES
from proxy.settings import PolicySettings

__all__ = ["READ_PERMISSIONS", "AccessView"]

READ_PERMISSIONS = ("r", "s")


class AccessView:
    """The access one principal has, applied to individual resources."""

    def __init__(self, principal: Principal, settings: PolicySettings) -> None:
        self.principal = principal
        self.scopes = principal.scopes
        self.settings = settings
        self._grant_cache: dict[tuple[str, str], tuple[ResourceScope, ...]] = {}

    def uses_criteria(self) -> bool:
        """True when some scope is granular (its checks read more than the compartment elements)."""
        return any(scope.criteria for scope in self.scopes.resource_scopes)

    def allows_type(self, resource_type: str, permission: str) -> bool:
        """Does any scope grant ``permission`` on the type at all (before looking at resources)?"""
        return bool(self._grants(resource_type, permission))

    def restricted(self, resource_type: str, permission: str) -> bool:
        """True unless some user/system scope grants ``permission`` on the type without criteria."""
        return not any(
            scope.context != "patient" and not scope.criteria
            for scope in self._grants(resource_type, permission)
        )

    def _grants(self, resource_type: str, permission: str) -> tuple[ResourceScope, ...]:
        key = (resource_type, permission)
        cached = self._grant_cache.get(key)
        if cached is None:
            known = resource_type == "*" or resource_type in R4_RESOURCE_TYPES  # unknown types: no grants
            cached = self.scopes.grants(resource_type, permission) if known else ()
            self._grant_cache[key] = cached
        return cached

    def sees_everything(self) -> bool:
        """True when a user/system scope grants read and search on every type without criteria."""
        return not self.restricted("*", "r") and not self.restricted("*", "s")

    def can_see(self, resource: Mapping[str, Any], permissions: Iterable[str] = READ_PERMISSIONS) -> bool:
        """May this resource be returned to the principal?"""
        resource_type = resource.get("resourceType")
        if not isinstance(resource_type, str) or resource_type not in R4_RESOURCE_TYPES:
            return False
        for permission in permissions:
            for scope in self._grants(resource_type, permission):
                if self._accepts(scope, resource_type, resource, write=False):
                    return True
        return False

    def can_write(self, resource: Mapping[str, Any], permission: str) -> bool:
        """May the principal store this resource (as it would be stored) with ``permission`` (c/u/d)?"""
        resource_type = resource.get("resourceType")
        if not isinstance(resource_type, str) or resource_type not in R4_RESOURCE_TYPES:
            return False
        if not self.may_write_type(resource_type):
            return False
        return any(
            self._accepts(scope, resource_type, resource, write=True)
            for scope in self._grants(resource_type, permission)
        )

    def may_write_type(self, resource_type: str) -> bool:
        """False for protected types (Consent, AuditEvent, ...) unless the principal has an allowed role, or
        is a patient managing their own Consents where configured (the compartment check then keeps them to
        their own)."""
        if resource_type not in self.settings.protected_write_types:
            return True
        if resource_type == "Consent" and self.settings.patients_write_own_consent and self._is_the_patient():
            return True
        return bool(set(self.principal.roles) & set(self.settings.protected_write_roles))

    def _is_the_patient(self) -> bool:
        patient = self.principal.patient
        return patient is not None and self.principal.fhir_user == f"Patient/{patient}"

    def _accepts(
        self, scope: ResourceScope, resource_type: str, resource: Mapping[str, Any], *, write: bool
    ) -> bool:
        if scope.context == "patient" and not self._in_patient_context(resource_type, resource, write=write):
            return False
        if not scope.criteria:
            return True
        try:
            return matches(dict(resource), resource_type, scope.criteria)
        except UnsupportedCriterionError:
            return False

    def _in_patient_context(self, resource_type: str, resource: Mapping[str, Any], *, write: bool) -> bool:
        patient = self.principal.patient
        if patient is None:
            return False
        if resource_type in PATIENT_COMPARTMENT_TYPES:
            if write:
                return patient_references(resource) == {patient}
            return in_patient_compartment(resource, patient)
        return not write and self.settings.noncompartment_types_for_patient_scopes

"""FHIR REST knowledge, pure: request classification, media types, Bundles, URL rewriting."""

from proxy.fhir.bundle import classify_entries
from proxy.fhir.request import Compartment, FhirRequest, Interaction, classify
from proxy.fhir.resource_types import R4_RESOURCE_TYPES
from proxy.fhir.urls import BaseUrlRewriter

__all__ = [
    "R4_RESOURCE_TYPES",
    "BaseUrlRewriter",
    "Compartment",
    "FhirRequest",
    "Interaction",
    "classify",
    "classify_entries",
]

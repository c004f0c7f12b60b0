"""One client request as the pipeline knows it, from classification to the access decision."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from masking.compiler import CompiledProfile
from proxy.audit.record import AuditRecord
from proxy.body import RawBodyStream
from proxy.fhir.request import FhirRequest
from proxy.policy.access import AccessView
from proxy.policy.decision import AccessDecision
from proxy.rights.gate import RightsView

__all__ = ["ProxyCall"]


@dataclass(slots=True)
class ProxyCall:
    """Everything known about one client request once it has been checked."""

    request: FhirRequest
    public_base: str
    request_id: str
    headers: dict[str, str]
    relative_path: str
    query: str
    body: bytes | None = None
    document: dict[str, Any] | None = None
    raw_body: RawBodyStream | None = None
    raw_response: bool = False
    view: AccessView | None = None
    decision: AccessDecision | None = None
    header_overrides: dict[str, str] = field(default_factory=dict)
    masking: CompiledProfile | None = None
    audit: AuditRecord | None = None
    rights: RightsView | None = None
    rights_operation: str | None = None

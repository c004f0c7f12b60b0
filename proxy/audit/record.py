"""One request's audit facts, gathered while the request runs: who, when, from where, did what, why.

The pipeline fills an ``AuditRecord`` as it goes (classification, the verified principal, the access
decision, masking, the answer) and hands it to the audit trail before the answer is sent, also when the
request fails. A record holds PHI (patient ids, resource ids, the raw query): the BALP AuditEvents and the
local audit log need it; anything exported as telemetry must only carry counts or keyed hashes of those.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["AuditRecord", "Decision", "Outcome"]


class Decision:
    """The access decision (plain strings, stable in logs and spans)."""

    PERMIT = "permit"
    DENY = "deny"
    NOT_EVALUATED = "not-evaluated"
    """No decision was reached (a malformed request, an authentication failure, a proxy error)."""


class Outcome:
    """BALP / AuditEvent.outcome codes."""

    SUCCESS = "0"
    MINOR_FAILURE = "4"
    SERIOUS_FAILURE = "8"
    MAJOR_FAILURE = "12"


@dataclass(slots=True)
class AuditRecord:
    """Everything the audit trail records about one request (mutable while the request runs).

    ``interaction`` uses the FHIR restful-interaction codes (``read``, ``vread``, ``search-type``,
    ``search-system``, ``create``, ``update``, ``patch``, ``delete``, ``history-instance``, ``history-type``,
    ``history-system``, ``capabilities``, ``batch``, ``transaction``, ``operation``); ``route`` is the
    request's shape with ids replaced (``/Patient/{id}``), never the raw path. ``patients`` are the ids of
    the patients whose data the answer carried (or the request wrote); ``resources`` the ``Type/id`` of the
    resources returned or written (both PHI).

    ``telemetry`` false (the audit trail exports no telemetry) leaves out what only telemetry uses: the
    ``user_agent``, ``scheme``, ``traceparent``, ``scopes`` and the timed ``stages`` stay empty.
    """

    request_id: str
    method: str
    route: str
    interaction: str
    started: float = field(default_factory=time.time)
    resource_type: str | None = None
    resource_id: str | None = None
    operation: str | None = None
    query: str = ""
    client_address: str | None = None
    user_agent: str | None = None
    scheme: str | None = None
    traceparent: str | None = None
    """The caller's W3C trace context, so the request's span joins the caller's trace."""
    status: int = 0
    duration_ms: float = 0.0
    decision: str = Decision.NOT_EVALUATED
    reasons: list[str] = field(default_factory=list)
    error_type: str | None = None
    client_id: str | None = None
    subject: str | None = None
    fhir_user: str | None = None
    token_id: str | None = None
    issuer: str | None = None
    roles: tuple[str, ...] = ()
    purpose_of_use: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    patients: set[str] = field(default_factory=set)
    resources: list[str] = field(default_factory=list)
    consent_ids: list[str] = field(default_factory=list)
    break_glass: bool = False
    masking_profile: str | None = None
    masked_values: int = 0
    stages: list[tuple[str, float, float]] = field(default_factory=list)
    """Timed stages as ``(name, start, end)`` in ``time.time()`` seconds: ``token``, ``policy``, ``consent``,
    ``upstream``, ``masking`` (telemetry turns them into child spans)."""
    alerts: list[str] = field(default_factory=list)
    """Names of the anomaly rules this request set off."""
    telemetry: bool = True
    """Whether telemetry will be made from this record (else what only telemetry uses is not gathered)."""

    @property
    def outcome(self) -> str:
        """The BALP outcome code: 0 success, 4 client-side failure (4xx), 8 server-side failure (5xx)."""
        if 200 <= self.status < 400:
            return Outcome.SUCCESS
        if 400 <= self.status < 500:
            return Outcome.MINOR_FAILURE
        return Outcome.SERIOUS_FAILURE

"""The audit record of the request being handled, for code deep in the pipeline (consent) to add to.

The enforcement point sets ``current_record`` for the duration of a request; helpers here are no-ops when the
audit trail is off or no request is being handled.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

from proxy.audit.record import AuditRecord

if TYPE_CHECKING:
    from consent.evaluate import ConsentVerdict

__all__ = ["CONSENT_WITHHELD", "current_record", "note_consent_verdict"]

CONSENT_WITHHELD = "consent-withheld"
current_record: ContextVar[AuditRecord | None] = ContextVar("fhirwall_audit_record", default=None)


def note_consent_verdict(verdict: ConsentVerdict) -> None:
    """Record the Consents a decision rested on, a withholding, and a break-glass override."""
    record = current_record.get()
    if record is None:
        return
    for consent_id in verdict.consent_ids:
        if consent_id not in record.consent_ids:
            record.consent_ids.append(consent_id)
    if not verdict.permitted and CONSENT_WITHHELD not in record.reasons:
        record.reasons.append(CONSENT_WITHHELD)
    if verdict.permitted and verdict.basis == "break-glass":
        record.break_glass = True

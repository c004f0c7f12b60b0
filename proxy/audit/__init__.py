"""The audit trail: per-request records, IHE BALP AuditEvents, the tamper-evident local log and its tools."""

from proxy.audit.record import AuditRecord, Decision, Outcome

__all__ = ["AuditRecord", "Decision", "Outcome"]

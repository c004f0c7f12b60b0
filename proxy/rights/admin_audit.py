"""Administrative actions (revocations, approval requests and decisions) in the audit trail.

Each ``AdminEvent`` becomes an ``AuditRecord`` of interaction ``operation`` named after the action, with
the caller as the user, the outcome as its status, and the approval id / sensitive rule / revocation kind as
reasons (never the free-text reason, which may carry PHI). Approval *uses* are recorded by the FHIR request
that used them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from proxy.audit.entry import Json
from proxy.audit.record import AuditRecord, Decision
from proxy.audit.trail import AuditTrail
from proxy.errors import ProxyError
from proxy.rights.admin import AdminEvent

__all__ = ["admin_auditor", "admin_record"]

logger = logging.getLogger("fhirwall.rights")


_spooling: set[asyncio.Task[None]] = set()


async def _spool(trail: AuditTrail, entry: Json) -> None:
    """Append an administrative action's entry to the Redis spool (a failure is logged: the action stands)."""
    try:
        assert trail.spool is not None
        await trail.spool.append(entry)
    except Exception:
        logger.exception("an administrative action could not be appended to the Redis audit spool")


def admin_record(event: AdminEvent) -> AuditRecord:
    """The audit record of one administrative action."""
    reasons = [
        f"{name} {value}"
        for name, value in (("target", event.target), ("rule", event.rule), ("value", event.target_value))
        if value
    ]
    return AuditRecord(
        request_id=event.request_id or "",
        method="POST" if event.action != "lift-revocation" else "DELETE",
        route=f"/admin/{event.action}",
        interaction="operation",
        operation=f"admin-{event.action}",
        started=time.time(),
        status=event.status,
        decision=Decision.PERMIT if event.status < 400 else Decision.DENY,
        reasons=reasons,
        client_id=event.client_id,
        subject=event.subject,
        fhir_user=event.fhir_user,
        issuer=event.issuer,
    )


def admin_auditor(trail: AuditTrail) -> Callable[[AdminEvent], None]:
    """A callback writing administrative events to ``trail`` (failed writes are logged; the action stands)."""

    def record(event: AdminEvent) -> None:
        try:
            entry = trail.submit(admin_record(event))
        except ProxyError:
            logger.exception("an administrative action could not be written to the audit log")
            return
        if entry is not None and trail.spool is not None:
            task = asyncio.get_running_loop().create_task(_spool(trail, entry))
            _spooling.add(task)
            task.add_done_callback(_spooling.discard)

    return record

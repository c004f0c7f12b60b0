"""The audit trail of the proxy: every request's record, as BALP AuditEvents, in the local tamper-evident log.

``AuditTrail.submit`` is called once per request, before the answer is sent: the record becomes one or more
AuditEvents (``proxy.audit.balp``) appended to the hash-chained log (``proxy.audit.chain``). If the log cannot
be written, ``on_failure: refuse`` (the default) answers 503 instead of serving a request nobody could audit;
``continue`` serves it and logs the failure loudly.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping

from proxy.audit.balp import ObserverInfo, audit_events
from proxy.audit.chain import AuditChainWriter, AuditLogError
from proxy.audit.record import AuditRecord
from proxy.errors import ProxyError
from proxy.settings import AuditSettings, ConfigError

__all__ = ["AuditTrail", "AuditUnavailableError"]

logger = logging.getLogger("fhirwall.audit")


class AuditUnavailableError(ProxyError):
    """The audit trail cannot record this request, so it is not served."""

    status_code = 503
    issue_code = "transient"
    default_message = "the audit trail is unavailable; the request was not served"


class AuditTrail:
    """Turns request records into AuditEvents and appends them to the local chained log."""

    def __init__(self, settings: AuditSettings, writer: AuditChainWriter) -> None:
        self._settings = settings
        self._writer = writer
        self._observer = ObserverInfo(name=settings.observer_name, site=settings.site)

    @classmethod
    def from_settings(cls, settings: AuditSettings, environ: Mapping[str, str] | None = None) -> AuditTrail:
        """Open the log named by ``settings`` (``ConfigError`` when its key is missing)."""
        env = os.environ if environ is None else environ
        assert settings.log_file is not None
        key = env.get(settings.log_key_env or "", "")
        if not key:
            raise ConfigError(
                [("audit.log_key_env", f"environment variable {settings.log_key_env} is not set")]
            )
        try:
            writer = AuditChainWriter(
                settings.log_file,
                key=key.encode(),
                checkpoint_every=settings.checkpoint_every,
                fsync=settings.fsync,
            )
        except (ValueError, AuditLogError, OSError) as exc:
            raise ConfigError([("audit.log_file", f"cannot open the audit log: {exc}")]) from None
        return cls(settings, writer)

    def submit(self, record: AuditRecord) -> None:
        """Record one request; ``AuditUnavailableError`` when it cannot be and the policy refuses."""
        record.duration_ms = max(0.0, (time.time() - record.started) * 1000)
        try:
            for event in audit_events(record, observer=self._observer):
                self._writer.append(event)
        except Exception:
            logger.exception("the audit log could not be written")
            if self._settings.on_failure == "refuse":
                raise AuditUnavailableError() from None

    def close(self) -> None:
        """Write the final signed checkpoint and close the log."""
        self._writer.close()

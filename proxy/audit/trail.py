"""The audit trail of the proxy: every request's record in the local tamper-evident log.

``AuditTrail.commit`` is awaited once per request, before the answer is sent: the record's entry
(``proxy.audit.entry``: the facts its BALP AuditEvents are made of) is appended to the hash-chained log
(``proxy.audit.chain``) as one request record, and the AuditEvents are made from it when the log is read
(delivery, ``fhirwall audit query`` and ``report``), not while the client waits. The records of the requests
that finish in the same turn of the event loop are written together at its end, in one ``write``, and
those requests are answered after it (``submit`` writes one record at once, for callers outside a request).
If the log cannot be written, ``on_failure: refuse`` (the default) answers 503 instead of serving a request
nobody could audit; ``continue`` serves it and logs the failure loudly. With ``audit.delivery.spool: redis``
the entry is also appended to the Redis spool (``proxy.audit.redis_spool``), under the same policy.

With several worker processes (``AuditSettings.workers``) each one writes its own log, named by the slot it
claims (``proxy.audit.slots``): ``audit.jsonl`` becomes ``audit.0.jsonl``, ``audit.1.jsonl``, ...
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx

from proxy.audit.alerts import Alert, AlertEngine
from proxy.audit.balp import ObserverInfo
from proxy.audit.chain import AuditChainWriter, AuditLogError
from proxy.audit.entry import Json, request_entry
from proxy.audit.record import AuditRecord
from proxy.audit.redis_spool import RedisSpoolWriter
from proxy.audit.slots import LogSlot, claim_slot
from proxy.audit.telemetry import Telemetry
from proxy.errors import ProxyError
from proxy.settings import AuditSettings, ConfigError

__all__ = ["AuditTrail", "AuditUnavailableError"]

logger = logging.getLogger("fhirwall.audit")
alert_log = logging.getLogger("fhirwall.alert")


async def _post_alert(url: str, alert: Alert) -> None:
    """Deliver one alert to the webhook; failures are logged (the alert is in the log already)."""
    try:
        async with httpx.AsyncClient(timeout=5.0) as client:
            response = await client.post(url, json=alert.to_json())
        if response.status_code >= 300:
            alert_log.error("the alert webhook answered %d", response.status_code)
    except httpx.HTTPError as exc:
        alert_log.error("the alert webhook failed: %s", type(exc).__name__)


class AuditUnavailableError(ProxyError):
    """The audit trail cannot record this request, so it is not served."""

    status_code = 503
    issue_code = "transient"
    default_message = "the audit trail is unavailable; the request was not served"


class AuditTrail:
    """Appends each request's record to the local chained log (its AuditEvents are made when it is read)."""

    def __init__(
        self, settings: AuditSettings, writer: AuditChainWriter | None, slot: LogSlot | None = None
    ) -> None:
        self._settings = settings
        self._writer = writer
        self._slot = slot
        self._observer = ObserverInfo(name=settings.observer_name, site=settings.site)
        self._alerts = AlertEngine(settings.alerts)
        self.telemetry: Telemetry | None = None
        """Spans and metrics made from each record, after it is logged."""
        self.on_append: Callable[[int], None] | None = None
        """Told the sequence number of the last record written (delivery wakes on it)."""
        self._webhook_tasks: set[asyncio.Task[None]] = set()
        self._pending: list[tuple[AuditRecord, asyncio.Future[None]]] = []
        """Records waiting for this turn of the event loop's write, each with its request's waiter."""
        self.spool: RedisSpoolWriter | None = None
        """With ``audit.delivery.spool: redis``: each entry is also appended to the Redis spool."""

    @classmethod
    def from_settings(cls, settings: AuditSettings, environ: Mapping[str, str] | None = None) -> AuditTrail:
        """Open the log named by ``settings``, or this worker's own log when several workers run
        (``ConfigError`` when its key is missing or it cannot be opened)."""
        if settings.log_file is None:
            return cls(settings, None)
        if settings.workers == 1:
            return cls(settings, _open_writer(settings, settings.log_file, environ))
        slot = _claim(settings.log_file)
        try:
            return cls(settings, _open_writer(settings, slot.path, environ), slot)
        except BaseException:
            slot.release()
            raise

    @property
    def log_path(self) -> Path | None:
        """The file this process writes (its worker's own log with several workers), or None."""
        return None if self._writer is None else self._writer.path

    @staticmethod
    def signing_key(settings: AuditSettings, environ: Mapping[str, str] | None = None) -> bytes:
        """The checkpoint key (``ConfigError`` when it is not set)."""
        env = os.environ if environ is None else environ
        key = env.get(settings.log_key_env or "", "")
        if not key:
            raise ConfigError(
                [("audit.log_key_env", f"environment variable {settings.log_key_env} is not set")]
            )
        return key.encode()

    async def submit_spooled(self, record: AuditRecord) -> None:
        """``submit``, then append the entry to the Redis spool when there is one (same failure policy)."""
        entry = self.submit(record)
        if entry is None or self.spool is None:
            return
        try:
            await self.spool.append(entry)
        except Exception:
            logger.exception("the audit entry could not be appended to the Redis spool")
            if self._settings.on_failure == "refuse":
                raise AuditUnavailableError() from None

    async def commit(self, record: AuditRecord) -> None:
        """Record one request before its answer goes out (``AuditUnavailableError`` when it cannot be and
        the policy refuses).

        The records of all requests that get here in the same turn of the event loop are written together
        at the end of it, with one ``write``, and only then are those requests answered: the same
        guarantee as ``submit``, at a fraction of the cost per request under load (the work for several
        records runs back to back instead of between other requests' work). With the Redis spool, each
        record goes through ``submit_spooled``."""
        if self._writer is None or self.spool is not None:
            await self.submit_spooled(record)
            return
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        if not self._pending:
            loop.call_soon(self._write_pending)
        record.duration_ms = max(0.0, (time.time() - record.started) * 1000)
        self._pending.append((record, waiter))
        await waiter

    def _write_pending(self) -> None:
        """Write the records gathered in this turn of the loop, then release their requests."""
        pending, self._pending = self._pending, []
        if not pending:
            return  # already written by ``close``
        refused = False
        try:
            self._handle([record for record, _ in pending])
        except Exception as exc:  # whatever went wrong, no request waits for ever or goes out unrecorded
            if not isinstance(exc, AuditUnavailableError):
                logger.exception("the audit records could not be handled")
            refused = True
        for _, waiter in pending:
            if waiter.done():  # its request was cancelled (the client went away) meanwhile
                continue
            if refused:
                waiter.set_exception(AuditUnavailableError())
            else:
                waiter.set_result(None)

    def submit(self, record: AuditRecord) -> Json | None:
        """Record one request in the local log now; ``AuditUnavailableError`` when it cannot be and the
        policy refuses. Returns the entry written (None when there is no local log or it failed)."""
        record.duration_ms = max(0.0, (time.time() - record.started) * 1000)
        entries = self._handle([record])
        return entries[0] if entries else None

    def _handle(self, records: list[AuditRecord]) -> list[Json]:
        """Raise the records' alerts, append their entries to the log in one write and make their
        telemetry; returns the entries written (none when there is no log or it failed and the policy
        serves anyway)."""
        for record in records:
            for alert in self._alerts.observe(record):
                self._raise_alert(record, alert)
        seq = 0
        entries: list[Json] = []
        try:
            if self._writer is not None:
                observer = self._observer
                entries = [request_entry(record, observer) for record in records]
                seq = self._writer.append_requests(entries)
        except Exception:
            entries = []
            logger.exception("the audit log could not be written")
            if self._settings.on_failure == "refuse":
                raise AuditUnavailableError() from None
        finally:
            if seq and self.on_append is not None:
                self.on_append(seq)
            if self.telemetry is not None:
                for record in records:
                    self.telemetry.record(record)
        return entries

    def _raise_alert(self, record: AuditRecord, alert: Alert) -> None:
        """Log the alert, keep it on the record (telemetry shows it) and post it to the webhook if any."""
        record.alerts.append(alert.rule)
        alert_log.warning(
            "ALERT %s actor=%s count=%d request=%s", alert.rule, alert.actor, alert.count, alert.request_id
        )
        url = self._settings.alerts.webhook_url
        if url:
            task = asyncio.get_running_loop().create_task(_post_alert(url, alert))
            self._webhook_tasks.add(task)
            task.add_done_callback(self._webhook_tasks.discard)

    def close(self) -> None:
        """Write the records still waiting, the final signed checkpoint, close the log and flush
        telemetry."""
        if self._pending:
            self._write_pending()
        try:
            if self._writer is not None:
                self._writer.close()
        finally:
            if self._slot is not None:
                self._slot.release()
        if self.telemetry is not None:
            self.telemetry.shutdown()


def _claim(log_file: Path) -> LogSlot:
    try:
        return claim_slot(log_file)
    except (AuditLogError, OSError) as exc:
        raise ConfigError([("audit.log_file", f"cannot claim a per-worker audit log: {exc}")]) from None


def _open_writer(settings: AuditSettings, path: Path, environ: Mapping[str, str] | None) -> AuditChainWriter:
    key = AuditTrail.signing_key(settings, environ)
    try:
        return AuditChainWriter(
            path,
            key=key,
            checkpoint_every=settings.checkpoint_every,
            fsync=settings.fsync,
        )
    except (ValueError, AuditLogError, OSError) as exc:
        raise ConfigError([("audit.log_file", f"cannot open the audit log: {exc}")]) from None

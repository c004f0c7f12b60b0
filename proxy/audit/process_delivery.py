"""The serving process's side of ``audit.delivery.runner: process``: a supervised deliverer child.

``ProcessDelivery`` has the interface the pipeline and health checks use of ``AuditDelivery`` (``start``,
``stop``, ``notify``, ``admit``, ``backlog``, ``full``, ``status``), but the delivery itself runs in a child
process (``proxy.audit.deliverer``) for this process's log: reading the log, making the AuditEvents and
syncing files then never take this process's CPU or event loop. The child is restarted with a growing delay
when it dies; it stops when its stdin closes: when this process stops it (draining first), or dies.

Back-pressure follows the child's cursor file: the backlog is the last seq this process appended minus the
seq the cursor reached (read at most every ``CURSOR_REFRESH_SECONDS`` while requests arrive), so a child that
stopped delivering makes admission refuse once ``max_backlog`` is reached, as inline. A log that does not
verify stops the child for good (health then fails), as it stops the inline delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
import time
from pathlib import Path
from typing import Final, Literal

from proxy.audit.deliverer import EXIT_BROKEN_CHAIN, EXIT_CONFIG, deliverer_payload
from proxy.audit.delivery import (
    AuditBacklogFullError,
    DeliveryStatus,
    checked_cursor,
    cursor_seq,
    last_record_seq,
)
from proxy.audit.slots import claimed_log
from proxy.settings import AuditSettings

__all__ = ["CURSOR_REFRESH_SECONDS", "ProcessDelivery"]

logger = logging.getLogger("fhirwall.audit.delivery")

CURSOR_REFRESH_SECONDS: Final = 0.2
_RESTART_FIRST_SECONDS: Final = 1.0
_RESTART_MAX_SECONDS: Final = 30.0
_STOP_GRACE_SECONDS: Final = 5.0
_BLOCK_POLL_SECONDS: Final = 0.05


class ProcessDelivery:
    """A deliverer child for this process's log, supervised; back-pressure from its cursor file."""

    def __init__(self, log_path: Path, settings: AuditSettings, log_level: str = "info") -> None:
        self.log_path = claimed_log(log_path)  # this worker's own log when several workers run
        self.settings = settings.delivery
        self.cursor_path = self.settings.cursor_file or self.log_path.with_name(
            self.log_path.name + ".cursor"
        )
        self._payload = deliverer_payload(self.log_path, settings, log_level)
        self._appended = 0
        self._delivered = 0
        self._cursor_read_at = -math.inf
        self._child: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._failure: str | None = None
        self._restarts = 0
        self._last_error: str | None = None

    # -- the interface shared with AuditDelivery ------------------------------------------------------

    @property
    def appended_seq(self) -> int:
        return self._appended

    @property
    def delivered_seq(self) -> int:
        """The seq the child's cursor reached (as last read)."""
        self._refresh()
        return self._delivered

    @property
    def backlog(self) -> int:
        return max(0, self._appended - self.delivered_seq)

    @property
    def failure(self) -> str | None:
        return self._failure

    @property
    def full(self) -> bool:
        return self.backlog >= self.settings.max_backlog

    def notify(self, seq: int) -> None:
        """Record ``seq`` was appended (the child finds it by reading the log)."""
        if seq > self._appended:
            self._appended = seq

    def status(self) -> DeliveryStatus:
        """State and positions; the counters of delivered events and dead letters are the child's (it logs
        them), ``failed_attempts`` counts restarts of the child."""
        state: Literal["stopped", "idle", "delivering", "retrying", "failed"]
        if self._failure is not None:
            state = "failed"
        elif self._child is not None and self._child.returncode is None:
            state = "delivering" if self.backlog else "idle"
        else:
            state = "stopped" if self._supervisor is None else "retrying"
        return DeliveryStatus(
            state=state,
            appended_seq=self._appended,
            delivered_seq=self.delivered_seq,
            backlog=self.backlog,
            delivered_events=0,
            dead_letters=0,
            failed_attempts=self._restarts,
            last_error=self._last_error,
            failure=self._failure,
        )

    async def start(self) -> None:
        """Check the cursor against the log (``AuditDeliveryError``), then start the child."""
        if self._supervisor is not None:
            raise RuntimeError("audit delivery is already running")
        position = await asyncio.to_thread(checked_cursor, self.cursor_path, self.log_path)
        self._delivered = position.seq
        self._appended = max(self._appended, await asyncio.to_thread(last_record_seq, self.log_path))
        self._stopping = asyncio.Event()
        self._child = await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(), name="fhirwall-audit-deliverer")
        logger.info(
            "audit delivery runs in process %d, from seq %d (%d record(s) in the backlog)",
            self._child.pid,
            position.seq,
            self.backlog,
        )

    async def stop(self, drain_seconds: float | None = None) -> None:
        """Ask the child to drain for up to ``drain_seconds`` (``drain_timeout_seconds``) and stop."""
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is None:
            return
        self._stopping.set()
        wait = self.settings.drain_timeout_seconds if drain_seconds is None else drain_seconds
        child = self._child
        if child is not None and child.returncode is None:
            _close_stdin(child)  # the child drains and exits (also while it is still starting up)
            await _ended(child, wait + _STOP_GRACE_SECONDS)
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor
        self._cursor_read_at = -math.inf  # where the child got to
        if self.backlog:
            logger.warning(
                "audit delivery stopped with %d record(s) not yet delivered; they stay in %s and are "
                "delivered after the next start",
                self.backlog,
                self.log_path,
            )

    async def admit(self) -> None:
        """Back-pressure before serving a request, as ``AuditDelivery.admit``."""
        if not self.full:
            return
        retry_after = max(1, math.ceil(self.settings.retry_initial_seconds))
        if self.settings.on_backlog_full == "refuse" or self._supervisor is None or self._failure:
            raise AuditBacklogFullError(retry_after=retry_after)
        deadline = time.monotonic() + self.settings.block_timeout_seconds
        while self.full:
            if time.monotonic() >= deadline or self._supervisor is None or self._failure:
                raise AuditBacklogFullError(retry_after=retry_after)
            await asyncio.sleep(_BLOCK_POLL_SECONDS)

    # -- the child ----------------------------------------------------------------------------------

    def _refresh(self) -> None:
        """Re-read the cursor when the last reading is older than ``CURSOR_REFRESH_SECONDS``."""
        now = time.monotonic()
        if now - self._cursor_read_at < CURSOR_REFRESH_SECONDS:
            return
        self._cursor_read_at = now
        seq = cursor_seq(self.cursor_path)
        if seq is not None:
            self._delivered = seq

    async def _spawn(self) -> asyncio.subprocess.Process:
        # its own session: a Ctrl-C meant for the server does not cut the child's drain short
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "proxy.audit.deliverer",
            stdin=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        assert child.stdin is not None
        child.stdin.write(self._payload)  # stdin stays open: the child stops when it closes
        await child.stdin.drain()
        return child

    async def _supervise(self) -> None:
        """Wait for the child; restart it with a growing delay unless stopping or the log is broken."""
        delay = _RESTART_FIRST_SECONDS
        while True:
            assert self._child is not None
            started = time.monotonic()
            code = await self._child.wait()
            if time.monotonic() - started > _RESTART_MAX_SECONDS:
                delay = _RESTART_FIRST_SECONDS  # it had been running well: not a crash loop
            if self._stopping.is_set():
                return
            self._last_error = f"the audit deliverer exited with code {code}"
            if code == EXIT_BROKEN_CHAIN:
                self._failure = f"the audit log {self.log_path} does not verify (see the deliverer's log)"
                logger.critical("audit delivery stopped for good: %s", self._failure)
                return
            kind = "could not start" if code == EXIT_CONFIG else "exited"
            logger.error("the audit deliverer %s (code %d); restarting in %.0f s", kind, code, delay)
            self._restarts += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if self._stopping.is_set():
                return
            delay = min(delay * 2, _RESTART_MAX_SECONDS)
            self._child = await self._spawn()


async def _ended(child: asyncio.subprocess.Process, within: float) -> None:
    """Wait ``within`` seconds for the child to exit, then terminate it, then kill it."""
    for ender in (None, child.terminate, child.kill):
        if ender is not None:
            with contextlib.suppress(ProcessLookupError):
                ender()
        try:
            await asyncio.wait_for(child.wait(), within if ender is None else _STOP_GRACE_SECONDS)
            return
        except TimeoutError:
            continue
    await child.wait()


def _close_stdin(child: asyncio.subprocess.Process) -> None:
    if child.stdin is not None and not child.stdin.is_closing():
        child.stdin.close()

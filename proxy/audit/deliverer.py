"""The audit delivery as a process of its own (``audit.delivery.runner: process``).

``python -m proxy.audit.deliverer`` reads one JSON line from stdin, ``{"log": <path>, "audit": <the audit
settings>, "log_level": <level>}``, and runs ``AuditDelivery`` for that log until SIGTERM or SIGINT, or until
stdin closes (the serving process that started it is gone), then drains for ``drain_timeout_seconds``. The
log key comes from the environment as for the proxy. With nobody to notify it of new records, it reads the
log every ``linger_seconds`` (at least 50 ms): what accumulated meanwhile goes as one batch.

Exit codes: 0 stopped; ``EXIT_CONFIG`` the delivery could not start (a cursor that does not match its log, a
missing key); ``EXIT_BROKEN_CHAIN`` the log does not verify (delivery stopped for good, as inline).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any, Final

import orjson

from proxy.audit.delivery import AuditDelivery, AuditDeliveryError
from proxy.audit.trail import AuditTrail
from proxy.gc_tuning import tune_gc
from proxy.settings import AuditSettings, ConfigError

__all__ = ["EXIT_BROKEN_CHAIN", "EXIT_CONFIG", "deliverer_payload", "main"]

logger = logging.getLogger("fhirwall.audit.deliverer")

EXIT_CONFIG: Final = 2
EXIT_BROKEN_CHAIN: Final = 3
MIN_POLL_SECONDS: Final = 0.05
_FAILURE_CHECK_SECONDS: Final = 0.5


def deliverer_payload(log: Path, settings: AuditSettings, log_level: str) -> bytes:
    """The line a deliverer reads from stdin."""
    audit = settings.model_dump(mode="json")
    return orjson.dumps({"log": str(log), "audit": audit, "log_level": log_level}) + b"\n"


def main() -> int:
    """Run the delivery described on stdin; the exit code says how it ended."""
    try:
        payload: dict[str, Any] = orjson.loads(sys.stdin.buffer.readline())
        settings = AuditSettings.model_validate(payload["audit"])
        log = Path(payload["log"])
    except (ValueError, KeyError, TypeError) as exc:
        print(f"fhirwall audit deliverer: unusable settings on stdin: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(
        level=str(payload.get("log_level", "info")).upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    return asyncio.run(_deliver(log, settings))


async def _deliver(log: Path, settings: AuditSettings) -> int:
    try:
        key = AuditTrail.signing_key(settings)
    except ConfigError as exc:
        logger.error("the audit deliverer cannot start: %s", exc)
        return EXIT_CONFIG
    poll = max(settings.delivery.linger_seconds, MIN_POLL_SECONDS)
    delivery = AuditDelivery(log, settings.delivery, key=key, poll_seconds=poll)
    try:
        await delivery.start()
    except AuditDeliveryError as exc:
        logger.error("the audit deliverer cannot start: %s", exc)
        return EXIT_CONFIG
    tune_gc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await loop.connect_read_pipe(lambda: _EndOfInput(stop), sys.stdin)
    try:
        while not stop.is_set() and delivery.failure is None:
            try:
                await asyncio.wait_for(stop.wait(), _FAILURE_CHECK_SECONDS)
            except TimeoutError:
                continue
    finally:
        await delivery.stop()
    return EXIT_BROKEN_CHAIN if delivery.failure is not None else 0


class _EndOfInput(asyncio.Protocol):
    """Sets ``stop`` when stdin reaches its end: the serving process closed it, or died."""

    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop

    def eof_received(self) -> None:
        self._stop.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop.set()


if __name__ == "__main__":
    sys.exit(main())

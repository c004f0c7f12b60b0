"""Certificate reload without restart: watched files, and a freshly built SSLContext for new connections.

A change is noticed by polling each file's inode, size and modification time. The files are then loaded
into a new context; only when that succeeds does it replace the current one, so a half-written or
mismatched certificate/key pair is logged and the previous certificate keeps serving until the next check.
Building a whole new context (rather than loading into the live one) also drops CAs removed from a bundle;
only a client resuming a TLS session made before the change is not verified again until that session ends,
so cutting off a client CA at once still takes a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["ReloadingContext", "file_stamp", "serving_context", "start_watching", "stop_watching"]

logger = logging.getLogger("fhirwall.tls")

Stamp = tuple[tuple[int, int, int] | None, ...]


def file_stamp(paths: Sequence[Path]) -> Stamp:
    """(inode, size, mtime in ns) of each file; None for one that cannot be examined."""
    stamps: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            info = os.stat(path)
        except OSError:
            stamps.append(None)
        else:
            stamps.append((info.st_ino, info.st_size, info.st_mtime_ns))
    return tuple(stamps)


class ReloadingContext:
    """The newest usable SSLContext built from ``paths``; a failed rebuild keeps the previous one."""

    def __init__(self, name: str, build: Callable[[], ssl.SSLContext], paths: Sequence[Path]) -> None:
        self.name = name
        self._build = build
        self._paths = tuple(paths)
        self._stamp = file_stamp(self._paths)
        self._reported: Stamp | None = None
        self.current = build()

    def check(self) -> bool:
        """Rebuild when a file changed since the last good load; True when a new context was taken."""
        stamp = file_stamp(self._paths)
        if stamp == self._stamp:
            return False
        try:
            context = self._build()
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            self._report(stamp, exc)
            return False
        self.current, self._stamp, self._reported = context, stamp, None
        logger.info("%s: certificate files reloaded; new connections use them", self.name)
        return True

    def _report(self, stamp: Stamp, exc: Exception) -> None:
        level = logging.DEBUG if stamp == self._reported else logging.ERROR
        self._reported = stamp
        logger.log(
            level,
            "%s: changed certificate files are not usable (%s: %s); the previous ones stay in use, retrying",
            self.name,
            type(exc).__name__,
            exc,
        )


def serving_context(reloading: ReloadingContext) -> ssl.SSLContext:
    """The context to give a TLS server: every new handshake is switched to ``reloading.current``.

    The switch happens in the server-name callback, which OpenSSL runs for each ClientHello (with or without
    SNI); connections already established keep the context they were made with.
    """
    live = reloading.current

    def switch(connection: ssl.SSLObject, _server_name: str | None, context: ssl.SSLContext) -> None:
        newest = reloading.current
        if newest is not context:
            connection.context = newest

    live.sni_callback = switch
    return live


def start_watching(reloading: ReloadingContext, interval: float) -> asyncio.Task[None] | None:
    """Check the files every ``interval`` seconds on the running loop (None when ``interval`` is 0)."""
    if interval <= 0:
        return None
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        logger.warning("%s: set up outside an event loop; certificate files are not watched", reloading.name)
        return None
    return loop.create_task(_watch(reloading, interval), name=f"{reloading.name} reload")


async def stop_watching(task: asyncio.Task[None] | None) -> None:
    """Cancel a watcher from ``start_watching`` and wait for it to end."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _watch(reloading: ReloadingContext, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(reloading.check)
        except Exception:  # a bug here must not end reloading for the life of the process
            logger.exception("%s: certificate reload check failed", reloading.name)

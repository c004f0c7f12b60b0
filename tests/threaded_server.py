"""Serving an ASGI app with uvicorn in a background thread, for tests (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import threading
import time

import uvicorn

START_TIMEOUT_SECONDS = 15.0


class ThreadedServer:
    """A uvicorn server in a daemon thread: ``start()`` returns once it accepts connections."""

    def __init__(self, config: uvicorn.Config) -> None:
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start_serving(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)

"""A TCP server that misbehaves on purpose (hangs, or answers garbage): failures no real upstream gives."""

from __future__ import annotations

import socket
import threading
from types import TracebackType


class MisbehavingServer:
    """Accepts connections on 127.0.0.1 and either never answers (``reply=None``) or sends ``reply`` raw."""

    def __init__(self, reply: bytes | None) -> None:
        self.reply = reply
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/fhir"
        self._stop = threading.Event()
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        self._sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._open.append(conn)
            conn.settimeout(2)
            try:
                conn.recv(65536)
                if self.reply is not None:
                    conn.sendall(self.reply)
                    conn.close()
            except OSError:
                conn.close()

    def __enter__(self) -> MisbehavingServer:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self._open:
            conn.close()
        self._sock.close()

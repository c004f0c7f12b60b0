"""Pure-ASGI middleware: request ids and the access log (no PHI: route shape and status only)."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RequestContextMiddleware"]

access_logger = logging.getLogger("fhirwall.access")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._\-]{1,64}")


class RequestContextMiddleware:
    """Gives every request an id (a well-formed client ``X-Request-Id`` is kept) and echoes it back."""

    def __init__(self, app: ASGIApp, *, access_log: bool = False) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_id(scope) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        header = (b"x-request-id", request_id.encode())
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.access_log:
                elapsed_ms = (time.perf_counter() - started) * 1000
                access_logger.info(
                    "%s %s %d %.1fms id=%s", scope["method"], _shape(scope), status, elapsed_ms, request_id
                )


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _REQUEST_ID.fullmatch(text) else None
    return None


def _shape(scope: Scope) -> str:
    """The path with ids replaced, so logs carry no identifiers."""
    parts = scope["path"].split("/")
    return "/".join(
        part if not part or part[0].isupper() or part[0] in "$_" or part == "fhir" else ":id"
        for part in parts
    )

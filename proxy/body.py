"""Request bodies: bounded reading, JSON parsing, and bounded streaming of raw content.

FHIR JSON bodies are read whole (they must be parsed to be checked) up to ``max_body_bytes``; raw bodies
(Binary content) stream to the upstream chunk by chunk up to ``max_binary_bytes``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.types import Receive

from proxy.errors import InvalidRequestError, MalformedJsonError, PayloadTooLargeError

__all__ = ["RawBodyStream", "check_declared_length", "parse_json_object", "read_body"]


class ClientDisconnectedError(Exception):
    """The client went away before sending its whole body."""


def check_declared_length(headers: dict[str, str], limit: int) -> None:
    """Refuse early (413) when Content-Length already exceeds ``limit``."""
    declared = headers.get("content-length")
    if declared is None:
        return
    if not declared.isdigit():
        raise InvalidRequestError("Content-Length is not a number")
    if int(declared) > limit:
        raise PayloadTooLargeError()


async def read_body(receive: Receive, limit: int) -> bytes:
    """Read the whole request body, refusing more than ``limit`` bytes (413)."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnectedError()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError()
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Parse a JSON request body that must be one object (400 otherwise)."""
    if not body:
        raise InvalidRequestError("a request body is required")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedJsonError() from exc
    if not isinstance(document, dict):
        raise MalformedJsonError("the request body must be a JSON object (a FHIR resource)")
    return document


class RawBodyStream:
    """Streams a raw request body to the upstream, counting bytes; ``exceeded`` tells why it stopped."""

    def __init__(self, receive: Receive, limit: int) -> None:
        self._receive = receive
        self._limit = limit
        self.size = 0
        self.exceeded = False

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body chunk by chunk; stops with ``PayloadTooLargeError`` past the limit."""
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnectedError()
            chunk = message.get("body", b"")
            self.size += len(chunk)
            if self.size > self._limit:
                self.exceeded = True
                raise PayloadTooLargeError()
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return

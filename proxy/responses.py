"""Building the responses the proxy sends: FHIR JSON, OperationOutcomes and raw streams."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

from proxy.errors import FHIR_JSON, ProxyError, outcome_body

__all__ = ["fhir_response", "outcome_response", "raw_stream_response"]


def fhir_response(status: int, body: bytes, headers: Iterable[tuple[str, str]] = ()) -> Response:
    """A FHIR JSON response (an empty body gets no Content-Type)."""
    response = Response(body, status_code=status, media_type=FHIR_JSON if body else None)
    for name, value in headers:
        response.headers.append(name, value)
    return response


def outcome_response(error: ProxyError) -> Response:
    """The OperationOutcome response for ``error`` (status and extra headers from the error)."""
    return fhir_response(error.status_code, outcome_body(error), error.headers.items())


def raw_stream_response(
    status: int,
    chunks: AsyncIterator[bytes],
    headers: Iterable[tuple[str, str]],
    content_type: str,
    close: BackgroundTask,
) -> Response:
    """Raw (non-FHIR) content streamed chunk by chunk; ``close`` releases the upstream connection."""
    response = StreamingResponse(
        chunks, status_code=status, media_type=content_type or None, background=close
    )
    for name, value in headers:
        response.headers.append(name, value)
    return response

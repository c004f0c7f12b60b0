"""A small OTLP/HTTP receiver for tests: real protobuf over real HTTP on 127.0.0.1, decoded for assertions.

It accepts ``POST /v1/traces`` and ``POST /v1/metrics`` (and ignores ``/v1/logs``) with
``application/x-protobuf`` or ``application/json`` bodies, optionally gzip- or deflate-encoded, as the OTLP
exporters send them, answers with the (empty) export response, and keeps what it received as plain
Python values (``ReceivedSpan``, ``ReceivedPoint``). Built on ``opentelemetry-proto``; no collector binary.

    with OtlpReceiver() as receiver:
        ...  # point an exporter at receiver.endpoint
        spans = receiver.wait_for_spans(lambda spans: len(spans) >= 3)
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

__all__ = ["OtlpReceiver", "ReceivedPoint", "ReceivedRequest", "ReceivedSpan"]

WAIT_SECONDS = 15.0
_SPAN_KINDS = {
    Span.SPAN_KIND_UNSPECIFIED: "UNSPECIFIED",
    Span.SPAN_KIND_INTERNAL: "INTERNAL",
    Span.SPAN_KIND_SERVER: "SERVER",
    Span.SPAN_KIND_CLIENT: "CLIENT",
    Span.SPAN_KIND_PRODUCER: "PRODUCER",
    Span.SPAN_KIND_CONSUMER: "CONSUMER",
}
_STATUS_CODES = {
    Status.STATUS_CODE_UNSET: "UNSET",
    Status.STATUS_CODE_OK: "OK",
    Status.STATUS_CODE_ERROR: "ERROR",
}


@dataclass(frozen=True)
class ReceivedRequest:
    """One export request as it arrived (before decoding)."""

    path: str
    content_type: str
    content_encoding: str
    size: int


@dataclass(frozen=True)
class ReceivedEvent:
    name: str
    time_unix_nano: int
    attributes: dict[str, Any]


@dataclass(frozen=True)
class ReceivedSpan:
    """A span, with its resource and instrumentation scope; ids as lowercase hex."""

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    start_time_unix_nano: int
    end_time_unix_nano: int
    attributes: dict[str, Any]
    events: list[ReceivedEvent]
    status_code: str
    status_message: str
    resource: dict[str, Any]
    scope: str


@dataclass(frozen=True)
class ReceivedPoint:
    """One data point of a metric: ``value`` for sums and gauges, ``count``/``sum``/``bucket_counts`` for
    histograms."""

    metric: str
    kind: Literal["sum", "gauge", "histogram", "other"]
    unit: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    value: float | int | None = None
    count: int | None = None
    sum: float | None = None
    bucket_counts: list[int] = field(default_factory=list)
    explicit_bounds: list[float] = field(default_factory=list)
    monotonic: bool | None = None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: OtlpReceiver


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        status, content_type, answer = self.server.receiver.handle(
            self.path,
            self.headers.get("content-type", ""),
            self.headers.get("content-encoding", ""),
            body,
        )
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        return None


class OtlpReceiver:
    """An OTLP/HTTP endpoint on a free 127.0.0.1 port; ``endpoint`` is the base URL exporters append
    ``/v1/traces`` and ``/v1/metrics`` to."""

    def __init__(self) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.receiver = self
        self.port: int = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._changed = threading.Condition()
        self.requests: list[ReceivedRequest] = []
        self.spans: list[ReceivedSpan] = []
        self.metric_exports: list[list[ReceivedPoint]] = []
        """Points of each metrics export request, in arrival order (cumulative sums repeat per export)."""

    def start(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def _serve(self) -> None:
        self._server.serve_forever(poll_interval=0.05)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    # what the tests look at

    def wait_for_spans(
        self, done: Callable[[list[ReceivedSpan]], bool], timeout: float = WAIT_SECONDS
    ) -> list[ReceivedSpan]:
        """All spans received, once ``done(spans)`` holds (``AssertionError`` after ``timeout``)."""
        spans: list[ReceivedSpan] = self._wait(lambda: list(self.spans), done, timeout, "spans")
        return spans

    def wait_for_metric(
        self,
        name: str,
        done: Callable[[list[ReceivedPoint]], bool] = bool,
        timeout: float = WAIT_SECONDS,
    ) -> list[ReceivedPoint]:
        """The points of ``name`` in the latest export carrying it, once ``done(points)`` holds."""
        points: list[ReceivedPoint] = self._wait(
            lambda: self.latest_points(name), done, timeout, f"metric {name}"
        )
        return points

    def latest_points(self, name: str) -> list[ReceivedPoint]:
        """The points of ``name`` from the latest export that carried it (cumulative: the totals)."""
        with self._changed:
            for points in reversed(self.metric_exports):
                found = [point for point in points if point.metric == name]
                if found:
                    return found
        return []

    def _wait(
        self,
        read: Callable[[], Any],
        done: Callable[[Any], bool],
        timeout: float,
        what: str,
    ) -> Any:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                value = read()
                if done(value):
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"the receiver did not get the expected {what} in {timeout}s")
                self._changed.wait(remaining)

    # the HTTP side

    def handle(self, path: str, content_type: str, encoding: str, body: bytes) -> tuple[int, str, bytes]:
        """Decode one export request; answers ``(status, content type, body)``."""
        self.requests.append(ReceivedRequest(path, content_type, encoding, len(body)))
        if path == "/v1/logs":
            return 200, "application/x-protobuf", b""
        message: Message
        response: Message
        if path == "/v1/traces":
            message, response = ExportTraceServiceRequest(), ExportTraceServiceResponse()
        elif path == "/v1/metrics":
            message, response = ExportMetricsServiceRequest(), ExportMetricsServiceResponse()
        else:
            return 404, "text/plain", b"not an OTLP path"
        as_json = content_type.split(";")[0].strip() == "application/json"
        try:
            data = _decompress(body, encoding)
            if as_json:
                json_format.Parse(data, message)
            else:
                message.ParseFromString(data)
        except (DecodeError, json_format.ParseError, OSError, zlib.error, ValueError) as exc:
            return 400, "text/plain", f"cannot decode: {exc}".encode()
        with self._changed:
            if isinstance(message, ExportTraceServiceRequest):
                self.spans.extend(_spans(message))
            elif isinstance(message, ExportMetricsServiceRequest):
                self.metric_exports.append(_points(message))
            self._changed.notify_all()
        if as_json:
            return 200, "application/json", json_format.MessageToJson(response).encode()
        return 200, "application/x-protobuf", response.SerializeToString()


def _decompress(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding not in ("", "identity"):
        raise ValueError(f"unsupported content-encoding {encoding}")
    return body


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return tuple(_value(item) for item in value.array_value.values)
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind)


def _attributes(pairs: Any) -> dict[str, Any]:
    items: list[KeyValue] = list(pairs)
    return {pair.key: _value(pair.value) for pair in items}


def _spans(request: ExportTraceServiceRequest) -> list[ReceivedSpan]:
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        name=span.name,
                        kind=_SPAN_KINDS.get(span.kind, str(span.kind)),
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        start_time_unix_nano=span.start_time_unix_nano,
                        end_time_unix_nano=span.end_time_unix_nano,
                        attributes=_attributes(span.attributes),
                        events=[
                            ReceivedEvent(event.name, event.time_unix_nano, _attributes(event.attributes))
                            for event in span.events
                        ],
                        status_code=_STATUS_CODES.get(span.status.code, str(span.status.code)),
                        status_message=span.status.message,
                        resource=resource,
                        scope=scope_spans.scope.name,
                    )
                )
    return spans


def _points(request: ExportMetricsServiceRequest) -> list[ReceivedPoint]:
    points = []
    for resource_metrics in request.resource_metrics:
        resource = _attributes(resource_metrics.resource.attributes)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                points.extend(_metric_points(metric, resource))
    return points


def _metric_points(metric: Metric, resource: dict[str, Any]) -> list[ReceivedPoint]:
    kind = metric.WhichOneof("data")
    name, unit = metric.name, metric.unit
    if kind == "sum" or kind == "gauge":
        data = metric.sum if kind == "sum" else metric.gauge
        return [
            ReceivedPoint(
                name,
                kind,
                unit,
                _attributes(point.attributes),
                resource,
                value=point.as_int if point.WhichOneof("value") == "as_int" else point.as_double,
                monotonic=metric.sum.is_monotonic if kind == "sum" else None,
            )
            for point in data.data_points
        ]
    if kind == "histogram":
        return [
            ReceivedPoint(
                name,
                "histogram",
                unit,
                _attributes(point.attributes),
                resource,
                count=point.count,
                sum=point.sum,
                bucket_counts=list(point.bucket_counts),
                explicit_bounds=list(point.explicit_bounds),
            )
            for point in metric.histogram.data_points
        ]
    return [ReceivedPoint(name, "other", unit, {}, resource)]

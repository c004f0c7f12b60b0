"""OpenTelemetry traces and metrics made from audit records, after the answer: no span work on the hot path.

``Telemetry.record(record)`` turns one finished ``AuditRecord`` into one SERVER span (``"{method} {route}"``,
HTTP stable semantic conventions, the record's own start and end times), one child span per timed stage
(``fhirwall.token``, ``fhirwall.policy``, ``fhirwall.consent``, ``fhirwall.upstream`` (CLIENT),
``fhirwall.masking``), one ``fhirwall.alert`` event per anomaly alert, and metric updates. Spans leave
through a ``BatchSpanProcessor`` (a slow or dead collector never blocks a request); metrics through a
``PeriodicExportingMetricReader``. Exporters: OTLP/HTTP, OTLP/gRPC, the console, or a JSON-lines file.

No PHI leaves by default: ``url.path`` and ``http.route`` are the route *template* (``/Patient/{id}``),
never the raw path or query; patients and Consents are counted, not named; the user is a pseudonym
(``enduser.pseudo.id``). With ``include_phi`` patient and Consent ids are added as keyed HMAC-SHA256 hashes
(``phi_hash_key_env``), never in clear. The attributes are listed in ``SPAN_ATTRIBUTES``.

Pseudonyms: ``enduser.pseudo.id`` is ``HMAC-SHA256(key, subject)`` in hex. The key is the configured PHI
hash key when there is one (stable across restarts and replicas, reversible by whoever holds the key and a
list of candidate subjects); otherwise 32 random bytes drawn when the process starts (stable within one
process, unlinkable across processes). Patient and Consent ids use the same function with the configured
key: ``HMAC-SHA256(key, id)`` over the UTF-8 id, lowercase hex.

``OTEL_*`` variables are read by the SDK from the process environment: ``OTEL_EXPORTER_OTLP_*`` (endpoint,
headers, certificates, compression, timeout) when ``endpoint`` is unset, ``OTEL_BSP_*`` for batching,
``OTEL_TRACES_SAMPLER``, ``OTEL_RESOURCE_ATTRIBUTES``; ``OTEL_SERVICE_NAME`` wins over the default
``service_name`` (an explicitly configured ``service_name`` wins over it).

Cost: about 30 µs per request for the server span and metrics, 10-15 µs more per stage span (SDK span
creation); counters are summed in a dict and observed at export time, only the duration histogram is an SDK
call per request. A collector that is down costs nothing more per request: the batch queue drops the
oldest spans (the SDK's per-span "Queue full" warning is limited to one a minute) and ``shutdown`` gives
up after ``SHUTDOWN_SECONDS`` plus at most one export request's timeout.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import hmac
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO, Any

import orjson
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from proxy.audit.record import AuditRecord, Decision
from proxy.settings import ConfigError, TelemetrySettings

__all__ = [
    "DURATION_BUCKETS",
    "SPAN_ATTRIBUTES",
    "JsonlSpanExporter",
    "Telemetry",
    "TelemetrySettings",
    "span_json",
]

logger = logging.getLogger("fhirwall.audit.telemetry")

SETTINGS_KEY = "audit.telemetry"
"""Where ``TelemetrySettings`` live in the configuration (for error key paths)."""
HASH_KEY_MIN_BYTES = 32
"""Patient ids are guessable: a short key would let anyone reverse their hashes by trying candidates."""
SCOPE_NAME = "fhirwall.audit"
SHUTDOWN_SECONDS = 5.0
"""How long ``Telemetry.shutdown`` lets buffered spans and metrics reach a collector before giving up."""
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
"""``http.server.request.duration`` bucket boundaries (seconds), as the HTTP semantic conventions advise."""

SPAN_ATTRIBUTES: dict[str, str] = {
    "http.request.method": "HTTP method (GET, POST, ...; _OTHER for unknown methods).",
    "http.request.method_original": "The method as sent, only when it is not a known one.",
    "http.route": "Route template relative to the FHIR base (/Patient/{id}); absent when unclassified.",
    "url.path": "Same as http.route (never the raw path: ids are PHI); REDACTED when unclassified.",
    "url.scheme": "http or https, when the record knows it.",
    "http.response.status_code": "Status code of the answer.",
    "error.type": "Error class of a refusal or failure (or the status code of a 5xx without one).",
    "client.address": "include_phi only: HMAC-SHA256 hex of the client's address (an IP is an identifier).",
    "user_agent.original": "User-Agent header.",
    "fhir.interaction": "FHIR restful interaction (read, search-type, create, transaction, ...).",
    "fhir.resource_type": "Resource type addressed, when there is one.",
    "fhirwall.decision": "permit, deny or not-evaluated.",
    "fhirwall.decision.reasons": "Reason codes of a denial or failure (list).",
    "fhirwall.scopes": "Granted SMART scopes (list).",
    "fhirwall.purpose_of_use": "Purpose-of-use codes from the token (list).",
    "fhirwall.client_id": "OAuth client id.",
    "enduser.pseudo.id": "HMAC-SHA256 pseudonym of the token subject (never the subject itself).",
    "fhirwall.request_id": "The proxy's request id (X-Request-ID).",
    "fhirwall.break_glass": "Whether emergency access overrode a consent denial.",
    "fhirwall.masking.profile": "Masking profile applied, when one was.",
    "fhirwall.masking.values": "Number of values masked (with fhirwall.masking.profile).",
    "fhirwall.patients.count": "Number of distinct patients whose data was read or written.",
    "fhirwall.resources.count": "Number of resources returned or written.",
    "fhirwall.consent.count": "Number of Consents that decided the request.",
    "fhirwall.alerts": "Anomaly rules set off (list); each is also a fhirwall.alert event.",
    "fhirwall.patients.hashed": "include_phi only: HMAC-SHA256 hex of each patient id (list).",
    "fhirwall.consent.ids": "include_phi only: HMAC-SHA256 hex of each Consent id (list).",
}
"""Every attribute a server span may carry (the table in the README)."""

_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
_ERROR = Status(StatusCode.ERROR)
_NO_CONTEXT = Context()
_PROPAGATOR = TraceContextTextMapPropagator()
_STAGE_SPANS: dict[str, tuple[str, SpanKind]] = {
    "token": ("fhirwall.token", SpanKind.INTERNAL),
    "policy": ("fhirwall.policy", SpanKind.INTERNAL),
    "consent": ("fhirwall.consent", SpanKind.INTERNAL),
    "upstream": ("fhirwall.upstream", SpanKind.CLIENT),
    "masking": ("fhirwall.masking", SpanKind.INTERNAL),
}
_PSEUDONYM_CACHE_SIZE = 4096


class Telemetry:
    """Spans and metrics from audit records; ``record`` is cheap and never raises, ``shutdown`` flushes."""

    def __init__(
        self,
        settings: TelemetrySettings,
        *,
        hash_key: bytes | None = None,
        span_processor: SpanProcessor | None = None,
        metric_readers: Sequence[MetricReader] = (),
        on_shutdown: Callable[[], None] | None = None,
    ) -> None:
        """Export through ``span_processor`` and ``metric_readers`` (none: that signal is off).

        ``hash_key`` keys the PHI hashes and the user pseudonym; ``from_settings`` reads it from the
        environment. Tests pass a ``SimpleSpanProcessor(InMemorySpanExporter())`` and an
        ``InMemoryMetricReader``.
        """
        if settings.include_phi and hash_key is None:
            raise ValueError("include_phi needs a hash key")
        self._include_phi = settings.include_phi
        self._phi_key = hash_key
        self._pseudonym_key = hash_key if hash_key is not None else os.urandom(32)
        self._pseudonyms: dict[str, str] = {}
        self._backlog_source: Callable[[], int] | None = None
        self._on_shutdown = on_shutdown
        self._abort_on_timeout: tuple[SpanExporter | MetricExporter, ...] = ()
        self._closed = False
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], int] = {}
        self._denials: dict[str, int] = {}
        self._masked: dict[str, int] = {}
        self.enabled = span_processor is not None or bool(metric_readers)
        resource = _resource(settings)
        self._tracer_provider: TracerProvider | None = None
        self._tracer: trace.Tracer | None = None
        if span_processor is not None:
            self._tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
            self._tracer_provider.add_span_processor(span_processor)
            self._tracer = self._tracer_provider.get_tracer(SCOPE_NAME, _version())
        self._meter_provider: MeterProvider | None = None
        if metric_readers:
            self._meter_provider = MeterProvider(
                metric_readers=list(metric_readers), resource=resource, shutdown_on_exit=False
            )
            self._create_instruments(self._meter_provider)
        if self.enabled:
            atexit.register(self.shutdown)

    @classmethod
    def from_settings(
        cls, settings: TelemetrySettings, environ: Mapping[str, str] | None = None
    ) -> Telemetry:
        """Build the exporters ``settings`` name; ``ConfigError`` for a missing key or exporter package."""
        env = os.environ if environ is None else environ
        key = _read_hash_key(settings, env)
        if settings.exporter == "none":
            return cls(settings, hash_key=key)
        span_exporter, metric_exporter, on_shutdown = _exporters(settings)
        readers: list[MetricReader] = []
        if metric_exporter is not None:
            readers.append(
                PeriodicExportingMetricReader(
                    metric_exporter, export_interval_millis=settings.metric_interval_seconds * 1000
                )
            )
        _limit_repeated_sdk_warnings()
        telemetry = cls(
            settings,
            hash_key=key,
            span_processor=BatchSpanProcessor(span_exporter),
            metric_readers=readers,
            on_shutdown=on_shutdown,
        )
        telemetry._abort_on_timeout = (
            (span_exporter,) if metric_exporter is None else (span_exporter, metric_exporter)
        )
        return telemetry

    def set_backlog_source(self, source: Callable[[], int] | None) -> None:
        """Feed the ``fhirwall.audit.backlog`` gauge from ``source`` (records waiting for a durable sink)."""
        self._backlog_source = source

    def record(self, record: AuditRecord) -> None:
        """Export one finished request (call it once, after the answer); never raises."""
        if not self.enabled:
            return
        try:
            start_ns = int(record.started * 1e9)
            if record.duration_ms > 0:
                end_ns = start_ns + int(record.duration_ms * 1e6)
            else:
                end_ns = max(start_ns, time.time_ns())
            method = record.method.upper()
            if self._tracer is not None:
                self._span(record, method, start_ns, end_ns)
            if self._meter_provider is not None:
                self._measure(record, method, (end_ns - start_ns) / 1e9)
        except Exception:
            logger.exception("telemetry for request %s could not be recorded", record.request_id)

    def shutdown(self, timeout_seconds: float = SHUTDOWN_SECONDS) -> None:
        """Export what is buffered and stop; exports still retrying after ``timeout_seconds`` are dropped."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.shutdown)
        watchdog = threading.Timer(timeout_seconds, self._abort_exports)
        watchdog.daemon = True
        watchdog.start()
        try:
            if self._tracer_provider is not None:
                self._tracer_provider.shutdown()
            if self._meter_provider is not None:
                self._meter_provider.shutdown()
        finally:
            watchdog.cancel()
            if self._on_shutdown is not None:
                self._on_shutdown()

    def _abort_exports(self) -> None:
        """Stop exporters that are still retrying (a collector that is down or does not answer)."""
        logger.warning("telemetry export did not finish in time: abandoning what is left")
        for exporter in self._abort_on_timeout:
            exporter.shutdown()

    # spans

    def _span(self, record: AuditRecord, method: str, start_ns: int, end_ns: int) -> None:
        assert self._tracer is not None
        route = record.route
        attributes = self._server_attributes(record, method)
        if method not in _KNOWN_METHODS:
            method = "HTTP"
        name = f"{method} {route}" if route.startswith("/") else method
        span = self._tracer.start_span(
            name,
            _parent_context(record),
            SpanKind.SERVER,
            attributes,
            start_time=start_ns,
            record_exception=False,
        )
        if record.status >= 500:
            span.set_status(_ERROR)
        for rule in record.alerts:
            span.add_event("fhirwall.alert", {"fhirwall.alert.rule": rule}, end_ns)
        if record.stages and span.is_recording():
            context = trace.set_span_in_context(span, _NO_CONTEXT)
            start_span = self._tracer.start_span
            for stage, started, ended in record.stages:
                stage_name, kind = _STAGE_SPANS.get(stage) or (f"fhirwall.{stage}", SpanKind.INTERNAL)
                child = start_span(stage_name, context, kind, None, start_time=int(started * 1e9))
                child.end(int(ended * 1e9))
        span.end(end_ns)

    def _server_attributes(self, record: AuditRecord, method: str) -> dict[str, Any]:
        route = record.route
        classified = route.startswith("/")
        known_method = method in _KNOWN_METHODS
        attributes: dict[str, Any] = {
            "http.request.method": method if known_method else "_OTHER",
            "url.path": route if classified else "REDACTED",
            "fhir.interaction": record.interaction,
            "fhirwall.decision": record.decision,
            "fhirwall.request_id": record.request_id,
            "fhirwall.break_glass": record.break_glass,
            "fhirwall.patients.count": len(record.patients),
            "fhirwall.resources.count": len(record.resources),
            "fhirwall.consent.count": len(record.consent_ids),
        }
        if not known_method:
            attributes["http.request.method_original"] = record.method
        if classified:
            attributes["http.route"] = route
        if record.status:
            attributes["http.response.status_code"] = record.status
        error_type = record.error_type or (str(record.status) if record.status >= 500 else None)
        if error_type:
            attributes["error.type"] = error_type
        scheme = getattr(record, "scheme", None)
        if scheme:
            attributes["url.scheme"] = scheme
        if self._include_phi and self._phi_key and record.client_address:  # an IP address identifies
            attributes["client.address"] = _hmac_hex(self._phi_key, record.client_address)
        _put(attributes, "user_agent.original", record.user_agent)
        _put(attributes, "fhir.resource_type", record.resource_type)
        _put(attributes, "fhirwall.decision.reasons", record.reasons)
        _put(attributes, "fhirwall.scopes", record.scopes)
        _put(attributes, "fhirwall.purpose_of_use", record.purpose_of_use)
        _put(attributes, "fhirwall.client_id", record.client_id)
        _put(attributes, "fhirwall.alerts", record.alerts)
        if record.subject:
            attributes["enduser.pseudo.id"] = self._pseudonym(record.subject)
        if record.masking_profile:
            attributes["fhirwall.masking.profile"] = record.masking_profile
            attributes["fhirwall.masking.values"] = record.masked_values
        if self._include_phi:
            key = self._phi_key
            assert key is not None
            if record.patients:
                attributes["fhirwall.patients.hashed"] = sorted(_hmac_hex(key, p) for p in record.patients)
            if record.consent_ids:
                attributes["fhirwall.consent.ids"] = [_hmac_hex(key, c) for c in record.consent_ids]
        return attributes

    def _pseudonym(self, subject: str) -> str:
        pseudonym = self._pseudonyms.get(subject)
        if pseudonym is None:
            if len(self._pseudonyms) >= _PSEUDONYM_CACHE_SIZE:
                self._pseudonyms.clear()
            pseudonym = self._pseudonyms[subject] = _hmac_hex(self._pseudonym_key, subject)
        return pseudonym

    # metrics

    def _create_instruments(self, provider: MeterProvider) -> None:
        """Counters are summed here and observed at each export: a dict update per request."""
        meter = provider.get_meter(SCOPE_NAME, _version())
        meter.create_observable_counter(
            "fhirwall.requests",
            callbacks=[self._observe_requests],
            unit="{request}",
            description="FHIR requests answered, by interaction, status class and decision.",
        )
        meter.create_observable_counter(
            "fhirwall.denials",
            callbacks=[self._observe_denials],
            unit="{request}",
            description="Requests denied, by first reason code.",
        )
        meter.create_observable_counter(
            "fhirwall.masking.values",
            callbacks=[self._observe_masked],
            unit="{value}",
            description="Values masked, by masking profile.",
        )
        meter.create_observable_gauge(
            "fhirwall.audit.backlog",
            callbacks=[self._observe_backlog],
            unit="{record}",
            description="Audit records waiting for a durable sink.",
        )
        self._duration = meter.create_histogram(
            "http.server.request.duration",
            unit="s",
            description="Duration of HTTP server requests.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )

    def _measure(self, record: AuditRecord, method: str, duration: float) -> None:
        status = record.status
        status_class = _STATUS_CLASSES[status // 100 - 1] if 100 <= status < 600 else "unknown"
        key = (record.interaction, status_class, record.decision)
        with self._lock:
            self._requests[key] = self._requests.get(key, 0) + 1
            if record.decision == Decision.DENY:
                reason = record.reasons[0] if record.reasons else "none"
                self._denials[reason] = self._denials.get(reason, 0) + 1
            if record.masking_profile:
                profile = record.masking_profile
                self._masked[profile] = self._masked.get(profile, 0) + record.masked_values
        attributes: dict[str, Any] = {
            "http.request.method": method if method in _KNOWN_METHODS else "_OTHER",
            "http.response.status_code": status,
        }
        if record.route.startswith("/"):
            attributes["http.route"] = record.route
        if record.error_type:
            attributes["error.type"] = record.error_type
        scheme = getattr(record, "scheme", None)
        if scheme:
            attributes["url.scheme"] = scheme
        self._duration.record(duration, attributes)

    def _observe_requests(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            counts = list(self._requests.items())
        return [
            Observation(
                count,
                {
                    "fhir.interaction": interaction,
                    "fhirwall.status_class": status,
                    "fhirwall.decision": decision,
                },
            )
            for (interaction, status, decision), count in counts
        ]

    def _observe_denials(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            counts = list(self._denials.items())
        return [Observation(count, {"fhirwall.decision.reason": reason}) for reason, count in counts]

    def _observe_masked(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            counts = list(self._masked.items())
        return [Observation(count, {"fhirwall.masking.profile": profile}) for profile, count in counts]

    def _observe_backlog(self, options: CallbackOptions) -> Iterable[Observation]:
        source = self._backlog_source
        if source is None:
            return ()
        try:
            return (Observation(int(source())),)
        except Exception:
            logger.exception("the audit backlog source failed")
            return ()


class _LineSink:
    """One append-only JSON-lines file shared by the span and metric exporters (each line written whole)."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._file: IO[bytes] = path.open("ab")

    def write(self, lines: Iterable[Any]) -> None:
        data = b"".join(orjson.dumps(line) + b"\n" for line in lines)
        with self._lock:
            if not self._file.closed:
                self._file.write(data)
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


class JsonlSpanExporter(SpanExporter):
    """Appends one JSON object per span: ``{"signal": "span", "name", "kind", "trace_id", ...}``."""

    def __init__(self, sink: _LineSink) -> None:
        self._sink = sink

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            self._sink.write(span_json(span) for span in spans)
        except OSError:
            logger.exception("telemetry spans could not be written")
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS


class _JsonlMetricExporter(MetricExporter):
    """Appends one ``{"signal": "metrics", "resource_metrics": [...]}`` line per export."""

    def __init__(self, sink: _LineSink) -> None:
        super().__init__()
        self._sink = sink

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        try:
            self._sink.write([{"signal": "metrics", **json.loads(metrics_data.to_json(indent=None))}])
        except OSError:
            logger.exception("telemetry metrics could not be written")
            return MetricExportResult.FAILURE
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        return None


def span_json(span: ReadableSpan) -> dict[str, Any]:
    """A finished span as the JSON object ``JsonlSpanExporter`` writes."""
    context = span.get_span_context()
    assert context is not None
    parent = span.parent
    return {
        "signal": "span",
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
        "parent_span_id": format(parent.span_id, "016x") if parent is not None else None,
        "start_time_unix_nano": span.start_time,
        "end_time_unix_nano": span.end_time,
        "attributes": dict(span.attributes or {}),
        "events": [
            {
                "name": event.name,
                "time_unix_nano": event.timestamp,
                "attributes": dict(event.attributes or {}),
            }
            for event in span.events
        ],
        "status": {"code": span.status.status_code.name, "description": span.status.description},
        "resource": dict(span.resource.attributes),
    }


def _exporters(
    settings: TelemetrySettings,
) -> tuple[SpanExporter, MetricExporter | None, Callable[[], None] | None]:
    """The span exporter, the metric exporter (None when metrics are off) and what closes them."""
    if settings.exporter == "otlp-http":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        base = settings.endpoint
        spans: SpanExporter = OTLPSpanExporter(endpoint=f"{base}/v1/traces" if base else None)
        metrics: MetricExporter | None = None
        if settings.metrics:
            metrics = OTLPMetricExporter(endpoint=f"{base}/v1/metrics" if base else None)
        return spans, metrics, None
    if settings.exporter == "otlp-grpc":
        spans, metrics = _grpc_exporters(settings.endpoint, settings.metrics)
        return spans, metrics, None
    if settings.exporter == "console":
        metrics = ConsoleMetricExporter(out=sys.stdout) if settings.metrics else None
        return ConsoleSpanExporter(out=sys.stdout), metrics, None
    assert settings.jsonl_file is not None
    try:
        sink = _LineSink(settings.jsonl_file)
    except OSError as exc:
        raise ConfigError(
            [(f"{SETTINGS_KEY}.jsonl_file", f"cannot open {settings.jsonl_file}: {exc.strerror}")]
        ) from None
    return JsonlSpanExporter(sink), _JsonlMetricExporter(sink) if settings.metrics else None, sink.close


def _grpc_exporters(endpoint: str | None, metrics: bool) -> tuple[SpanExporter, MetricExporter | None]:
    try:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise ConfigError(
            [
                (
                    f"{SETTINGS_KEY}.exporter",
                    "otlp-grpc needs the package opentelemetry-exporter-otlp-proto-grpc "
                    f"(pip install 'fhirwall[otlp-grpc]'); it cannot be imported: {exc}",
                )
            ]
        ) from None
    return OTLPSpanExporter(endpoint=endpoint), OTLPMetricExporter(endpoint=endpoint) if metrics else None


class _RepeatLimiter(logging.Filter):
    """Lets one record per message template through per interval (the SDK warns once per dropped span)."""

    def __init__(self, interval_seconds: float) -> None:
        super().__init__()
        self._interval = interval_seconds
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        template = str(record.msg)
        if now - self._last.get(template, -self._interval) < self._interval:
            return False
        self._last[template] = now
        return True


_SDK_BATCH_LOGGER = "opentelemetry.sdk._shared_internal"


def _limit_repeated_sdk_warnings() -> None:
    """A collector outage fills the span queue; the SDK then logs one "Queue full" warning per span."""
    sdk_logger = logging.getLogger(_SDK_BATCH_LOGGER)
    if not any(isinstance(f, _RepeatLimiter) for f in sdk_logger.filters):
        sdk_logger.addFilter(_RepeatLimiter(60.0))


def _read_hash_key(settings: TelemetrySettings, environ: Mapping[str, str]) -> bytes | None:
    name = settings.phi_hash_key_env
    if name is None:
        return None
    text = environ.get(name, "")
    problem = None
    if not text:
        problem = f"environment variable {name} is not set"
    elif len(text.encode()) < HASH_KEY_MIN_BYTES:
        problem = f"the key in {name} must be at least {HASH_KEY_MIN_BYTES} bytes"
    if problem:
        raise ConfigError([(f"{SETTINGS_KEY}.phi_hash_key_env", problem)])
    return text.encode()


def _resource(settings: TelemetrySettings) -> Resource:
    attributes: dict[str, str] = {}
    version = _version()
    if version:
        attributes["service.version"] = version
    if "service_name" in settings.model_fields_set or not _service_name_in_environment():
        attributes["service.name"] = settings.service_name
    return Resource.create(attributes)


def _service_name_in_environment() -> bool:
    if os.environ.get("OTEL_SERVICE_NAME"):
        return True
    pairs = os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(",")
    return any(pair.split("=", 1)[0].strip() == "service.name" for pair in pairs)


@functools.cache
def _version() -> str:
    try:
        return version("fhirwall")
    except PackageNotFoundError:
        return ""


def _parent_context(record: AuditRecord) -> Context:
    traceparent = getattr(record, "traceparent", None)
    if not traceparent:
        return _NO_CONTEXT
    return _PROPAGATOR.extract({"traceparent": traceparent}, _NO_CONTEXT)


def _put(attributes: dict[str, Any], name: str, value: Any) -> None:
    if value:
        attributes[name] = value


def _hmac_hex(key: bytes, value: str) -> str:
    return hmac.digest(key, value.encode(), hashlib.sha256).hex()

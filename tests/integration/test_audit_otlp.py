"""Telemetry over real OTLP/HTTP to a local receiver: first ``Telemetry`` alone, then the running proxy.

The proxy part expects ``audit.telemetry`` (``TelemetrySettings``) in the configuration, a ``Telemetry`` built
from it when the audit trail starts, ``Telemetry.record`` called for every request the trail records, and
``Telemetry.shutdown`` when the proxy stops. It runs as soon as ``AuditSettings`` has that field.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from proxy.audit.record import AuditRecord, Decision
from proxy.audit.telemetry import DURATION_BUCKETS, Telemetry, TelemetrySettings
from proxy.auth.dev_issuer import DevIssuer, load_or_create_key
from proxy.settings import AuditSettings
from tests.conftest import RunningProxy, SeededUpstream, free_port, make_settings
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan

AUDIT_KEY = "integration-audit-key"
T0 = 1_700_000_000.5


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


def record(request_id: str, **changes: Any) -> AuditRecord:
    values: dict[str, Any] = {
        "request_id": request_id,
        "method": "GET",
        "route": "/Patient/{id}",
        "interaction": "read",
        "started": T0,
        "resource_type": "Patient",
        "resource_id": "pat-secret-1",
        "query": "name=SECRETNAME",
        "status": 200,
        "duration_ms": 20.0,
        "decision": Decision.PERMIT,
        "subject": "user-secret-2",
        "patients": {"pat-secret-1"},
        "stages": [("token", T0, T0 + 0.001), ("upstream", T0 + 0.002, T0 + 0.015)],
    }
    values.update(changes)
    return AuditRecord(**values)


def otlp_http(receiver: OtlpReceiver, **settings: Any) -> Telemetry:
    return Telemetry.from_settings(
        TelemetrySettings(exporter="otlp-http", endpoint=receiver.endpoint, **settings), environ={}
    )


def text_of(spans: list[ReceivedSpan]) -> str:
    return repr([(span.name, span.attributes, span.events, span.resource) for span in spans])


# Telemetry alone


def test_spans_and_metrics_reach_an_otlp_http_receiver(receiver: OtlpReceiver) -> None:
    telemetry = otlp_http(receiver, metric_interval_seconds=0.2)
    telemetry.record(record("r-1", alerts=["distinct-patients"]))
    telemetry.record(record("r-2", status=403, decision=Decision.DENY, reasons=["forbidden"]))
    telemetry.record(record("r-3", status=502, error_type="UpstreamError", stages=[]))
    telemetry.set_backlog_source(lambda: 4)
    points = receiver.wait_for_metric("fhirwall.requests", lambda ps: sum(p.value or 0 for p in ps) == 3)
    telemetry.shutdown()

    spans = receiver.wait_for_spans(lambda spans: len(spans) == 7)
    servers = {span.attributes["fhirwall.request_id"]: span for span in spans if span.kind == "SERVER"}
    assert set(servers) == {"r-1", "r-2", "r-3"}
    first = servers["r-1"]
    assert first.name == "GET /Patient/{id}"
    assert first.scope == "fhirwall.audit"
    assert first.resource["service.name"] == "fhirwall"
    assert (first.start_time_unix_nano, first.end_time_unix_nano) == (
        int(T0 * 1e9),
        int(T0 * 1e9) + 20_000_000,
    )
    assert first.attributes["url.path"] == first.attributes["http.route"] == "/Patient/{id}"
    assert first.attributes["http.response.status_code"] == 200
    assert first.attributes["fhirwall.patients.count"] == 1
    assert [(e.name, e.attributes) for e in first.events] == [
        ("fhirwall.alert", {"fhirwall.alert.rule": "distinct-patients"})
    ]
    assert (servers["r-2"].status_code, servers["r-3"].status_code) == ("UNSET", "ERROR")
    assert servers["r-3"].attributes["error.type"] == "UpstreamError"
    children = {(span.name, span.kind) for span in spans if span.parent_span_id == first.span_id}
    assert children == {("fhirwall.token", "INTERNAL"), ("fhirwall.upstream", "CLIENT")}
    assert all(span.trace_id == first.trace_id for span in spans if span.parent_span_id == first.span_id)

    counts = {
        (p.attributes["fhirwall.status_class"], p.attributes["fhirwall.decision"]): p.value for p in points
    }
    assert counts == {("2xx", "permit"): 1, ("4xx", "deny"): 1, ("5xx", "permit"): 1}
    assert all(point.monotonic for point in points)
    (denials,) = receiver.latest_points("fhirwall.denials")
    assert (denials.attributes, denials.value) == ({"fhirwall.decision.reason": "forbidden"}, 1)
    durations = receiver.latest_points("http.server.request.duration")
    assert sum(point.count or 0 for point in durations) == 3
    assert all(tuple(point.explicit_bounds) == DURATION_BUCKETS for point in durations)
    assert {p.unit for p in durations} == {"s"}
    assert [p.value for p in receiver.latest_points("fhirwall.audit.backlog")] == [4]

    exported = text_of(spans) + repr(receiver.metric_exports)
    for secret in ("pat-secret-1", "user-secret-2", "SECRETNAME"):
        assert secret not in exported
    assert {r.content_type for r in receiver.requests} == {"application/x-protobuf"}


def test_gzip_from_the_standard_environment_variable(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    telemetry = otlp_http(receiver, metrics=False)
    telemetry.record(record("gz-1"))
    telemetry.shutdown()
    receiver.wait_for_spans(lambda spans: len(spans) == 3)
    assert {(r.path, r.content_encoding) for r in receiver.requests} == {("/v1/traces", "gzip")}


def test_the_endpoint_can_come_from_the_environment(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    telemetry = Telemetry.from_settings(TelemetrySettings(exporter="otlp-http", metrics=False), environ={})
    telemetry.record(record("env-1", stages=[]))
    telemetry.shutdown()
    (span,) = receiver.wait_for_spans(lambda spans: len(spans) == 1)
    assert span.attributes["fhirwall.request_id"] == "env-1"


def test_the_receiver_also_reads_otlp_json(receiver: OtlpReceiver) -> None:
    message = ExportTraceServiceRequest()
    span = message.resource_spans.add().scope_spans.add().spans.add()
    span.name = "GET /Patient/{id}"
    span.trace_id, span.span_id = bytes(range(16)), bytes(range(8))
    answer = httpx.post(
        f"{receiver.endpoint}/v1/traces",
        content=json_format.MessageToJson(message),
        headers={"content-type": "application/json"},
    )
    assert answer.status_code == 200
    assert [s.name for s in receiver.spans] == ["GET /Patient/{id}"]
    assert httpx.post(f"{receiver.endpoint}/v1/traces", content=b"\xff\x00garbage").status_code == 400
    assert httpx.post(f"{receiver.endpoint}/v2/elsewhere", content=b"").status_code == 404


def _refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_a_dead_collector_never_blocks_a_request_and_shutdown_is_bounded() -> None:
    settings = TelemetrySettings(exporter="otlp-http", endpoint=f"http://127.0.0.1:{_refused_port()}")
    telemetry = Telemetry.from_settings(settings, environ={})
    started = time.perf_counter()
    for index in range(2000):
        telemetry.record(record(f"dead-{index}"))
    per_record = (time.perf_counter() - started) / 2000
    assert per_record < 0.002, f"{per_record * 1e6:.0f} µs per record"
    started = time.perf_counter()
    telemetry.shutdown(timeout_seconds=1.0)
    assert time.perf_counter() - started < 8.0


# the running proxy


@pytest.mark.skipif(
    "telemetry" not in AuditSettings.model_fields,
    reason="wired by the pipeline owner: AuditSettings.telemetry, Telemetry.record from the audit trail",
)
def test_the_proxy_exports_every_request_over_otlp_http(
    upstream: SeededUpstream, receiver: OtlpReceiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FHIRWALL_TEST_AUDIT_KEY", AUDIT_KEY)
    port = free_port()
    issuer_url = f"http://127.0.0.1:{port}/_dev"
    settings = make_settings(
        upstream.base_url,
        **{
            "server.port": port,
            "auth.dev_issuer.enabled": True,
            "auth.dev_issuer.key_file": str(tmp_path / "key.pem"),
            "auth.dev_issuer.issuer": issuer_url,
            "audit.log_file": str(tmp_path / "audit.jsonl"),
            "audit.log_key_env": "FHIRWALL_TEST_AUDIT_KEY",
            "audit.telemetry": {
                "exporter": "otlp-http",
                "endpoint": receiver.endpoint,
                "metric_interval_seconds": 0.5,
            },
        },
    )
    proxy = RunningProxy(settings).start()
    issuer = DevIssuer(load_or_create_key(tmp_path / "key.pem"), issuer_url)
    patient_a, patient_b = list(upstream.by_patient)[:2]
    token = issuer.mint(
        {"sub": "otlp-user-1", "client_id": "otlp-app", "scope": "patient/*.rs", "patient": patient_a},
        audience=proxy.base_url,
    )
    try:
        with proxy.client(headers={"authorization": f"Bearer {token}"}) as client:
            read = client.get(f"/Patient/{patient_a}")
            search = client.get("/Observation", params={"patient": patient_a, "_count": "2"})
            hidden = client.get(f"/Patient/{patient_b}")
        unauthenticated = proxy.client().get(f"/Patient/{patient_a}")
    finally:
        proxy.stop()  # shutting down flushes the spans and the last metrics
    answers = {"read": read, "search": search, "hidden": hidden, "unauthenticated": unauthenticated}
    assert [r.status_code for r in answers.values()] == [200, 200, 404, 401]
    ids = {name: response.headers["x-request-id"] for name, response in answers.items()}

    spans = receiver.wait_for_spans(
        lambda spans: set(ids.values()) <= {s.attributes.get("fhirwall.request_id") for s in spans}
    )
    servers = {s.attributes["fhirwall.request_id"]: s for s in spans if s.kind == "SERVER"}
    expected = {
        "read": ("GET /Patient/{id}", 200, "read", "permit"),
        "search": ("GET /Observation", 200, "search-type", "permit"),
        "hidden": ("GET /Patient/{id}", 404, "read", "deny"),
        "unauthenticated": ("GET /Patient/{id}", 401, "read", "deny"),
    }
    for name, (span_name, status, interaction, decision) in expected.items():
        span = servers[ids[name]]
        assert span.name == span_name
        assert span.status_code == "UNSET"
        assert span.attributes["http.request.method"] == "GET"
        assert span.attributes["url.path"] == span.attributes["http.route"] == span_name.split(" ", 1)[1]
        assert span.attributes["http.response.status_code"] == status
        assert span.attributes["fhir.interaction"] == interaction
        assert span.attributes["fhirwall.decision"] == decision
        assert "client.address" not in span.attributes  # an IP address identifies; only with include_phi
        assert span.resource["service.name"] == "fhirwall"
        assert span.end_time_unix_nano >= span.start_time_unix_nano
    read_span = servers[ids["read"]]
    assert read_span.attributes["fhirwall.client_id"] == "otlp-app"
    assert read_span.attributes["fhirwall.scopes"] == ("patient/*.rs",)
    assert read_span.attributes["fhirwall.patients.count"] == 1
    assert len(str(read_span.attributes["enduser.pseudo.id"])) == 64
    stages = {s.name: s for s in spans if s.parent_span_id == read_span.span_id}
    assert {"fhirwall.token", "fhirwall.policy", "fhirwall.upstream"} <= set(stages)
    assert stages["fhirwall.upstream"].kind == "CLIENT"
    for stage in stages.values():
        assert stage.trace_id == read_span.trace_id
        assert read_span.start_time_unix_nano <= stage.start_time_unix_nano <= stage.end_time_unix_nano
        assert stage.end_time_unix_nano <= read_span.end_time_unix_nano

    requests = receiver.wait_for_metric(
        "fhirwall.requests", lambda ps: sum(p.value or 0 for p in ps) >= len(answers)
    )
    by_outcome = {
        (
            p.attributes["fhir.interaction"],
            p.attributes["fhirwall.status_class"],
            p.attributes["fhirwall.decision"],
        ): p.value
        for p in requests
    }
    assert by_outcome[("read", "4xx", "deny")] == 2
    assert by_outcome[("search-type", "2xx", "permit")] == 1
    durations = receiver.latest_points("http.server.request.duration")
    assert sum(p.count or 0 for p in durations) == sum(int(v or 0) for v in by_outcome.values())

    exported = text_of(spans) + repr(receiver.metric_exports)
    for secret in (patient_a, patient_b, "otlp-user-1"):
        assert secret not in exported

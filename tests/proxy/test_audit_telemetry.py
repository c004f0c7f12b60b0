"""Telemetry from audit records: one SERVER span per request with child stage spans, HTTP semantic
conventions, the documented fhirwall attributes, metrics, and never PHI in clear (SDK in-memory exporter
and reader)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import ValidationError

from proxy.audit.record import AuditRecord, Decision
from proxy.audit.telemetry import (
    DURATION_BUCKETS,
    SPAN_ATTRIBUTES,
    Telemetry,
    TelemetrySettings,
    span_json,
)
from proxy.settings import ConfigError

KEY = b"telemetry-test-key-0123456789abcdef"
PATIENT_A = "pat-secret-a1"
PATIENT_B = "pat-secret-b2"
SUBJECT = "user-secret-7"
CONSENT = "consent-secret-9"
QUERY = "name=SECRETSMITH&birthdate=1970-01-02"
PHI = [PATIENT_A, PATIENT_B, SUBJECT, CONSENT, "SECRETSMITH", "1970-01-02", "prac-secret-3", "jti-secret-4"]
T0 = 1_700_000_000.25


def make_record(**changes: Any) -> AuditRecord:
    """A permitted patient read carrying every kind of PHI a record can hold."""
    values: dict[str, Any] = {
        "request_id": "req-1",
        "method": "GET",
        "route": "/Patient/{id}",
        "interaction": "read",
        "started": T0,
        "resource_type": "Patient",
        "resource_id": PATIENT_A,
        "query": QUERY,
        "client_address": "127.0.0.9",
        "user_agent": "test-agent/1.0",
        "status": 200,
        "duration_ms": 12.5,
        "decision": Decision.PERMIT,
        "client_id": "app-1",
        "subject": SUBJECT,
        "fhir_user": "Practitioner/prac-secret-3",
        "token_id": "jti-secret-4",
        "roles": ("clinician",),
        "purpose_of_use": ("TREAT",),
        "scopes": ("patient/*.rs", "openid"),
        "patients": {PATIENT_A, PATIENT_B},
        "resources": [f"Patient/{PATIENT_A}", f"Patient/{PATIENT_B}"],
        "consent_ids": [CONSENT],
    }
    values.update(changes)
    return AuditRecord(**values)


@dataclass
class Harness:
    telemetry: Telemetry
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def server(self) -> ReadableSpan:
        (span,) = [span for span in self.spans() if span.kind is SpanKind.SERVER]
        return span

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        if data is None:
            return []
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]


@pytest.fixture
def build() -> Iterator[Callable[..., Harness]]:
    made: list[Telemetry] = []

    def make(key: bytes | None = None, **settings: Any) -> Harness:
        exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
        telemetry = Telemetry(
            TelemetrySettings(**settings),
            hash_key=key,
            span_processor=SimpleSpanProcessor(exporter),
            metric_readers=[reader],
        )
        made.append(telemetry)
        return Harness(telemetry, exporter, reader)

    yield make
    for telemetry in made:
        telemetry.shutdown()


@pytest.fixture
def harness(build: Callable[..., Harness]) -> Harness:
    return build()


def everything(spans: list[ReadableSpan]) -> str:
    """Every name, attribute and event of ``spans`` as one string (to look for PHI in)."""
    return orjson.dumps([span_json(span) for span in spans], option=orjson.OPT_NON_STR_KEYS).decode()


def hmac_hex(value: str, key: bytes = KEY) -> str:
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


# the server span


def test_read_span_follows_the_http_server_conventions(harness: Harness) -> None:
    harness.telemetry.record(make_record())
    span = harness.server()
    assert span.name == "GET /Patient/{id}"
    assert span.kind is SpanKind.SERVER
    assert span.parent is None
    assert span.start_time == int(T0 * 1e9)
    assert span.end_time == int(T0 * 1e9) + 12_500_000
    assert span.status.status_code is StatusCode.UNSET
    assert dict(span.attributes or {}) == {
        "http.request.method": "GET",
        "url.path": "/Patient/{id}",
        "http.route": "/Patient/{id}",
        "http.response.status_code": 200,
        "user_agent.original": "test-agent/1.0",
        "fhir.interaction": "read",
        "fhir.resource_type": "Patient",
        "fhirwall.decision": "permit",
        "fhirwall.request_id": "req-1",
        "fhirwall.client_id": "app-1",
        "fhirwall.scopes": ("patient/*.rs", "openid"),
        "fhirwall.purpose_of_use": ("TREAT",),
        "fhirwall.break_glass": False,
        "fhirwall.patients.count": 2,
        "fhirwall.resources.count": 2,
        "fhirwall.consent.count": 1,
        "enduser.pseudo.id": harness.telemetry._pseudonym(SUBJECT),
    }


@pytest.mark.parametrize(
    ("method", "route", "interaction", "resource_type", "name"),
    [
        ("GET", "/Observation", "search-type", "Observation", "GET /Observation"),
        ("GET", "/Patient/{id}/Observation", "search-type", "Observation", "GET /Patient/{id}/Observation"),
        ("GET", "/", "search-system", None, "GET /"),
        ("POST", "/Observation", "create", "Observation", "POST /Observation"),
        ("PUT", "/Observation/{id}", "update", "Observation", "PUT /Observation/{id}"),
        ("PATCH", "/Observation/{id}", "patch", "Observation", "PATCH /Observation/{id}"),
        ("DELETE", "/Observation/{id}", "delete", "Observation", "DELETE /Observation/{id}"),
        ("GET", "/Patient/{id}/_history/{vid}", "vread", "Patient", "GET /Patient/{id}/_history/{vid}"),
        ("GET", "/Patient/{id}/_history", "history-instance", "Patient", "GET /Patient/{id}/_history"),
        ("POST", "/", "transaction", None, "POST /"),
        ("GET", "/Patient/{id}/$everything", "operation", "Patient", "GET /Patient/{id}/$everything"),
        ("GET", "/metadata", "capabilities", None, "GET /metadata"),
    ],
)
def test_every_interaction_is_named_by_its_route_template(
    harness: Harness, method: str, route: str, interaction: str, resource_type: str | None, name: str
) -> None:
    harness.telemetry.record(
        make_record(method=method, route=route, interaction=interaction, resource_type=resource_type)
    )
    span = harness.server()
    attributes = span.attributes or {}
    assert span.name == name
    assert attributes["http.request.method"] == method
    assert attributes["http.route"] == attributes["url.path"] == route
    assert attributes["fhir.interaction"] == interaction
    assert attributes.get("fhir.resource_type") == resource_type


def test_an_unclassified_request_is_named_by_its_method_and_its_path_redacted(harness: Harness) -> None:
    harness.telemetry.record(make_record(route="unclassified", interaction="unclassified", status=400))
    span = harness.server()
    assert span.name == "GET"
    assert "http.route" not in (span.attributes or {})
    assert (span.attributes or {})["url.path"] == "REDACTED"


def test_an_unknown_method_is_other(harness: Harness) -> None:
    harness.telemetry.record(make_record(method="BREW", status=405))
    span = harness.server()
    assert span.name == "HTTP /Patient/{id}"
    assert (span.attributes or {})["http.request.method"] == "_OTHER"
    assert (span.attributes or {})["http.request.method_original"] == "BREW"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422, 429])
def test_a_4xx_leaves_the_status_unset(harness: Harness, status: int) -> None:
    harness.telemetry.record(
        make_record(status=status, decision=Decision.DENY, reasons=["forbidden"], error_type="ForbiddenError")
    )
    span = harness.server()
    assert span.status.status_code is StatusCode.UNSET
    assert (span.attributes or {})["error.type"] == "ForbiddenError"
    assert (span.attributes or {})["fhirwall.decision.reasons"] == ("forbidden",)


@pytest.mark.parametrize(
    ("status", "error_type", "expected"), [(500, "ProxyError", "ProxyError"), (502, None, "502")]
)
def test_a_5xx_is_an_error(harness: Harness, status: int, error_type: str | None, expected: str) -> None:
    harness.telemetry.record(make_record(status=status, error_type=error_type))
    span = harness.server()
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["error.type"] == expected


def test_a_success_has_no_error_type(harness: Harness) -> None:
    harness.telemetry.record(make_record())
    assert "error.type" not in (harness.server().attributes or {})


def test_audit_facts_become_attributes(harness: Harness) -> None:
    harness.telemetry.record(
        make_record(
            break_glass=True,
            masking_profile="safe-harbor",
            masked_values=7,
            reasons=["consent-withheld"],
            alerts=["distinct-patients", "break-glass"],
        )
    )
    attributes = harness.server().attributes or {}
    assert attributes["fhirwall.break_glass"] is True
    assert attributes["fhirwall.masking.profile"] == "safe-harbor"
    assert attributes["fhirwall.masking.values"] == 7
    assert attributes["fhirwall.decision.reasons"] == ("consent-withheld",)
    assert attributes["fhirwall.alerts"] == ("distinct-patients", "break-glass")


def test_optional_facts_are_left_out_when_unknown(harness: Harness) -> None:
    harness.telemetry.record(
        make_record(
            client_address=None,
            user_agent=None,
            resource_type=None,
            client_id=None,
            subject=None,
            scopes=(),
            purpose_of_use=(),
            patients=set(),
            resources=[],
            consent_ids=[],
        )
    )
    attributes = harness.server().attributes or {}
    for name in ("client.address", "user_agent.original", "fhir.resource_type", "fhirwall.client_id"):
        assert name not in attributes
    for name in (
        "enduser.pseudo.id",
        "fhirwall.scopes",
        "fhirwall.purpose_of_use",
        "fhirwall.masking.profile",
    ):
        assert name not in attributes
    assert attributes["fhirwall.patients.count"] == 0


def test_every_attribute_is_documented(build: Callable[..., Harness]) -> None:
    harness = build(KEY, include_phi=True, phi_hash_key_env="UNUSED")
    harness.telemetry.record(
        make_record(masking_profile="p", alerts=["a"], reasons=["r"], status=500, error_type="ProxyError")
    )
    harness.telemetry.record(make_record(method="BREW"))
    harness.telemetry.record(make_record(scheme="https"))
    used = {name for span in harness.spans() for name in (span.attributes or {})}
    assert used <= set(SPAN_ATTRIBUTES)
    assert set(SPAN_ATTRIBUTES) <= used


def test_alerts_are_span_events(harness: Harness) -> None:
    harness.telemetry.record(make_record(alerts=["distinct-patients", "break-glass"]))
    span = harness.server()
    assert [(event.name, dict(event.attributes or {})) for event in span.events] == [
        ("fhirwall.alert", {"fhirwall.alert.rule": "distinct-patients"}),
        ("fhirwall.alert", {"fhirwall.alert.rule": "break-glass"}),
    ]
    assert all(event.timestamp == span.end_time for event in span.events)


def test_stages_are_child_spans_with_their_own_times(harness: Harness) -> None:
    stages = [
        ("token", T0 + 0.001, T0 + 0.002),
        ("policy", T0 + 0.002, T0 + 0.003),
        ("consent", T0 + 0.003, T0 + 0.004),
        ("upstream", T0 + 0.004, T0 + 0.010),
        ("masking", T0 + 0.010, T0 + 0.012),
    ]
    harness.telemetry.record(make_record(stages=stages))
    server = harness.server()
    children = sorted((s for s in harness.spans() if s is not server), key=lambda s: s.start_time or 0)
    assert [(child.name, child.kind) for child in children] == [
        ("fhirwall.token", SpanKind.INTERNAL),
        ("fhirwall.policy", SpanKind.INTERNAL),
        ("fhirwall.consent", SpanKind.INTERNAL),
        ("fhirwall.upstream", SpanKind.CLIENT),
        ("fhirwall.masking", SpanKind.INTERNAL),
    ]
    server_context = server.get_span_context()
    assert server_context is not None
    for child, (_, started, ended) in zip(children, stages, strict=True):
        assert child.parent is not None
        assert child.parent.span_id == server_context.span_id
        assert child.parent.trace_id == server_context.trace_id
        assert (child.start_time, child.end_time) == (int(started * 1e9), int(ended * 1e9))
        assert not child.attributes


def test_an_unknown_stage_is_still_a_child_span(harness: Harness) -> None:
    harness.telemetry.record(make_record(stages=[("cache", T0, T0 + 0.001)]))
    assert {span.name for span in harness.spans()} == {"GET /Patient/{id}", "fhirwall.cache"}


def test_each_request_is_its_own_trace(harness: Harness) -> None:
    harness.telemetry.record(make_record(request_id="a"))
    harness.telemetry.record(make_record(request_id="b"))
    contexts = [span.get_span_context() for span in harness.spans()]
    assert len({context.trace_id for context in contexts if context is not None}) == 2


def test_the_scheme_and_an_incoming_traceparent_are_used_when_the_record_has_them(harness: Harness) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    harness.telemetry.record(make_record(scheme="https", traceparent=traceparent))
    span = harness.server()
    assert (span.attributes or {})["url.scheme"] == "https"
    context = span.get_span_context()
    assert context is not None
    assert span.parent is not None
    assert format(context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert format(span.parent.span_id, "016x") == "b7ad6b7169203331"


def test_a_record_without_duration_ends_now(harness: Harness) -> None:
    started = time.time()
    harness.telemetry.record(make_record(started=started, duration_ms=0.0))
    span = harness.server()
    assert span.start_time is not None
    assert span.end_time is not None
    assert span.start_time <= span.end_time <= time.time_ns()


def test_a_broken_record_is_logged_not_raised(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    broken = make_record(stages=[("token", "not a time", None)])
    with caplog.at_level(logging.ERROR, logger="fhirwall.audit.telemetry"):
        harness.telemetry.record(broken)
    assert "telemetry for request req-1 could not be recorded" in caplog.text


# PHI


def test_no_phi_leaves_by_default(harness: Harness) -> None:
    harness.telemetry.record(make_record(stages=[("upstream", T0, T0 + 0.001)], alerts=["distinct-patients"]))
    exported = everything(harness.spans()) + harness.reader.get_metrics_data().to_json()  # type: ignore[union-attr]
    for value in PHI:
        assert value not in exported
    attributes = harness.server().attributes or {}
    assert "fhirwall.patients.hashed" not in attributes
    assert "fhirwall.consent.ids" not in attributes
    assert "client.address" not in attributes  # a patient's IP address identifies them


def test_the_raw_path_and_query_never_appear(harness: Harness) -> None:
    harness.telemetry.record(make_record(route="unclassified", query=QUERY))
    assert QUERY not in everything(harness.spans())
    assert "?" not in everything(harness.spans())


def test_include_phi_adds_only_keyed_hashes(build: Callable[..., Harness]) -> None:
    harness = build(KEY, include_phi=True, phi_hash_key_env="UNUSED")
    harness.telemetry.record(make_record())
    attributes = harness.server().attributes or {}
    assert attributes["fhirwall.patients.hashed"] == tuple(sorted([hmac_hex(PATIENT_A), hmac_hex(PATIENT_B)]))
    assert attributes["fhirwall.consent.ids"] == (hmac_hex(CONSENT),)
    assert attributes["enduser.pseudo.id"] == hmac_hex(SUBJECT)
    assert attributes["client.address"] == hmac_hex("127.0.0.9")
    exported = everything(harness.spans())
    for value in PHI:
        assert value not in exported


def test_include_phi_needs_a_key() -> None:
    settings = TelemetrySettings(include_phi=True, phi_hash_key_env="X")
    with pytest.raises(ValueError, match="hash key"):
        Telemetry(settings, span_processor=SimpleSpanProcessor(InMemorySpanExporter()))


def test_the_user_pseudonym_without_a_key_is_stable_per_process_only(build: Callable[..., Harness]) -> None:
    first, second = build(), build()
    for harness in (first, second):
        harness.telemetry.record(make_record())
        harness.telemetry.record(make_record())
    pseudonyms = [(span.attributes or {})["enduser.pseudo.id"] for h in (first, second) for span in h.spans()]
    assert pseudonyms[0] == pseudonyms[1] != pseudonyms[2] == pseudonyms[3]
    assert all(len(str(p)) == 64 and SUBJECT not in str(p) for p in pseudonyms)


def test_the_user_pseudonym_with_a_key_is_its_hmac(build: Callable[..., Harness]) -> None:
    harness = build(KEY, phi_hash_key_env="UNUSED")
    harness.telemetry.record(make_record())
    assert (harness.server().attributes or {})["enduser.pseudo.id"] == hmac_hex(SUBJECT)
    assert "fhirwall.patients.hashed" not in (harness.server().attributes or {})


# metrics


def test_requests_are_counted_by_interaction_status_class_and_decision(harness: Harness) -> None:
    for status in (200, 200, 404, 503):
        harness.telemetry.record(make_record(status=status))
    harness.telemetry.record(make_record(interaction="search-type", status=403, decision=Decision.DENY))
    counts = {
        (
            p.attributes["fhir.interaction"],
            p.attributes["fhirwall.status_class"],
            p.attributes["fhirwall.decision"],
        ): p.value
        for p in harness.points("fhirwall.requests")
    }
    assert counts == {
        ("read", "2xx", "permit"): 2,
        ("read", "4xx", "permit"): 1,
        ("read", "5xx", "permit"): 1,
        ("search-type", "4xx", "deny"): 1,
    }


def test_denials_are_counted_by_first_reason(harness: Harness) -> None:
    harness.telemetry.record(make_record(status=403, decision=Decision.DENY, reasons=["forbidden", "x"]))
    harness.telemetry.record(make_record(status=403, decision=Decision.DENY, reasons=["forbidden"]))
    harness.telemetry.record(make_record(status=404, decision=Decision.DENY, reasons=["consent-withheld"]))
    harness.telemetry.record(make_record(status=401, decision=Decision.DENY))
    harness.telemetry.record(make_record(status=400, decision=Decision.NOT_EVALUATED, reasons=["invalid"]))
    counts = {p.attributes["fhirwall.decision.reason"]: p.value for p in harness.points("fhirwall.denials")}
    assert counts == {"forbidden": 2, "consent-withheld": 1, "none": 1}


def test_request_durations_are_a_seconds_histogram(harness: Harness) -> None:
    harness.telemetry.record(make_record(duration_ms=12.5))
    harness.telemetry.record(make_record(duration_ms=300.0))
    harness.telemetry.record(make_record(status=500, error_type="ProxyError", duration_ms=1.0))
    points = {
        p.attributes["http.response.status_code"]: p for p in harness.points("http.server.request.duration")
    }
    ok = points[200]
    assert dict(ok.attributes) == {
        "http.request.method": "GET",
        "http.route": "/Patient/{id}",
        "http.response.status_code": 200,
    }
    assert ok.count == 2
    assert ok.sum == pytest.approx(0.3125)
    assert tuple(ok.explicit_bounds) == DURATION_BUCKETS
    assert ok.bucket_counts[DURATION_BUCKETS.index(0.025)] == 1
    assert ok.bucket_counts[DURATION_BUCKETS.index(0.5)] == 1
    assert points[500].attributes["error.type"] == "ProxyError"


def test_masked_values_are_counted_by_profile(harness: Harness) -> None:
    harness.telemetry.record(make_record(masking_profile="safe-harbor", masked_values=5))
    harness.telemetry.record(make_record(masking_profile="safe-harbor", masked_values=2))
    harness.telemetry.record(make_record(masking_profile="research", masked_values=0))
    harness.telemetry.record(make_record())
    counts = {
        p.attributes["fhirwall.masking.profile"]: p.value for p in harness.points("fhirwall.masking.values")
    }
    assert counts == {"safe-harbor": 7, "research": 0}


def test_the_backlog_gauge_reads_the_registered_source(harness: Harness) -> None:
    assert harness.points("fhirwall.audit.backlog") == []
    backlog = [3]
    harness.telemetry.set_backlog_source(lambda: backlog[0])
    assert [p.value for p in harness.points("fhirwall.audit.backlog")] == [3]
    backlog[0] = 0
    assert [p.value for p in harness.points("fhirwall.audit.backlog")] == [0]


def test_a_failing_backlog_source_is_logged(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> int:
        raise RuntimeError("spool unreadable")

    harness.telemetry.set_backlog_source(broken)
    with caplog.at_level(logging.ERROR, logger="fhirwall.audit.telemetry"):
        assert harness.points("fhirwall.audit.backlog") == []
    assert "backlog source failed" in caplog.text


def test_metrics_only_and_spans_only(build: Callable[..., Harness]) -> None:
    reader = InMemoryMetricReader()
    metrics_only = Telemetry(TelemetrySettings(), metric_readers=[reader])
    metrics_only.record(make_record())
    metrics_only.shutdown()
    data = reader.get_metrics_data()
    assert data is not None
    assert data.resource_metrics
    exporter = InMemorySpanExporter()
    spans_only = Telemetry(TelemetrySettings(), span_processor=SimpleSpanProcessor(exporter))
    spans_only.record(make_record())
    spans_only.shutdown()
    assert len(exporter.get_finished_spans()) == 1


# settings and construction


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"exporter": "jsonl"}, "exporter jsonl needs jsonl_file"),
        ({"exporter": "console", "jsonl_file": "t.jsonl"}, "jsonl_file is only used by exporter jsonl"),
        ({"exporter": "console", "endpoint": "http://127.0.0.1:4318"}, "endpoint is only used by"),
        ({"exporter": "otlp-http", "endpoint": "127.0.0.1:4318"}, "absolute http(s) URL"),
        ({"exporter": "otlp-http", "endpoint": "http://h:4318/?x=1"}, "query or fragment"),
        ({"include_phi": True}, "include_phi needs phi_hash_key_env"),
        ({"metric_interval_seconds": 0}, "greater than 0"),
        ({"exporter": "zipkin"}, "Input should be"),
        ({"exporters": "none"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_settings_are_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        TelemetrySettings(**settings)
    assert message in str(caught.value)


def test_settings_are_frozen_and_the_endpoint_normalised() -> None:
    settings = TelemetrySettings(exporter="otlp-http", endpoint="http://127.0.0.1:4318/")
    assert settings.endpoint == "http://127.0.0.1:4318"
    with pytest.raises(ValidationError):
        settings.exporter = "none"  # type: ignore[misc]


def test_none_exports_nothing() -> None:
    telemetry = Telemetry.from_settings(TelemetrySettings(), environ={})
    assert not telemetry.enabled
    telemetry.record(make_record())
    telemetry.shutdown()


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({}, "environment variable FW_TEL_KEY is not set"),
        ({"FW_TEL_KEY": "short"}, "the key in FW_TEL_KEY must be at least 32 bytes"),
    ],
)
def test_a_missing_or_weak_key_stops_start_up(environ: dict[str, str], problem: str) -> None:
    settings = TelemetrySettings(exporter="console", include_phi=True, phi_hash_key_env="FW_TEL_KEY")
    with pytest.raises(ConfigError) as caught:
        Telemetry.from_settings(settings, environ=environ)
    assert caught.value.problems == [("audit.telemetry.phi_hash_key_env", problem)]


def test_a_missing_grpc_exporter_stops_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", None)
    with pytest.raises(ConfigError) as caught:
        Telemetry.from_settings(TelemetrySettings(exporter="otlp-grpc"), environ={})
    ((path, message),) = caught.value.problems
    assert path == "audit.telemetry.exporter"
    assert "opentelemetry-exporter-otlp-proto-grpc" in message


def test_the_grpc_exporter_is_built_when_installed() -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.grpc.trace_exporter")
    settings = TelemetrySettings(exporter="otlp-grpc", endpoint="http://127.0.0.1:9", metrics=False)
    telemetry = Telemetry.from_settings(settings, environ={})
    assert telemetry.enabled
    telemetry.shutdown(timeout_seconds=0.5)


def test_an_unwritable_jsonl_file_stops_start_up(tmp_path: Path) -> None:
    settings = TelemetrySettings(exporter="jsonl", jsonl_file=tmp_path / "missing" / "t.jsonl")
    with pytest.raises(ConfigError) as caught:
        Telemetry.from_settings(settings, environ={})
    assert caught.value.problems[0][0] == "audit.telemetry.jsonl_file"


def test_the_jsonl_exporter_appends_one_valid_object_per_span(tmp_path: Path) -> None:
    path = tmp_path / "telemetry.jsonl"
    path.write_bytes(b'{"earlier": true}\n')
    settings = TelemetrySettings(exporter="jsonl", jsonl_file=path, metric_interval_seconds=3600)
    telemetry = Telemetry.from_settings(settings, environ={})
    telemetry.record(make_record(stages=[("upstream", T0, T0 + 0.002)], alerts=["break-glass"]))
    telemetry.record(make_record(request_id="req-2", status=503, error_type="UpstreamUnavailableError"))
    telemetry.shutdown()
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert lines[0] == {"earlier": True}
    spans = [line for line in lines if line.get("signal") == "span"]
    metrics = [line for line in lines if line.get("signal") == "metrics"]
    assert sorted(span["name"] for span in spans) == [
        "GET /Patient/{id}",
        "GET /Patient/{id}",
        "fhirwall.upstream",
    ]
    first = next(
        s for s in spans if s["kind"] == "SERVER" and s["attributes"]["fhirwall.request_id"] == "req-1"
    )
    upstream = next(s for s in spans if s["name"] == "fhirwall.upstream")
    assert upstream["kind"] == "CLIENT"
    assert upstream["parent_span_id"] == first["span_id"]
    assert upstream["trace_id"] == first["trace_id"]
    assert len(first["trace_id"]) == 32
    assert len(first["span_id"]) == 16
    assert first["start_time_unix_nano"] == int(T0 * 1e9)
    assert first["attributes"]["fhirwall.scopes"] == ["patient/*.rs", "openid"]
    assert first["events"] == [
        {
            "name": "fhirwall.alert",
            "time_unix_nano": first["end_time_unix_nano"],
            "attributes": {"fhirwall.alert.rule": "break-glass"},
        }
    ]
    assert first["status"] == {"code": "UNSET", "description": None}
    failed = next(s for s in spans if s["attributes"].get("fhirwall.request_id") == "req-2")
    assert failed["status"]["code"] == "ERROR"
    assert first["resource"]["service.name"] == "fhirwall"
    assert metrics, "the final metric export is written at shutdown"
    names = {
        m["name"] for r in metrics[-1]["resource_metrics"] for s in r["scope_metrics"] for m in s["metrics"]
    }
    assert {"fhirwall.requests", "http.server.request.duration"} <= names
    text = path.read_text()
    for value in PHI:
        assert value not in text


def test_the_console_exporter_writes_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    telemetry = Telemetry.from_settings(TelemetrySettings(exporter="console", metrics=False), environ={})
    telemetry.record(make_record())
    telemetry.shutdown()
    out = capsys.readouterr().out
    assert '"name": "GET /Patient/{id}"' in out
    assert PATIENT_A not in out


def test_shutdown_is_idempotent_and_later_records_are_ignored(harness: Harness) -> None:
    harness.telemetry.shutdown()
    harness.telemetry.shutdown()
    harness.telemetry.record(make_record())
    assert harness.spans() == []


# resource


def service_name(**settings: Any) -> Any:
    exporter = InMemorySpanExporter()
    telemetry = Telemetry(TelemetrySettings(**settings), span_processor=SimpleSpanProcessor(exporter))
    telemetry.record(make_record())
    telemetry.shutdown()
    (span,) = exporter.get_finished_spans()
    return span.resource.attributes


def test_the_service_name_defaults_to_fhirwall(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    attributes = service_name()
    assert attributes["service.name"] == "fhirwall"
    assert attributes["telemetry.sdk.language"] == "python"


def test_otel_environment_variables_are_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "fhirwall-east")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test,service.namespace=ehr")
    attributes = service_name()
    assert attributes["service.name"] == "fhirwall-east"
    assert attributes["deployment.environment.name"] == "test"
    assert attributes["service.namespace"] == "ehr"


def test_a_configured_service_name_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    assert service_name(service_name="from-config")["service.name"] == "from-config"
    monkeypatch.delenv("OTEL_SERVICE_NAME")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attributes")
    assert service_name()["service.name"] == "from-attributes"

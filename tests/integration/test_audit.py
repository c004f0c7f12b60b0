"""The audit trail through the proxy: every request (permitted, denied, failed) leaves its record in the
hash-chained local log, written before the answer goes out, and the log gives its BALP AuditEvents."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from proxy.audit.chain import read_events, record_kind, verify_chain
from proxy.auth.dev_issuer import DevIssuer, load_or_create_key
from tests.conftest import RunningProxy, SeededUpstream, free_port, make_settings

AUDIT_KEY = "integration-audit-key"
DECISION = "https://fhirwall.org/fhir/StructureDefinition/audit-decision"
FHIR_JSON = {"content-type": "application/fhir+json"}


class AuditSetup:
    def __init__(self, proxy: RunningProxy, issuer: DevIssuer, log: Path) -> None:
        self.proxy = proxy
        self.issuer = issuer
        self.log = log

    def client(self, scope: str, patient: str | None = None, **claims: Any) -> httpx.Client:
        payload = {"sub": "user-1", "client_id": "audit-app", "scope": scope, **claims}
        if patient:
            payload["patient"] = patient
        token = self.issuer.mint(payload, audience=self.proxy.base_url)
        return self.proxy.client(headers={"authorization": f"Bearer {token}"})

    def events_for(self, request_id: str) -> list[dict[str, Any]]:
        return [event for event in read_events(self.log) if request_id in str(event)]


@pytest.fixture(scope="module")
def audit(upstream: SeededUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuditSetup]:
    folder = tmp_path_factory.mktemp("audit")
    log = folder / "audit.jsonl"
    port = free_port()
    issuer_url = f"http://127.0.0.1:{port}/_dev"
    settings = make_settings(
        upstream.base_url,
        **{
            "server.port": port,
            "auth.dev_issuer.enabled": True,
            "auth.dev_issuer.key_file": str(folder / "key.pem"),
            "auth.dev_issuer.issuer": issuer_url,
            "audit.log_file": str(log),
            "audit.log_key_env": "FHIRWALL_TEST_AUDIT_KEY",
            "audit.checkpoint_every": 5,
            "audit.alerts": {"distinct_patients": 2, "window_minutes": 5},
        },
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FHIRWALL_TEST_AUDIT_KEY", AUDIT_KEY)
        proxy = RunningProxy(settings).start()
    yield AuditSetup(proxy, DevIssuer(load_or_create_key(folder / "key.pem"), issuer_url), log)
    proxy.stop()


def decision(event: dict[str, Any]) -> str:
    return str(next(e["valueCode"] for e in event.get("extension", []) if e["url"] == DECISION))


def subtype(event: dict[str, Any]) -> str:
    return str(event["subtype"][0]["code"])


def patients(event: dict[str, Any]) -> set[str]:
    return {
        entity["what"]["reference"]
        for entity in event.get("entity", [])
        if entity.get("type", {}).get("code") == "1"
    }


def request_id(response: httpx.Response) -> str:
    return response.headers["x-request-id"]


def test_a_permitted_read_is_recorded(audit: AuditSetup, upstream: SeededUpstream) -> None:
    patient = next(iter(upstream.by_patient))
    with audit.client("patient/*.rs", patient) as client:
        response = client.get(f"/Patient/{patient}")
    assert response.status_code == 200
    [event] = audit.events_for(request_id(response))
    assert (subtype(event), event["action"], event["outcome"], decision(event)) == (
        "read",
        "R",
        "0",
        "permit",
    )
    assert patients(event) == {f"Patient/{patient}"}


def test_a_search_gives_one_event_per_patient_touched(audit: AuditSetup, upstream: SeededUpstream) -> None:
    with audit.client("system/*.rs") as client:
        response = client.get("/Patient", params={"_count": "3"})
    assert response.status_code == 200
    touched = {f"Patient/{e['resource']['id']}" for e in response.json()["entry"]}
    events = audit.events_for(request_id(response))
    assert len(events) == len(touched) == 3
    assert set().union(*(patients(event) for event in events)) == touched
    assert len({event["id"] for event in events}) == 3


def test_denials_and_failures_are_recorded(audit: AuditSetup, upstream: SeededUpstream) -> None:
    patient_a, patient_b = list(upstream.by_patient)[:2]
    with audit.client("patient/*.rs", patient_a) as client:
        hidden = client.get(f"/Patient/{patient_b}")
        forbidden = client.post("/Patient", json={"resourceType": "Patient"}, headers=FHIR_JSON)
    unauthenticated = audit.proxy.client().get(f"/Patient/{patient_a}")
    for response, status in ((hidden, 404), (forbidden, 403), (unauthenticated, 401)):
        assert response.status_code == status
        [event] = [e for e in audit.events_for(request_id(response)) if e["type"]["code"] == "rest"]
        assert event["outcome"] == "4"
        assert decision(event) == "deny"


def test_the_log_verifies_and_holds_no_duplicates(audit: AuditSetup) -> None:
    with audit.client("system/*.rs") as client:
        for _ in range(7):
            client.get("/Observation", params={"_count": "1", "_id": uuid.uuid4().hex})
    report = verify_chain(audit.log, key=AUDIT_KEY.encode())
    assert report.ok, report.problems
    ids = [event["id"] for event in read_events(audit.log)]
    assert len(ids) == len(set(ids))
    lines = [orjson.loads(line) for line in audit.log.read_bytes().splitlines()]
    kinds = {record_kind(line) for line in lines if "checkpoint" not in line}
    assert kinds == {"request"}  # one request record per request, its AuditEvents made when read
    assert report.records == len(lines) - report.checkpoints <= len(ids)


def test_touching_many_patients_raises_an_alert(audit: AuditSetup, caplog: pytest.LogCaptureFixture) -> None:
    token_claims = {"sub": "curious-" + uuid.uuid4().hex[:6]}
    with (
        caplog.at_level("WARNING", logger="fhirwall.alert"),
        audit.client("system/*.rs", **token_claims) as client,
    ):
        first = client.get("/Patient", params={"_count": "2"})
        second = client.get("/Patient", params={"_count": "3"})
    assert first.status_code == second.status_code == 200
    alerts = [r for r in caplog.records if r.name == "fhirwall.alert"]
    assert len(alerts) == 1
    assert request_id(second) in alerts[0].getMessage()
    for entry in second.json()["entry"]:
        assert entry["resource"]["id"] not in alerts[0].getMessage()


def delivery_proxy(
    upstream: SeededUpstream, folder: Path, delivery: dict[str, Any]
) -> tuple[RunningProxy, AuditSetup, int]:
    """A proxy delivering its log's AuditEvents as ``delivery`` says (the key env var must be set)."""
    port = free_port()
    issuer_url = f"http://127.0.0.1:{port}/_dev"
    settings = make_settings(
        upstream.base_url,
        **{
            "server.port": port,
            "auth.dev_issuer.enabled": True,
            "auth.dev_issuer.key_file": str(folder / "key.pem"),
            "auth.dev_issuer.issuer": issuer_url,
            "audit.log_file": str(folder / "audit.jsonl"),
            "audit.log_key_env": "FHIRWALL_TEST_AUDIT_KEY",
            "audit.delivery": delivery,
        },
    )
    proxy = RunningProxy(settings).start()
    issuer = DevIssuer(load_or_create_key(folder / "key.pem"), issuer_url)
    return proxy, AuditSetup(proxy, issuer, folder / "audit.jsonl"), port


def test_audit_events_are_delivered_to_the_audit_server(
    upstream: SeededUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FHIRWALL_TEST_AUDIT_KEY", AUDIT_KEY)
    delivery = {"target": "fhir", "url": upstream.base_url, "batch_size": 10}
    proxy, setup, port = delivery_proxy(upstream, tmp_path, delivery)
    try:
        with setup.client("system/*.rs") as client:
            ids = [request_id(client.get("/Observation", params={"_count": "1"})) for _ in range(3)]
        logged = {event["id"] for event in read_events(tmp_path / "audit.jsonl")}
        deadline = time.monotonic() + 15
        arrived: set[str] = set()
        while time.monotonic() < deadline and not logged <= arrived:
            time.sleep(0.2)
            arrived = {
                i for i in logged if httpx.get(f"{upstream.base_url}/AuditEvent/{i}").status_code == 200
            }
        assert logged <= arrived
        assert len(logged) >= len(ids)
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).json()
        assert ready["checks"]["audit-delivery"] == "ok"
    finally:
        proxy.stop()


def test_audit_events_are_delivered_by_a_child_process(
    upstream: SeededUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FHIRWALL_TEST_AUDIT_KEY", AUDIT_KEY)
    delivered = tmp_path / "delivered.jsonl"
    delivery = {"target": "file", "file": str(delivered), "runner": "process"}
    proxy, setup, port = delivery_proxy(upstream, tmp_path, delivery)
    try:
        with setup.client("system/*.rs") as client:
            for _ in range(5):
                assert client.get("/Observation", params={"_count": "1"}).status_code == 200
        logged = [event["id"] for event in read_events(tmp_path / "audit.jsonl")]
        deadline = time.monotonic() + 20
        arrived: list[str] = []
        while time.monotonic() < deadline and arrived != logged:
            time.sleep(0.1)
            lines = delivered.read_bytes().splitlines() if delivered.exists() else []
            arrived = [orjson.loads(line)["id"] for line in lines]
        assert arrived == logged
        assert len(logged) >= 5
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).json()
        assert ready["checks"]["audit-delivery"] == "ok"
    finally:
        proxy.stop()

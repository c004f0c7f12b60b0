"""ACCEPTANCE: audit delivery through an outage of a real audit server, nothing lost, nothing duplicated.

A sekmet FHIR R4 server (its own process, port and data directory, so it can be stopped and started again) is
the audit server. The proxy's hash-chained log is written the way the audit trail writes it (one request
record per ``AuditRecord``, ``notify`` after each append) while ``AuditDelivery`` makes their BALP AuditEvents
and ships them: a first burst while the server is up, a second burst of ``OUTAGE_RECORDS`` while it is down
(delivery keeps retrying, the backlog grows), then the server comes back and the backlog drains. The server
must then hold exactly the log's AuditEvents, each in a single version (type-level ``_history``), written in
the log's order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from proxy.audit.balp import ObserverInfo, audit_events
from proxy.audit.chain import AuditChainWriter, read_events
from proxy.audit.delivery import AuditDelivery, DeliverySettings
from proxy.audit.entry import request_entry
from proxy.audit.record import AuditRecord, Decision
from proxy.embedded_upstream import EmbeddedUpstream
from tests.conftest import free_port

KEY = b"acceptance-audit-key-0123456789"
OBSERVER = ObserverInfo(name="fhirwall-acceptance", site="ci", url="http://127.0.0.1:8080/fhir")
OUTAGE_RECORDS = 25
REQUEST_ID_SYSTEM = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"


def first_burst_records(started: float) -> list[AuditRecord]:
    """Realistic traffic: reads, a patient search (one event per patient), a write, a consent denial
    (REST event + Security Alert), a break-glass read (REST event + Security Alert)."""
    records = []
    for n in range(12):
        common: dict[str, Any] = {
            "request_id": f"burst1-{n:03d}",
            "started": started + n * 0.01,
            "client_address": "10.1.2.3",
            "client_id": "ehr-app",
            "subject": "dr-who",
            "fhir_user": "Practitioner/dr-who",
            "issuer": "https://idp.example.org",
            "roles": ("physician",),
            "purpose_of_use": ("TREAT",),
            "token_id": f"jti-{n}",
        }
        kind = n % 4
        if kind == 0:
            record = AuditRecord(
                method="GET",
                route="/Patient/{id}",
                interaction="read",
                resource_type="Patient",
                resource_id=f"pat-{n}",
                status=200,
                decision=Decision.PERMIT,
                patients={f"pat-{n}"},
                **common,
            )
        elif kind == 1:
            record = AuditRecord(
                method="GET",
                route="/Observation",
                interaction="search-type",
                resource_type="Observation",
                query="code=8867-4&_count=50",
                status=200,
                decision=Decision.PERMIT,
                patients={f"pat-{n}", f"pat-{n + 100}", f"pat-{n + 200}"},
                resources=[f"Observation/obs-{n}-{i}" for i in range(5)],
                **common,
            )
        elif kind == 2:
            record = AuditRecord(
                method="POST",
                route="/Observation",
                interaction="create",
                resource_type="Observation",
                status=403,
                decision=Decision.DENY,
                reasons=["consent: patient opted out"],
                error_type="ConsentDeniedError",
                consent_ids=[f"consent-{n}"],
                patients={f"pat-{n}"},
                **common,
            )
        else:
            record = AuditRecord(
                method="GET",
                route="/Patient/{id}",
                interaction="read",
                resource_type="Patient",
                resource_id=f"pat-{n}",
                status=200,
                decision=Decision.PERMIT,
                break_glass=True,
                masking_profile="research",
                masked_values=7,
                patients={f"pat-{n}"},
                **common,
            )
        record.duration_ms = 12.5
        records.append(record)
    return records


def outage_records(started: float) -> list[AuditRecord]:
    """``OUTAGE_RECORDS`` reads, one AuditEvent each."""
    return [
        AuditRecord(
            request_id=f"outage-{n:03d}",
            method="GET",
            route="/Patient/{id}",
            interaction="read",
            started=started + n * 0.01,
            resource_type="Patient",
            resource_id=f"pat-{n}",
            client_address="10.1.2.3",
            client_id="ehr-app",
            subject="dr-who",
            status=200,
            decision=Decision.PERMIT,
            patients={f"pat-{n}"},
        )
        for n in range(OUTAGE_RECORDS)
    ]


def submit(writer: AuditChainWriter, delivery: AuditDelivery, record: AuditRecord) -> int:
    """What the audit trail does for one request: append its record, then notify the delivery."""
    seq = writer.append_request(request_entry(record, OBSERVER))
    delivery.notify(seq)
    return seq


async def wait_until(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {within} s: {what}")
        await asyncio.sleep(0.02)


def request_id(event: dict[str, Any]) -> str:
    for entity in event.get("entity", []):
        if entity.get("type", {}).get("system") == REQUEST_ID_SYSTEM:
            value: str = entity["what"]["identifier"]["value"]
            return value
    raise AssertionError("an AuditEvent without its request id")


def test_audit_events_survive_an_audit_server_outage(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    data_dir = tmp_path / "audit-server"
    data_dir.mkdir()
    server = EmbeddedUpstream(free_port(), data_dir=data_dir)
    settings = DeliverySettings(
        target="fhir",
        url=server.base_url,
        batch_size=100,
        retry_initial_seconds=0.1,
        retry_max_seconds=1.0,
        drain_timeout_seconds=10.0,
    )
    server.start()
    try:
        asyncio.run(_outage_scenario(server, log, settings))
    finally:
        server.stop()
    _check_the_audit_server(server, log)


async def _outage_scenario(server: EmbeddedUpstream, log: Path, settings: DeliverySettings) -> None:
    started = time.time()
    with AuditChainWriter(log, key=KEY, checkpoint_every=10, fsync="interval") as writer:
        delivery = AuditDelivery(log, settings, key=KEY)
        await delivery.start()
        try:
            # 1. the audit server is up: the first burst is delivered as it is written
            burst = first_burst_records(started)
            for record in burst:
                submit(writer, delivery, record)
            first_burst = writer.seq
            assert first_burst == len(burst)  # one record per request
            burst_events = sum(len(audit_events(record, observer=OBSERVER)) for record in burst)
            assert burst_events > first_burst  # searches and alerts make several events
            await wait_until(lambda: delivery.backlog == 0, 10, "the first burst delivered")
            assert delivery.delivered_seq == first_burst
            assert delivery.status().delivered_events == burst_events

            # 2. the audit server goes down; the proxy keeps writing its log
            await asyncio.to_thread(server.stop)
            for record in outage_records(started + 1):
                submit(writer, delivery, record)
            assert writer.seq == first_burst + OUTAGE_RECORDS
            await wait_until(
                lambda: delivery.status().failed_attempts >= 3, 10, "delivery retrying against the outage"
            )
            status = delivery.status()
            assert status.backlog == OUTAGE_RECORDS
            assert status.delivered_seq == first_burst
            assert status.state == "retrying"
            assert status.dead_letters == 0

            # 3. the audit server comes back on the same port and data: the backlog drains by itself
            await asyncio.to_thread(server.start)
            await wait_until(lambda: delivery.backlog == 0, 15, "the outage backlog drained")
            assert delivery.delivered_seq == writer.seq
            assert delivery.status().delivered_events == burst_events + OUTAGE_RECORDS
            assert delivery.status().last_error is None
        finally:
            await delivery.stop()

    # 4. a restart resumes from the cursor: nothing is sent again
    again = AuditDelivery(log, settings, key=KEY)
    await again.start()
    assert again.backlog == 0
    await asyncio.sleep(0.2)
    await again.stop()
    assert again.status().delivered_events == 0


def _check_the_audit_server(server: EmbeddedUpstream, log: Path) -> None:
    events = list(read_events(log))
    logged_ids = [event["id"] for event in events]
    assert len(set(logged_ids)) == len(logged_ids)
    outage_ids = [event["id"] for event in events if request_id(event).startswith("outage-")]
    assert len(outage_ids) == OUTAGE_RECORDS

    server.start()  # read back what the audit server holds (same data directory)
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            search = http.get("/AuditEvent", params={"_count": 1000}).json()
            history = http.get("/AuditEvent/_history", params={"_count": 1000}).json()
            stored = http.get(f"/AuditEvent/{outage_ids[-1]}").json()
    finally:
        server.stop()

    # exactly the log's AuditEvents, the outage burst included
    found = [entry["resource"]["id"] for entry in search["entry"]]
    assert search["total"] == len(events)
    assert sorted(found) == sorted(logged_ids)
    assert set(outage_ids) <= set(found)

    # none duplicated: one version each (this server writes a new version for every PUT it receives)
    assert history["total"] == len(events)
    assert [entry["response"]["etag"] for entry in history["entry"]] == ['W/"1"'] * len(events)

    # in order: the server's write order (history is newest first) is the log's order
    written = [entry["resource"]["id"] for entry in reversed(history["entry"])]
    assert written == logged_ids
    recorded = [event["recorded"] for event in events]
    assert recorded == sorted(recorded)

    # delivered as written: the stored resource is the logged AuditEvent (plus the server's meta)
    stored.pop("meta")
    assert stored == events[-1]

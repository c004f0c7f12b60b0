"""Durable audit delivery: the chained log as spool, delivered in order to a real local HTTP audit endpoint.

The endpoint (``FakeAuditServer``) is a small Starlette app served by uvicorn in a thread; tests switch it
between answering, failing (500, 429, 401) and being down (no listener on its port), and make it reject
chosen AuditEvents. The log is a real ``AuditChainWriter`` file holding request records (the entries of
``AuditRecord``s, as the audit trail writes them), whose BALP AuditEvents the delivery makes and ships.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pydantic
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy.audit.balp import ObserverInfo, audit_events
from proxy.audit.chain import AuditChainWriter, canonical, read_events, record_hash
from proxy.audit.delivery import (
    AuditBacklogFullError,
    AuditDelivery,
    AuditDeliveryError,
    DeliverySettings,
)
from proxy.audit.entry import request_entry
from proxy.audit.record import AuditRecord
from tests.conftest import free_port
from tests.threaded_server import ThreadedServer

KEY = b"delivery-test-key-0123456789abcdef"
OBSERVER = ObserverInfo(name="fhirwall-test", site="unit")
FHIR_JSON = "application/fhir+json"

# -- a local audit server the tests control ----------------------------------------------------------------


@dataclass
class AuditStore:
    """What the fake audit server holds and how it behaves (shared with the server thread)."""

    mode: str = "ok"  # ok | 500 | 429 | 401
    reject: set[str] = field(default_factory=set)  # ids answered 400 (per entry or per PUT)
    fail_once: set[str] = field(default_factory=set)  # ids answered 500 (per entry) the first time
    refuse_batches_with_rejects: bool = False  # 400 for a whole batch holding a rejected id
    versions: dict[str, int] = field(default_factory=dict)
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    writes: list[str] = field(default_factory=list)  # ids in the order they were written
    requests: list[tuple[str, int]] = field(default_factory=list)  # (method, entries) per request
    failed_requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def write(self, resource: dict[str, Any]) -> int:
        with self.lock:
            rid = resource["id"]
            self.versions[rid] = self.versions.get(rid, 0) + 1
            self.resources[rid] = resource
            self.writes.append(rid)
            return 201 if self.versions[rid] == 1 else 200


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers=headers, media_type=FHIR_JSON)


def _outcome(code: str, text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }


class FakeAuditServer:
    """``/fhir`` (batch) and ``/fhir/AuditEvent/{id}`` (PUT) on 127.0.0.1:``port``; ``down()``/``up()``."""

    def __init__(self, store: AuditStore | None = None, port: int | None = None) -> None:
        self.store = store or AuditStore()
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/fhir"
        self._app = Starlette(
            routes=[
                Route("/fhir", self._batch, methods=["POST"]),
                Route("/fhir/AuditEvent/{id}", self._put, methods=["PUT"]),
            ]
        )
        self._server: ThreadedServer | None = None

    def up(self) -> FakeAuditServer:
        config = uvicorn.Config(self._app, host="127.0.0.1", port=self.port, log_level="error")
        self._server = ThreadedServer(config)
        self._server.start_serving()
        return self

    def down(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def _failure(self) -> Response | None:
        store = self.store
        if store.mode == "ok":
            return None
        with store.lock:
            store.failed_requests += 1
        if store.mode == "429":
            return _json(429, _outcome("throttled", "slow down"), {"retry-after": "0"})
        if store.mode == "401":
            return _json(401, _outcome("login", "who are you"))
        return _json(500, _outcome("exception", "boom"))

    async def _put(self, request: Request) -> Response:
        self.store.requests.append(("PUT", 1))
        if (failure := self._failure()) is not None:
            return failure
        resource = orjson.loads(await request.body())
        if resource.get("id") in self.store.reject:
            return _json(400, _outcome("invalid", "rejected"))
        status = self.store.write(resource)
        return Response(b"", status)

    async def _batch(self, request: Request) -> Response:
        bundle = orjson.loads(await request.body())
        entries = bundle["entry"]
        self.store.requests.append(("POST", len(entries)))
        if (failure := self._failure()) is not None:
            return failure
        assert bundle["type"] == "batch"
        ids = [entry["resource"]["id"] for entry in entries]
        if self.store.refuse_batches_with_rejects and self.store.reject & set(ids):
            return _json(400, _outcome("invalid", "bad bundle"))
        answers = []
        for entry in entries:
            assert entry["request"] == {"method": "PUT", "url": f"AuditEvent/{entry['resource']['id']}"}
            rid = entry["resource"]["id"]
            if rid in self.store.reject:
                answers.append(
                    {"response": {"status": "400 Bad Request", "outcome": _outcome("invalid", "no")}}
                )
            elif rid in self.store.fail_once:
                self.store.fail_once.discard(rid)
                answers.append({"response": {"status": "500 Internal Server Error"}})
            else:
                status = self.store.write(entry["resource"])
                answers.append({"response": {"status": "201 Created" if status == 201 else "200 OK"}})
        return _json(200, {"resourceType": "Bundle", "type": "batch-response", "entry": answers})


@pytest.fixture
def server() -> Iterator[FakeAuditServer]:
    running = FakeAuditServer().up()
    yield running
    running.down()


# -- helpers -----------------------------------------------------------------------------------------------


def make_records(count: int, start: int = 0) -> list[AuditRecord]:
    """``count`` reads (one AuditEvent each), request ids ``req-<n>``."""
    return [
        AuditRecord(
            request_id=f"req-{n:05d}",
            method="GET",
            route="/Patient/{id}",
            interaction="read",
            started=1_700_000_000 + n,
            resource_type="Patient",
            resource_id=f"p{n % 7}",
            client_address="10.0.0.1",
            status=200,
            decision="permit",
            client_id="unit-app",
            subject="user-1",
            patients={f"p{n % 7}"},
        )
        for n in range(start, start + count)
    ]


def make_search(n: int, patients: int) -> AuditRecord:
    """A search touching ``patients`` patients: that many AuditEvents from one record."""
    return AuditRecord(
        request_id=f"search-{n:05d}",
        method="GET",
        route="/Observation",
        interaction="search-type",
        started=1_700_000_000 + n,
        resource_type="Observation",
        query="code=8867-4",
        client_address="10.0.0.1",
        status=200,
        decision="permit",
        client_id="unit-app",
        subject="user-1",
        patients={f"p{n}-{k}" for k in range(patients)},
    )


def events_of(records: list[AuditRecord]) -> list[dict[str, Any]]:
    """The BALP AuditEvents of the records, in order."""
    return [event for record in records for event in audit_events(record, observer=OBSERVER)]


def append(writer: AuditChainWriter, record: AuditRecord) -> int:
    """What the audit trail does for one request."""
    return writer.append_request(request_entry(record, OBSERVER))


def write_log(path: Path, records: list[AuditRecord], **kwargs: Any) -> list[int]:
    with AuditChainWriter(path, key=KEY, fsync="never", **kwargs) as writer:
        return [append(writer, record) for record in records]


def settings(url: str, **overrides: Any) -> DeliverySettings:
    values: dict[str, Any] = {
        "target": "fhir",
        "url": url,
        "batch_size": 100,
        "retry_initial_seconds": 0.02,
        "retry_max_seconds": 0.1,
        "drain_timeout_seconds": 5.0,
    }
    values.update(overrides)
    return DeliverySettings(**values)


async def wait_until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


def ids(events: list[dict[str, Any]]) -> list[str]:
    return [event["id"] for event in events]


def cursor_at_first_failure(server: FakeAuditServer, log: Path) -> int:
    """Deliver ``log`` in batches of 10 with slow retries; the cursor's seq when the first attempt had failed
    (then everything is delivered)."""
    cursors: list[int] = []

    async def main() -> None:
        options = {"batch_size": 10, "retry_initial_seconds": 0.5, "retry_max_seconds": 0.5}
        delivery = AuditDelivery(log, settings(server.url, **options))
        await delivery.start()
        await wait_until(lambda: delivery.status().failed_attempts >= 1)
        cursors.append(delivery.delivered_seq)
        await wait_until(lambda: delivery.backlog == 0)
        await delivery.stop()

    run(main)
    return cursors[0]


def cursor_seq(log: Path) -> int:
    seq: int = orjson.loads(log.with_name(log.name + ".cursor").read_bytes())["seq"]
    return seq


# -- settings ----------------------------------------------------------------------------------------------


def test_settings_validation() -> None:
    assert not DeliverySettings().enabled
    with pytest.raises(pydantic.ValidationError, match=r"needs audit\.delivery\.url"):
        DeliverySettings(target="fhir")
    with pytest.raises(pydantic.ValidationError, match=r"needs audit\.delivery\.file"):
        DeliverySettings(target="file")
    with pytest.raises(pydantic.ValidationError, match="http"):
        DeliverySettings(target="fhir", url="ftp://example.org/fhir")
    with pytest.raises(pydantic.ValidationError, match="extra"):
        DeliverySettings(target="fhir", url="http://x/fhir", bogus=1)  # type: ignore[call-arg]
    with pytest.raises(pydantic.ValidationError, match="retry_max_seconds"):
        DeliverySettings(target="fhir", url="http://x/fhir", retry_initial_seconds=5, retry_max_seconds=1)
    assert DeliverySettings(target="fhir", url="http://x/fhir/").url == "http://x/fhir"
    with pytest.raises(ValueError, match="not enabled"):
        AuditDelivery(Path("log"), DeliverySettings())


# -- ordering, batching, cursor ----------------------------------------------------------------------------


def test_delivers_in_order_in_batches_and_persists_the_cursor(
    server: FakeAuditServer, tmp_path: Path
) -> None:
    log = tmp_path / "audit.jsonl"
    records = make_records(250)
    events = events_of(records)
    write_log(log, records)

    async def main() -> None:
        delivery = AuditDelivery(log, settings(server.url))
        await delivery.start()
        assert delivery.backlog == 250
        await wait_until(lambda: delivery.backlog == 0)
        await delivery.stop()
        status = delivery.status()
        assert (status.delivered_seq, status.delivered_events, status.state) == (250, 250, "stopped")

    run(main)
    assert server.store.writes == ids(events)
    assert server.store.requests == [("POST", 100), ("POST", 100), ("POST", 50)]
    assert set(server.store.versions.values()) == {1}
    assert server.store.resources[events[7]["id"]] == events[7]
    cursor = orjson.loads((tmp_path / "audit.jsonl.cursor").read_bytes())
    assert cursor["seq"] == 250
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file
    assert os.stat(tmp_path / "audit.jsonl.cursor").st_mode & 0o077 == 0


def test_batch_size_one_puts_each_event(server: FakeAuditServer, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    records = make_records(5)
    events = events_of(records)
    write_log(log, records)

    async def main() -> None:
        delivery = AuditDelivery(log, settings(server.url, batch_size=1))
        await delivery.start()
        await wait_until(lambda: delivery.backlog == 0)
        await delivery.stop()

    run(main)
    assert server.store.requests == [("PUT", 1)] * 5
    assert server.store.writes == ids(events)


def test_notify_wakes_the_delivery_for_records_appended_while_running(
    server: FakeAuditServer, tmp_path: Path
) -> None:
    log = tmp_path / "audit.jsonl"
    records = make_records(30)
    events = events_of(records)

    async def main() -> None:
        with AuditChainWriter(log, key=KEY, fsync="never") as writer:
            delivery = AuditDelivery(log, settings(server.url))
            await delivery.start()
            for start in range(0, 30, 10):
                for record in records[start : start + 10]:
                    delivery.notify(append(writer, record))
                # woken by notify, well before the idle poll (1 s) would have found them
                await wait_until(lambda: delivery.backlog == 0, within=0.5)
            await delivery.stop()

    run(main)
    assert server.store.writes == ids(events)


def test_records_arriving_one_by_one_wait_for_a_batch_to_fill(
    server: FakeAuditServer, tmp_path: Path
) -> None:
    log = tmp_path / "audit.jsonl"
    records = make_records(12)
    events = events_of(records)
    linger = 5.0

    async def main() -> None:
        with AuditChainWriter(log, key=KEY, fsync="never") as writer:
            delivery = AuditDelivery(log, settings(server.url, batch_size=10, linger_seconds=linger))
            await delivery.start()
            for record in records[:6]:  # one request at a time, as a proxy under light load appends them
                delivery.notify(append(writer, record))
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)
            assert server.store.requests == []  # waiting for the batch to fill
            for record in records[6:]:
                delivery.notify(append(writer, record))
            # the batch is full: it goes at once, not when the linger ends
            await wait_until(lambda: len(server.store.requests) == 1, within=linger / 2)
            started = time.monotonic()
            await delivery.stop()  # the last two go now: stopping cuts the linger short
            assert time.monotonic() - started < linger / 2

    run(main)
    assert server.store.writes == ids(events)
    assert [entries for _, entries in server.store.requests] == [10, 2]


def test_resumes_from_the_cursor_after_a_restart(server: FakeAuditServer, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    first, second = make_records(40), make_records(15, start=40)

    async def deliver_all() -> None:
        delivery = AuditDelivery(log, settings(server.url, batch_size=16))
        await delivery.start()
        await wait_until(lambda: delivery.backlog == 0)
        await delivery.stop()

    with AuditChainWriter(log, key=KEY, fsync="never", checkpoint_every=7) as writer:
        for record in first:
            append(writer, record)
        run(deliver_all)
        for record in second:
            append(writer, record)
    run(deliver_all)  # a new process: resumes at seq 40, across checkpoint lines
    assert server.store.writes == ids(events_of(first + second))
    assert set(server.store.versions.values()) == {1}  # nothing sent twice
    assert cursor_seq(log) == 55


def test_a_lost_cursor_update_resends_with_the_same_ids(server: FakeAuditServer, tmp_path: Path) -> None:
    """At-least-once: a crash after the server confirmed but before the cursor was saved resends the
    records, under the same ids (one resource each; this server counts the versions)."""
    log = tmp_path / "audit.jsonl"
    records = make_records(10)
    events = events_of(records)
    write_log(log, records)
    cursor = log.with_name(log.name + ".cursor")

    async def deliver_all() -> None:
        delivery = AuditDelivery(log, settings(server.url, batch_size=5))
        await delivery.start()
        await wait_until(lambda: delivery.backlog == 0)
        await delivery.stop()

    run(deliver_all)
    saved = cursor.read_bytes()
    run(deliver_all)
    assert cursor.read_bytes() == saved
    assert len(server.store.writes) == 10
    cursor.write_bytes(saved.replace(b'"seq":10', b'"seq":5'))  # pretend the last save was lost
    with pytest.raises(AuditDeliveryError):  # ...but not with offsets of another record
        run(deliver_all)
    first_five_cursor: dict[str, Any] = {"seq": 5}
    with log.open("rb") as file:
        lines = [line for line in file if line.startswith(b'{"seq":')]
    first_five_cursor["hash"] = orjson.loads(lines[4])["hash"]
    first_five_cursor["start"] = sum(len(line) for line in lines[:4])
    first_five_cursor["end"] = sum(len(line) for line in lines[:5])
    cursor.write_bytes(orjson.dumps(first_five_cursor))
    run(deliver_all)
    assert server.store.writes == ids(events) + ids(events[5:])
    assert sorted(server.store.resources) == sorted(ids(events))


def test_a_cursor_that_does_not_match_the_log_refuses_to_start(
    server: FakeAuditServer, tmp_path: Path
) -> None:
    log = tmp_path / "audit.jsonl"
    write_log(log, make_records(5))

    async def deliver_all() -> None:
        delivery = AuditDelivery(log, settings(server.url))
        await delivery.start()
        await wait_until(lambda: delivery.backlog == 0)
        await delivery.stop()

    run(deliver_all)
    log.rename(tmp_path / "old.jsonl")
    write_log(log, make_records(3, start=100))  # a new log in its place, the old cursor left behind
    with pytest.raises(AuditDeliveryError, match="not there"):
        run(deliver_all)
    (tmp_path / "audit.jsonl.cursor").write_text("{not json")
    with pytest.raises(AuditDeliveryError, match="cannot read"):
        run(deliver_all)
    (tmp_path / "audit.jsonl.cursor").unlink()
    run(deliver_all)  # without a cursor the new log is delivered from its start
    assert server.store.writes[-3:] == ids(events_of(make_records(3, start=100)))


# -- outages and failures ----------------------------------------------------------------------------------


def test_outage_500_then_recovery_delivers_everything_once(server: FakeAuditServer, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    records = make_records(20)
    events = events_of(records)
    write_log(log, records)
    server.store.mode = "500"

    async def main() -> None:
        delivery = AuditDelivery(log, settings(server.url, batch_size=8))
        await delivery.start()
        await wait_until(lambda: server.store.failed_requests >= 3)
        assert delivery.backlog == 20
        status = delivery.status()
        assert status.state == "retrying"
        assert status.last_error == "HTTP 500"
        server.store.mode = "ok"
        await wait_until(lambda: delivery.backlog == 0)
        assert delivery.status().last_error is None
        await delivery.stop()

    run(main)
    assert server.store.writes == ids(events)


def test_connection_refused_then_server_comes_up(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    records = make_records(12)
    events = events_of(records)
    write_log(log, records)
    server = FakeAuditServer()  # not listening yet

    async def main() -> None:
        delivery = AuditDelivery(log, settings(server.url, batch_size=5))
        await delivery.start()
        await wait_until(lambda: delivery.status().failed_attempts >= 3)
        assert "ConnectError" in (delivery.status().last_error or "")
        assert delivery.backlog == 12
        await asyncio.to_thread(server.up)
        try:
            await wait_until(lambda: delivery.backlog == 0)
            await delivery.stop()
        finally:
            await asyncio.to_thread(server.down)

    run(main)
    assert server.store.writes == ids(events)


@pytest.mark.parametrize("mode", ["429", "401"])
def test_throttling_and_auth_failures_are_retried_never_dead_lettered(
    server: FakeAuditServer, tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "audit.jsonl"
    records = make_records(6)
    events = events_of(records)
    write_log(log, records)
    server.store.mode = mode

    async def main() -> None:
        delivery = AuditDelivery(log, settings(server.url, batch_size=1))
        await delivery.start()
        await wait_until(lambda: server.store.failed_requests >= 3)
        assert delivery.backlog == 6
        server.store.mode = "ok"
        await wait_until(lambda: delivery.backlog == 0)
        await delivery.stop()

    with caplog.at_level(logging.WARNING, logger="fhirwall.audit.delivery"):
        run(main)
    assert server.store.writes == ids(events)
    assert not (tmp_path / "audit.jsonl.dead-letter.jsonl").exists()
    level = logging.ERROR if mode == "401" else logging.WARNING
    assert any(r.levelno == level and f"HTTP {mode}" in r.message for r in caplog.records)
    assert any("recovered" in record.message for record in caplog.records)


def test_partially_failed_batch_is_retried_from_its_first_failed_entry(
    server: FakeAuditServer, tmp_path: Path
) -> None:
    log = tmp_path / "audit.jsonl"
    records = make_records(10)
    events = events_of(records)
    write_log(log, records)
    server.store.fail_once = {events[3]["id"], events[6]["id"]}
    assert cursor_at_first_failure(server, log) == 3  # stopped before the first failed entry (seq 4)
    assert server.store.requests == [("POST", 10), ("POST", 2)]  # only the failed entries were sent again
    assert sorted(server.store.writes) == sorted(ids(events))
    assert set(server.store.versions.values()) == {1}
    assert cursor_seq(log) == 10


def test_poison_record_goes_to_the_dead_letter_file_and_delivery_moves_on(
    server: FakeAuditServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "audit.jsonl"
    records = make_records(8)
    events = events_of(records)
    write_log(log, records)
    poison = events[2]["id"]
    server.store.reject = {poison}

    async def main() -> None:
        delivery = AuditDelivery(log, settings(server.url))
        await delivery.start()
        await wait_until(lambda: delivery.backlog == 0)
        assert delivery.status().dead_letters == 1
        await delivery.stop()

    with caplog.at_level(logging.ERROR, logger="fhirwall.audit.delivery"):
        run(main)
    assert server.store.writes == [event_id for event_id in ids(events) if event_id != poison]
    dead = tmp_path / "audit.jsonl.dead-letter.jsonl"
    letters = [orjson.loads(line) for line in dead.read_bytes().splitlines()]
    assert [(letter["seq"], letter["id"], letter["status"]) for letter in letters] == [(3, poison, 400)]
    assert letters[0]["event"] == events[2]
    assert letters[0]["outcome"]["resourceType"] == "OperationOutcome"
    assert os.stat(dead).st_mode & 0o077 == 0
    assert any(f"seq 3 id {poison}" in record.message for record in caplog.records)
    assert cursor_seq(log) == 8


def test_a_refused_batch_is_split_to_find_the_poison_record(server: FakeAuditServer, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    records = make_records(6)
    events = events_of(records)
    write_log(log, records)
    server.store.reject = {events[4]["id"]}
    server.store.refuse_batches_with_rejects = True

    async def main() -> None:
        delivery = AuditDelivery(log, settings(server.url, batch_size=3))
        await delivery.start()
        await wait_until(lambda: delivery.backlog == 0)
        await delivery.stop()

    run(main)
    assert server.store.requests == [("POST", 3), ("POST", 3), ("PUT", 1), ("PUT", 1), ("PUT", 1)]
    assert server.store.writes == ids(events[:4]) + ids(events[5:])
    letters = (tmp_path / "audit.jsonl.dead-letter.jsonl").read_bytes().splitlines()
    assert [orjson.loads(line)["seq"] for line in letters] == [5]


def test_a_record_that_is_not_an_audit_event_is_dead_lettered_without_sending(
    server: FakeAuditServer, tmp_path: Path
) -> None:
    log = tmp_path / "audit.jsonl"
    events = events_of(make_records(3))
    with AuditChainWriter(log, key=KEY, fsync="never") as writer:  # event records, as they are
        for event in [events[0], {"resourceType": "AuditEvent", "id": "bad/id"}, events[2]]:
            writer.append(event)

    async def main() -> None:
        delivery = AuditDelivery(log, settings(server.url))
        await delivery.start()
        await wait_until(lambda: delivery.backlog == 0)
        await delivery.stop()

    run(main)
    assert server.store.writes == [events[0]["id"], events[2]["id"]]
    letters = (tmp_path / "audit.jsonl.dead-letter.jsonl").read_bytes().splitlines()
    assert orjson.loads(letters[0])["seq"] == 2


def test_a_request_record_that_cannot_be_read_is_dead_lettered(
    server: FakeAuditServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "audit.jsonl"
    records = make_records(2)
    with AuditChainWriter(log, key=KEY, fsync="never") as writer:
        append(writer, records[0])
        writer.append_request({"request_id": "r-x", "bogus": 1})  # chained, but no entry of this version
        append(writer, records[1])

    async def main() -> None:
        delivery = AuditDelivery(log, settings(server.url), key=KEY)
        await delivery.start()
        await wait_until(lambda: delivery.backlog == 0)
        assert delivery.status().dead_letters == 1
        await delivery.stop()

    with caplog.at_level(logging.ERROR, logger="fhirwall.audit.delivery"):
        run(main)
    assert server.store.writes == ids(events_of(records))
    (letter,) = [
        orjson.loads(line) for line in (tmp_path / "audit.jsonl.dead-letter.jsonl").read_bytes().splitlines()
    ]
    assert (letter["seq"], letter["id"], letter["request"]) == (2, None, {"request_id": "r-x", "bogus": 1})
    assert "cannot be read (unknown request entry field(s): bogus)" in letter["reason"]
    assert any("seq 2 id ?" in record.message for record in caplog.records)


# -- records with several events ---------------------------------------------------------------------------


def test_every_event_of_a_record_is_delivered_in_order_batches_never_exceed_batch_size(
    server: FakeAuditServer, tmp_path: Path
) -> None:
    log = tmp_path / "audit.jsonl"
    records = [*make_records(1), make_search(1, 5), *make_records(1, start=2), make_search(3, 3)]
    events = events_of(records)
    assert len(events) == 10
    write_log(log, records, checkpoint_every=3)

    async def main() -> None:
        delivery = AuditDelivery(log, settings(server.url, batch_size=4), key=KEY)
        await delivery.start()
        assert delivery.backlog == 4  # records, not events
        await wait_until(lambda: delivery.backlog == 0)
        await delivery.stop()
        status = delivery.status()
        assert (status.delivered_seq, status.delivered_events) == (4, 10)

    run(main)
    assert server.store.writes == ids(events)
    sizes = [entries for method, entries in server.store.requests if method == "POST"]
    assert sum(sizes) == 10
    assert max(sizes) == 4
    assert set(server.store.versions.values()) == {1}
    assert cursor_seq(log) == 4


def test_the_cursor_passes_a_record_only_when_all_its_events_are_done(
    server: FakeAuditServer, tmp_path: Path
) -> None:
    log = tmp_path / "audit.jsonl"
    records = [*make_records(2), make_search(2, 4), *make_records(1, start=3)]
    events = events_of(records)  # seq 3 holds events 2-5
    write_log(log, records)
    server.store.fail_once = {events[4]["id"]}  # the search's third event
    # before the search: two of its events were confirmed, one was not
    assert cursor_at_first_failure(server, log) == 2
    assert server.store.requests == [("POST", 7), ("POST", 1)]  # only the failed entry is sent again
    assert sorted(server.store.writes) == sorted(ids(events))
    assert set(server.store.versions.values()) == {1}
    assert cursor_seq(log) == 4


def test_a_lost_cursor_update_resends_every_event_of_the_record_under_the_same_ids(
    server: FakeAuditServer, tmp_path: Path
) -> None:
    log = tmp_path / "audit.jsonl"
    records = [*make_records(1), make_search(1, 3)]
    events = events_of(records)
    write_log(log, records)

    async def deliver_all() -> None:
        delivery = AuditDelivery(log, settings(server.url))
        await delivery.start()
        await wait_until(lambda: delivery.backlog == 0)
        await delivery.stop()

    run(deliver_all)
    assert cursor_seq(log) == 2
    first_line = log.read_bytes().splitlines(keepends=True)[0]
    rewound = {"seq": 1, "hash": orjson.loads(first_line)["hash"], "start": 0, "end": len(first_line)}
    log.with_name(log.name + ".cursor").write_bytes(orjson.dumps(rewound))  # the last save was lost
    run(deliver_all)
    assert server.store.writes == ids(events) + ids(events[1:])
    assert sorted(server.store.resources) == sorted(ids(events))


# -- tampering ---------------------------------------------------------------------------------------------


def _rewrite_line(log: Path, index: int, change: Callable[[dict[str, Any]], None]) -> None:
    lines = log.read_bytes().splitlines(keepends=True)
    item = orjson.loads(lines[index])
    change(item)
    lines[index] = orjson.dumps(item) + b"\n"
    log.write_bytes(b"".join(lines))


def test_an_edited_record_stops_delivery_before_it(
    server: FakeAuditServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "audit.jsonl"
    records = make_records(20)
    events = events_of(records)
    write_log(log, records, checkpoint_every=1000)

    def edit(item: dict[str, Any]) -> None:
        item["request"]["status"] = 404

    _rewrite_line(log, 10, edit)  # seq 11

    async def main() -> None:
        options = {"batch_size": 4, "max_backlog": 5, "on_backlog_full": "block"}
        delivery = AuditDelivery(log, settings(server.url, **options))
        await delivery.start()
        await wait_until(lambda: delivery.failure is not None)
        status = delivery.status()
        assert (status.state, status.delivered_seq, status.backlog) == ("failed", 10, 10)
        started = time.monotonic()
        with pytest.raises(AuditBacklogFullError):  # a failed delivery never frees room: no waiting
            await delivery.admit()
        assert time.monotonic() - started < 1
        await delivery.stop()
        assert delivery.status().state == "failed"

    with caplog.at_level(logging.CRITICAL, logger="fhirwall.audit.delivery"):
        run(main)
    assert server.store.writes == ids(events[:10])
    assert any("TAMPERED" in r.message and "seq 11" in r.message for r in caplog.records)


def test_a_rewritten_chain_is_caught_by_the_checkpoint_signature(
    server: FakeAuditServer, tmp_path: Path
) -> None:
    """An attacker edits record 3 and recomputes every later hash: the chain verifies, the signed
    checkpoint after record 5 does not (the delivery holds the log key)."""
    log = tmp_path / "audit.jsonl"
    write_log(log, make_records(8), checkpoint_every=5)
    lines = log.read_bytes().splitlines(keepends=True)
    prev = orjson.loads(lines[1])["hash"]
    forged = []
    for raw in lines:
        item = orjson.loads(raw)
        if "checkpoint" in item:
            item["hash"] = prev  # keep the checkpoint consistent with the forged chain
        else:
            if item["seq"] == 3:
                item["request"]["status"] = 500
            if item["seq"] >= 3:
                item["prev"] = prev
                item["hash"] = record_hash(item["seq"], prev, canonical(item["request"]), "request")
            prev = item["hash"]
        forged.append(orjson.dumps(item) + b"\n")
    log.write_bytes(b"".join(forged))

    async def main(key: bytes | None) -> int:
        delivery = AuditDelivery(log, settings(server.url, batch_size=2), key=key)
        await delivery.start()
        await wait_until(lambda: delivery.failure is not None or delivery.backlog == 0)
        await delivery.stop()
        return delivery.delivered_seq

    # with the key, the look-ahead meets the forged checkpoint before any record it covers is delivered
    assert asyncio.run(main(KEY)) == 0
    assert server.store.writes == []
    # without it, the rewritten chain is self-consistent: nothing can tell (the documented limit)
    log.with_name(log.name + ".cursor").unlink(missing_ok=True)
    assert asyncio.run(main(None)) == 8
    assert len(server.store.writes) == 8


def test_records_before_a_valid_checkpoint_are_delivered_with_the_key(
    server: FakeAuditServer, tmp_path: Path
) -> None:
    log = tmp_path / "audit.jsonl"
    records = make_records(12)
    events = events_of(records)
    write_log(log, records, checkpoint_every=4)  # checkpoints after 4, 8 and 12

    def forge(item: dict[str, Any]) -> None:
        item["mac"] = "0" * 64

    _rewrite_line(log, 9, forge)  # the checkpoint after record 8

    async def main() -> None:
        delivery = AuditDelivery(log, settings(server.url, batch_size=3), key=KEY)
        await delivery.start()
        await wait_until(lambda: delivery.failure is not None)
        assert "mac is not valid" in (delivery.failure or "")
        await delivery.stop()

    run(main)
    assert server.store.writes == ids(events[:4])  # covered by the valid first checkpoint


def test_a_truncated_log_under_the_cursor_is_refused(server: FakeAuditServer, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    write_log(log, make_records(6))

    async def main() -> None:
        delivery = AuditDelivery(log, settings(server.url))
        await delivery.start()
        await wait_until(lambda: delivery.backlog == 0)
        await delivery.stop()

    run(main)
    data = log.read_bytes()
    log.write_bytes(data[: len(data) // 2])
    with pytest.raises(AuditDeliveryError, match="replaced, truncated or edited"):
        run(main)


def test_a_half_written_last_line_waits_for_its_end(server: FakeAuditServer, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    records = make_records(3)
    events = events_of(records)
    write_log(log, records[:2])
    prev = orjson.loads(log.read_bytes().splitlines()[-1])["hash"]
    body = canonical(request_entry(records[2], OBSERVER))
    line = b'{"seq":3,"prev":"%s","request":%s,"hash":"%s"}\n' % (
        prev.encode(),
        body,
        record_hash(3, prev, body, "request").encode(),
    )

    async def main() -> None:
        with log.open("ab") as file:
            file.write(line[:40])
            file.flush()
            delivery = AuditDelivery(log, settings(server.url))
            await delivery.start()
            await wait_until(lambda: len(server.store.writes) == 2)
            await asyncio.sleep(0.05)
            assert delivery.failure is None
            file.write(line[40:])
            file.flush()
            delivery.notify(3)
            await wait_until(lambda: delivery.backlog == 0)
            await delivery.stop()

    run(main)
    assert server.store.writes == ids(events)
    assert list(read_events(log)) == events


# -- back-pressure -------------------------------------------------------------------------------------------


def test_back_pressure_refuse(server: FakeAuditServer, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    server.store.mode = "500"

    async def main() -> None:
        with AuditChainWriter(log, key=KEY, fsync="never") as writer:
            delivery = AuditDelivery(log, settings(server.url, max_backlog=5))
            await delivery.start()
            for record in make_records(4):
                await delivery.admit()
                delivery.notify(append(writer, record))
            await delivery.admit()  # 4 < 5
            delivery.notify(append(writer, make_records(1, start=4)[0]))
            assert delivery.backlog == 5
            with pytest.raises(AuditBacklogFullError) as refused:
                await delivery.admit()
            assert refused.value.status_code == 503
            assert refused.value.headers["Retry-After"] == "1"
            assert refused.value.to_outcome()["issue"] == [
                {"severity": "error", "code": "transient", "diagnostics": refused.value.message}
            ]
            server.store.mode = "ok"
            await wait_until(lambda: delivery.backlog == 0)
            await delivery.admit()
            await delivery.stop()

    run(main)
    assert len(server.store.writes) == 5


def test_back_pressure_block_waits_for_room_or_times_out(server: FakeAuditServer, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    server.store.mode = "500"

    async def main() -> None:
        with AuditChainWriter(log, key=KEY, fsync="never") as writer:
            options = {"max_backlog": 3, "on_backlog_full": "block", "block_timeout_seconds": 0.3}
            delivery = AuditDelivery(log, settings(server.url, **options))
            await delivery.start()
            for record in make_records(3):
                delivery.notify(append(writer, record))
            started = time.monotonic()
            with pytest.raises(AuditBacklogFullError):
                await delivery.admit()
            assert 0.25 <= time.monotonic() - started < 2

            async def recover() -> None:
                await asyncio.sleep(0.1)
                server.store.mode = "ok"

            recovery = asyncio.create_task(recover())
            await delivery.admit()  # blocks until the delivery made room
            assert delivery.backlog < 3
            await recovery
            await delivery.stop()

    run(main)


# -- file target and shutdown ------------------------------------------------------------------------------


def test_file_target_appends_delivered_events_and_resumes(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    out = tmp_path / "delivered.jsonl"
    first, second = make_records(7), make_records(5, start=7)
    write_log(log, first)
    options = DeliverySettings(target="file", file=out, batch_size=3)

    async def main() -> None:
        delivery = AuditDelivery(log, options)
        await delivery.start()
        await wait_until(lambda: delivery.backlog == 0)
        await delivery.stop()

    run(main)
    write_log(log, second)
    run(main)
    delivered = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert delivered == events_of(first + second)
    assert os.stat(out).st_mode & 0o077 == 0
    assert cursor_seq(log) == 12


def test_stop_drains_what_is_in_the_log(server: FakeAuditServer, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    records = make_records(120)
    events = events_of(records)

    async def main() -> None:
        with AuditChainWriter(log, key=KEY, fsync="never") as writer:
            delivery = AuditDelivery(log, settings(server.url, batch_size=10))
            await delivery.start()
            for record in records:
                append(writer, record)  # no notify: stop() still drains everything in the file
            await delivery.stop()
            assert delivery.backlog == 0

    run(main)
    assert server.store.writes == ids(events)


def test_stop_gives_up_after_the_drain_timeout(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    write_log(log, make_records(4))
    down = FakeAuditServer()  # never started

    async def main() -> None:
        delivery = AuditDelivery(log, settings(down.url))
        await delivery.start()
        started = time.monotonic()
        await delivery.stop(drain_seconds=0.2)
        assert time.monotonic() - started < 1.5
        assert delivery.backlog == 4
        assert delivery.status().state == "stopped"

    run(main)
    assert not (tmp_path / "audit.jsonl.cursor").exists()

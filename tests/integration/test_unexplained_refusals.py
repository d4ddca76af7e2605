"""A broker's refusal that names no cause (issue 18, case 3; SPEC §12): Kafka's -1 (UNKNOWN_SERVER_ERROR), which
aiokafka 0.14 reports as `UnknownError`, like every code it has no class for.

The `RefusingProxy` of the refusal tests stands in front of a real Tansu and answers Produce requests itself:
- every request with -1 for a while (a broker incident), then forwards them: nothing is parked, no dead letter is
  replaced by a stub or dropped, and everything is published once the broker accepts again;
- -1 (or 87, INVALID_RECORD, now told apart by its code) for the requests that carry one record's marker: that row
  alone is parked, the rows around it are published, the dead letter becomes its stub, and nothing loops."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import orjson
import pytest
from structlog.testing import capture_logs

from tests.harness.proxy import ProxiedTansu, RefusingProxy
from tests.harness.records import RecordFactory, header_dict, payload, read_topic
from tests.integration.test_broker_refusals import Broker, _service
from worker.dev import create_topics, free_port
from worker.domain.events import OutboxEvent
from worker.observability import Metrics
from worker.relay import OutboxRelay
from worker.store.outbox import write_events
from worker.transport.producers import DeadLetterProducer, _key_hash
from worker.transport.records import UnexplainedRefusalError

pytestmark = pytest.mark.timeout(120)

MARKER = b"UNEXPLAINED-5c2e"
NOTHING = b"\xff-never-in-a-request-\xff"
UNKNOWN_SERVER_ERROR, INVALID_RECORD = -1, 87
PARTITIONS = 3


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    """A Tansu of its own behind a proxy that, until told otherwise, answers every Produce request with -1."""
    proxy_port = free_port()
    tansu = ProxiedTansu(proxy_port, log_path=tmp_path / "tansu.log")
    await asyncio.to_thread(tansu.start)
    proxy = RefusingProxy(tansu.port, proxy_port, marker=NOTHING, error_code=UNKNOWN_SERVER_ERROR)
    await proxy.start()
    try:
        topics = {role: f"unexplained.{role}.{uuid.uuid4().hex[:8]}" for role in ("commands", "events", "dlq")}
        await create_topics(f"127.0.0.1:{proxy_port}", list(topics.values()), partitions=PARTITIONS)
        yield Broker(proxy, topics)
    finally:
        await proxy.stop()
        await asyncio.to_thread(tansu.stop)


def _event(label: str, key: str, text: bytes = b"") -> OutboxEvent:
    event_id = uuid.uuid4()
    body = orjson.dumps({"event_id": str(event_id), "event_type": "customer.updated", "label": label})
    if text:
        body = body[:-1] + b',"note":"' + text + b'"}'
    return OutboxEvent(event_id, "customer.updated", key, None, body, None)


def _partition(key: str) -> int:
    return _key_hash(key.encode()) % PARTITIONS


def _key_on(partition: int, avoid: set[str]) -> str:
    return next(key for n in range(1000) if _partition(key := f"org_u:cus_{n}") == partition and key not in avoid)


async def _refuse_everything_until(broker: Broker, refusals: int) -> None:
    """A broker incident: every Produce request is answered -1 until `refusals` were, then all are forwarded."""
    broker.proxy.marker = b""  # in every request
    while broker.proxy.produce_refused < refusals:  # noqa: ASYNC110 - the proxy's counter is the state to reach
        await asyncio.sleep(0.05)
    broker.proxy.marker = NOTHING


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 60) -> None:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 - the state polled is in PostgreSQL
            await asyncio.sleep(0.05)


async def test_a_relay_round_during_an_incident_of_minus_one_parks_nothing_and_publishes_everything_after(
    broker: Broker, pool: asyncpg.Pool[asyncpg.Record]
) -> None:
    events = [_event(f"e{n}", f"org_u:cus_{n}") for n in range(6)]
    async with pool.acquire() as conn:
        await write_events(conn, events)
    metrics = Metrics(process_metrics=False)
    producer = await broker.producer()
    relay = OutboxRelay(pool=pool, sender=producer, topic=broker.topics["events"], on_parked=metrics.parked)
    # Long enough for whole rounds to meet nothing but -1 (a round sends each row alone up to 3 times).
    incident = asyncio.create_task(_refuse_everything_until(broker, refusals=40))
    running = asyncio.create_task(relay.run())
    try:
        with capture_logs() as logs:
            await asyncio.wait_for(incident, 60)

            async def outbox_empty() -> bool:
                async with pool.acquire() as conn:
                    return bool(await conn.fetchval("SELECT count(*) FROM outbox") == 0)

            await _until(outbox_empty)
    finally:
        relay.stop()
        await asyncio.wait_for(running, 30)
        await producer.stop()

    assert broker.proxy.produce_refused >= 40  # the incident was met, round after round
    assert relay.stats.parked == 0
    assert metrics.events_parked_total.labels(reason="invalid_record")._value.get() == 0
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM parked_events") == 0
    retries = [entry for entry in logs if entry["event"] == "relay_retry"]
    assert retries, "a round that met only -1 is an outage"
    assert all(entry["outage"] and entry["error_type"] == "UnexplainedRefusalError" for entry in retries)
    assert "event_parked" not in {entry["event"] for entry in logs}
    wanted = {f"e{n}" for n in range(6)}
    records = await read_topic(
        broker.bootstrap, broker.topics["events"], until=lambda found: {payload(r)["label"] for r in found} >= wanted
    )
    assert {payload(record)["label"] for record in records} == wanted


@pytest.mark.parametrize("code", [UNKNOWN_SERVER_ERROR, INVALID_RECORD])
async def test_one_row_refused_alone_is_parked_the_rows_around_it_are_published_in_key_order(
    broker: Broker, pool: asyncpg.Pool[asyncpg.Record], code: int
) -> None:
    broker.proxy.marker, broker.proxy.error_code = MARKER, code
    refused_key = "org_u:cus_refused"
    neighbour = _key_on(_partition(refused_key), avoid={refused_key})  # a later row on the refused row's partition
    events = [
        _event("a", "org_u:cus_a"),
        _event("refused", refused_key, MARKER),
        _event("b", "org_u:cus_b"),
        _event("same-key-after", refused_key),  # held behind the suspect, published once it is settled
        _event("neighbour", neighbour),
        _event("c", "org_u:cus_c"),
    ]
    async with pool.acquire() as conn:
        await write_events(conn, events)
    metrics = Metrics(process_metrics=False)
    producer = await broker.producer()
    relay = OutboxRelay(pool=pool, sender=producer, topic=broker.topics["events"], on_parked=metrics.parked)
    try:
        with capture_logs() as logs:
            rounds = 0
            while True:
                rounds += 1
                assert rounds <= 3, "settled within a few rounds, not looping"
                await relay.publish_once()
                async with pool.acquire() as conn:
                    if await conn.fetchval("SELECT count(*) FROM outbox") == 0:
                        break
    finally:
        await producer.stop()

    assert (relay.stats.published, relay.stats.parked) == (5, 1)
    assert metrics.events_parked_total.labels(reason="invalid_record")._value.get() == 1
    async with pool.acquire() as conn:
        parked = await conn.fetch("SELECT event_id, reason, error FROM parked_events")
    assert [(row["event_id"], row["reason"]) for row in parked] == [(events[1].event_id, "invalid_record")]
    assert ("UnknownError" in parked[0]["error"]) is (code == UNKNOWN_SERVER_ERROR)
    assert [entry["event"] for entry in logs if entry["log_level"] == "error"] == ["event_parked"]

    wanted = {"a", "b", "same-key-after", "neighbour", "c"}
    records = await read_topic(
        broker.bootstrap, broker.topics["events"], until=lambda found: {payload(r)["label"] for r in found} >= wanted
    )
    labels = [payload(record)["label"] for record in records]
    assert set(labels) == wanted


async def test_dead_letters_wait_out_an_incident_of_minus_one_and_none_is_dropped_or_stubbed(
    broker: Broker, pool: asyncpg.Pool[asyncpg.Record]
) -> None:
    factory = RecordFactory(topic="test.commands")
    records = [factory.record(b"{not json %d" % n, key=b"k%d" % n) for n in range(4)]
    metrics = Metrics(process_metrics=False)
    producer = await broker.producer()
    try:
        sink = DeadLetterProducer(producer, broker.topics["dlq"], on_dropped=metrics.dead_letters_dropped)
        incident = asyncio.create_task(_refuse_everything_until(broker, refusals=10))
        with capture_logs() as logs:
            report = await asyncio.wait_for(_service(pool, sink).handle(records), timeout=90)
        await incident
    finally:
        await producer.stop()

    assert report.dead_letters == {"invalid_json": 4}
    assert broker.proxy.produce_refused >= 10
    assert metrics.records_skipped_total.labels(reason="dead_letter_refused")._value.get() == 0
    assert "dead_letter_dropped" not in {entry["event"] for entry in logs}
    assert any(entry["event"] == "dependency_retry" for entry in logs)
    dlq = await read_topic(broker.bootstrap, broker.topics["dlq"], until=lambda found: len(found) >= 4, settle=1.0)
    copies = {int(header_dict(record)["dlq-source-offset"]): record.value for record in dlq}
    assert copies == {n: b"{not json %d" % n for n in range(4)}  # whole copies, no stub


async def test_a_dead_letter_refused_alone_with_minus_one_becomes_its_stub_when_the_partition_takes_the_stub(
    broker: Broker, pool: asyncpg.Pool[asyncpg.Record]
) -> None:
    broker.proxy.marker = MARKER
    factory = RecordFactory(topic="test.commands")
    records = [
        factory.record(b"{not json 0", key=b"k0"),
        factory.record(b"{not json " + MARKER, key=b"k1"),
        factory.record(b"{not json 2", key=b"k2"),
    ]
    metrics = Metrics(process_metrics=False)
    producer = await broker.producer()
    try:
        sink = DeadLetterProducer(producer, broker.topics["dlq"], on_dropped=metrics.dead_letters_dropped)
        with capture_logs() as logs:
            report = await asyncio.wait_for(_service(pool, sink).handle(records), timeout=60)
    finally:
        await producer.stop()

    assert report.dead_letters == {"invalid_json": 3}
    assert metrics.records_skipped_total.labels(reason="dead_letter_refused")._value.get() == 0
    [refused] = [entry for entry in logs if entry["event"] == "dead_letter_refused"]
    assert (refused["reason"], refused["stub"]) == ("unexplained", True)
    dlq = await read_topic(broker.bootstrap, broker.topics["dlq"], until=lambda found: len(found) >= 3, settle=1.0)
    by_offset = {int(header_dict(record)["dlq-source-offset"]): record for record in dlq}
    assert sorted(by_offset) == [0, 1, 2]
    assert by_offset[0].value == b"{not json 0" and by_offset[2].value == b"{not json 2"
    assert (by_offset[1].key, by_offset[1].value) == (None, None)
    assert header_dict(by_offset[1])["dlq-truncated"] == b"true"


async def test_a_row_refused_alone_with_no_later_row_on_its_partition_is_held_not_parked(
    broker: Broker, pool: asyncpg.Pool[asyncpg.Record]
) -> None:
    # Nothing shows that the record is at fault rather than its partition: it waits (an outage when it is all there
    # is; held while rows of other partitions go out), and is never parked on that evidence.
    broker.proxy.marker = MARKER
    refused_key = "org_u:cus_alone"
    elsewhere = _key_on((_partition(refused_key) + 1) % PARTITIONS, avoid=set())
    lonely = _event("alone", refused_key, MARKER)
    async with pool.acquire() as conn:
        await write_events(conn, [lonely])
    producer = await broker.producer()
    relay = OutboxRelay(pool=pool, sender=producer, topic=broker.topics["events"])
    try:
        with pytest.raises(UnexplainedRefusalError):
            await relay.publish_once()
        async with pool.acquire() as conn:
            await write_events(conn, [_event("other-partition", elsewhere)])
        with capture_logs() as logs:
            assert await relay.publish_once() == 1  # the other row; the lonely one is held
    finally:
        await producer.stop()
    assert relay.stats.parked == 0
    assert [entry["count"] for entry in logs if entry["event"] == "events_held"] == [1]
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM parked_events") == 0
        assert await conn.fetchval("SELECT event_id FROM outbox") == lonely.event_id

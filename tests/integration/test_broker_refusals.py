"""SPEC §12 refusals by the broker itself, which the embedded broker never makes: a Kafka-protocol proxy
(`tests.harness.proxy.RefusingProxy`) stands in front of a real Tansu and answers a Produce request that carries a
marker with a permanent error code (MESSAGE_TOO_LARGE, CORRUPT_MESSAGE, INVALID_RECORD), as a production broker does.
The worker's real aiokafka producer sends; the rest of the traffic reaches Tansu unchanged.

- The relay: a refused batch is resent one record at a time; exactly the refused rows are parked with their reason
  and counted, the rows around them are published, the outbox is emptied and the relay goes on.
- The DLQ: a copy refused for good becomes a headers-only stub; a stub refused as well is dropped with an error log
  and counted as `dead_letter_refused`; the batch is answered, never retried forever."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import orjson
import pytest
from structlog.testing import capture_logs

from tests.harness.proxy import ProxiedTansu, RefusingProxy
from tests.harness.records import RecordFactory, header_dict, payload, read_topic
from worker.contract.connections import ProviderRegistry
from worker.contract.decode import DecodeContext
from worker.dev import create_topics, free_port
from worker.domain.events import OutboxEvent
from worker.observability import Metrics
from worker.relay import OutboxRelay
from worker.security import SigningKeys
from worker.service import BatchService
from worker.settings import KafkaSettings
from worker.store.outbox import write_events
from worker.transport.producers import DeadLetterProducer, KafkaProducer

MARKER = b"REFUSE-ME-8d1f"
MESSAGE_TOO_LARGE, CORRUPT_MESSAGE, INVALID_RECORD = 10, 2, 87
# The worker's reason for each code (worker/transport/records.py `refusal`).
REASONS = {MESSAGE_TOO_LARGE: "too_large", CORRUPT_MESSAGE: "invalid_record", INVALID_RECORD: "invalid_record"}


@dataclass
class Broker:
    proxy: RefusingProxy
    topics: dict[str, str]

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.proxy.port}"

    async def producer(self) -> KafkaProducer:
        settings = KafkaSettings(
            kafka_bootstrap_servers=self.bootstrap, events_topic=self.topics["events"], kafka_enable_idempotence=False
        )
        producer = KafkaProducer(settings)
        await producer.start()
        return producer


@pytest.fixture(params=[MESSAGE_TOO_LARGE])
async def broker(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Broker]:
    """A Tansu of its own, advertising the refusing proxy's port, with fresh topics of 3 partitions."""
    proxy_port = free_port()
    tansu = ProxiedTansu(proxy_port, log_path=tmp_path / "tansu.log")
    await asyncio.to_thread(tansu.start)
    proxy = RefusingProxy(tansu.port, proxy_port, marker=MARKER, error_code=request.param)
    await proxy.start()
    try:
        topics = {role: f"refusals.{role}.{uuid.uuid4().hex[:8]}" for role in ("commands", "events", "dlq")}
        await create_topics(f"127.0.0.1:{proxy_port}", list(topics.values()), partitions=3)
        yield Broker(proxy, topics)
    finally:
        await proxy.stop()
        await asyncio.to_thread(tansu.stop)


def _event(label: str, text: bytes = b"") -> OutboxEvent:
    event_id = uuid.uuid4()
    body = orjson.dumps({"event_id": str(event_id), "event_type": "customer.updated", "label": label})
    if text:
        body = body[:-1] + b',"note":"' + text + b'"}'
    return OutboxEvent(event_id, "customer.updated", f"org_r:{label}", None, body, None)


@pytest.mark.parametrize("broker", [MESSAGE_TOO_LARGE, CORRUPT_MESSAGE, INVALID_RECORD], indirect=True)
async def test_the_relay_parks_exactly_the_rows_the_broker_refuses_and_goes_on(
    broker: Broker, pool: asyncpg.Pool[asyncpg.Record]
) -> None:
    labels = ["a", "b", "refused-1", "c", "refused-2", "d"]
    events = [_event(label, MARKER if label.startswith("refused") else b"") for label in labels]
    async with pool.acquire() as conn:
        await write_events(conn, events)
    metrics = Metrics(process_metrics=False)
    producer = await broker.producer()
    try:
        relay = OutboxRelay(
            pool=pool, sender=producer, topic=broker.topics["events"], on_parked=metrics.parked, batch_size=100
        )
        with capture_logs() as logs:
            assert await relay.publish_once() == len(events)
        # The refusal came from the broker's answer, not from the client's size check: the batch, then each of the
        # two marked rows alone, were refused on the wire.
        assert broker.proxy.produce_refused >= 3
        assert await relay.publish_once() == 0  # not stuck: nothing left to publish

        # The relay goes on with new rows.
        later = _event("later")
        async with pool.acquire() as conn:
            await write_events(conn, [later])
        assert await relay.publish_once() == 1
    finally:
        await producer.stop()

    reason = REASONS[broker.proxy.error_code]
    assert (relay.stats.published, relay.stats.parked) == (5, 2)
    assert metrics.events_parked_total.labels(reason=reason)._value.get() == 2
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 0
        parked = await conn.fetch("SELECT event_id, reason, payload FROM parked_events ORDER BY outbox_id")
    assert [row["event_id"] for row in parked] == [events[2].event_id, events[4].event_id]
    assert {row["reason"] for row in parked} == {reason}
    assert [bytes(row["payload"]) for row in parked] == [events[2].payload, events[4].payload]
    assert [entry["event"] for entry in logs if entry["log_level"] == "error"] == ["event_parked"] * 2

    wanted = {"a", "b", "c", "d", "later"}
    records = await read_topic(
        broker.bootstrap, broker.topics["events"], until=lambda found: {payload(r)["label"] for r in found} >= wanted
    )
    published = [payload(record)["label"] for record in records]
    assert sorted(published) == sorted(wanted)  # none refused, each once (the refused batch stored nothing)


def _service(pool: asyncpg.Pool[asyncpg.Record], sink: DeadLetterProducer) -> BatchService:
    registry = ProviderRegistry.empty()
    return BatchService(
        pool=pool,
        decode_context=DecodeContext(signing_keys=SigningKeys({}), registry=registry),
        registry=registry,
        dead_letters=sink,
    )


async def test_a_refused_dead_letter_becomes_a_stub_and_a_refused_stub_is_dropped_and_counted(
    broker: Broker, pool: asyncpg.Pool[asyncpg.Record]
) -> None:
    # Unreadable JSON, so every record goes to the DLQ. The marker in the value: the whole copy is refused, its stub
    # (no value) is accepted. The marker in the source topic's name, which every DLQ header set carries: the copy
    # and the stub are both refused.
    plain = RecordFactory(topic="test.commands")
    marked_topic = RecordFactory(topic="test.commands." + MARKER.decode(), next_offset=100)
    records = [
        plain.record(b"{not json 1", key=b"k1"),
        plain.record(b"{not json " + MARKER, key=b"k2", headers=[("x-sender", b"secret")]),
        marked_topic.record(b"{not json 3", key=b"k3"),
        plain.record(b"{not json 4", key=b"k4"),
    ]
    metrics = Metrics(process_metrics=False)
    producer = await broker.producer()
    try:
        sink = DeadLetterProducer(
            producer, broker.topics["dlq"], on_dropped=lambda count: metrics.skipped("dead_letter_refused", count)
        )
        with capture_logs() as logs:
            report = await asyncio.wait_for(_service(pool, sink).handle(records), timeout=60)
    finally:
        await producer.stop()

    assert report.dead_letters == {"invalid_json": 4}  # the batch is answered: its offsets may be committed
    assert broker.proxy.produce_refused >= 4  # batch, copy 2, copy 3, stub 3
    assert metrics.records_skipped_total.labels(reason="dead_letter_refused")._value.get() == 1
    [dropped] = [entry for entry in logs if entry["event"] == "dead_letter_dropped"]
    assert dropped["log_level"] == "error"
    assert dropped["headers"]["dlq-source-offset"] == "100"
    assert "secret" not in str(logs) and MARKER.decode() not in str(dropped.get("detail", ""))
    refused = [entry for entry in logs if entry["event"] == "dead_letter_refused"]
    assert len(refused) == 2 and all(entry["stub"] for entry in refused)

    dlq = await read_topic(broker.bootstrap, broker.topics["dlq"], until=lambda found: len(found) >= 3, settle=1.0)
    by_offset = {int(header_dict(record)["dlq-source-offset"]): record for record in dlq}
    assert sorted(by_offset) == [0, 1, 2]  # offset 100 was dropped; the others are there once each
    assert by_offset[0].value == b"{not json 1" and by_offset[2].value == b"{not json 4"
    stub = by_offset[1]
    assert (stub.key, stub.value) == (None, None)
    headers = header_dict(stub)
    assert headers["dlq-truncated"] == b"true"
    assert headers["dlq-original-size"] == str(len(records[1].value or b"")).encode()
    assert headers["dlq-reason"] == b"invalid_json"
    assert "x-sender" not in headers

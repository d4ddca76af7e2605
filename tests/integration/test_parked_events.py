"""SPEC §12 parked events: an outbox row that cannot be published for good is moved aside with its reason and counted;
the relay goes on with the rows behind it; `customer-worker outbox list` / `republish` let an operator retry it."""

from __future__ import annotations

import asyncio
import os
import uuid

import asyncpg
import orjson

from tests.harness.records import header_dict, payload, read_topic, run_cli
from worker.domain.events import OutboxEvent
from worker.observability import Metrics
from worker.relay import OutboxRelay
from worker.settings import KafkaSettings
from worker.store.outbox import write_events
from worker.transport.producers import KafkaProducer

MiB = 1024 * 1024


def _event(size: int, label: str, schema_id: int | None = None) -> OutboxEvent:
    body = {"event_id": str(uuid.uuid4()), "event_type": "customer.updated", "label": label, "pad": "p" * size}
    return OutboxEvent(
        uuid.UUID(body["event_id"]), "customer.updated", f"org_p:{label}", None, orjson.dumps(body), schema_id
    )


async def _cli(dsn: str, *args: str) -> tuple[int, str, str]:
    """`customer-worker ARGS` as an operator runs it."""
    done = await asyncio.to_thread(run_cli, *args, env={**os.environ, "DATABASE_URL": dsn}, timeout=60)
    return done.returncode, done.stdout, done.stderr


async def _producer(kafka_bootstrap: str, topics: dict[str, str], max_size: int) -> KafkaProducer:
    settings = KafkaSettings(
        kafka_bootstrap_servers=kafka_bootstrap,
        events_topic=topics["events"],
        kafka_enable_idempotence=False,
        kafka_max_request_size=max_size,
    )
    producer = KafkaProducer(settings)
    await producer.start()
    return producer


async def test_an_event_over_the_limit_is_parked_listed_and_republished(
    pool: asyncpg.Pool[asyncpg.Record],
    fresh_database: str,
    kafka_bootstrap: str,
    unique_topics: dict[str, str],
) -> None:
    # The huge one came from a framed command (schema id 4294967295, the largest a frame holds): parked and
    # republished, it keeps its `schema-id` header (SPEC §12).
    events = [_event(100, "before"), _event(MiB + 10, "huge", 2**32 - 1), _event(100, "after")]
    async with pool.acquire() as conn:
        await write_events(conn, events)
    metrics = Metrics(process_metrics=False)
    producer = await _producer(kafka_bootstrap, unique_topics, MiB)
    try:
        relay = OutboxRelay(pool=pool, sender=producer, topic=unique_topics["events"], on_parked=metrics.parked)
        assert await relay.publish_once() == 3
        assert await relay.publish_once() == 0  # nothing left behind: the relay is not stuck on the huge row
    finally:
        await producer.stop()
    assert (relay.stats.published, relay.stats.parked) == (2, 1)
    assert metrics.events_parked_total.labels(reason="too_large")._value.get() == 1
    records = await read_topic(kafka_bootstrap, unique_topics["events"], until=lambda found: len(found) >= 2)
    assert sorted(payload(record)["label"] for record in records) == ["after", "before"]
    assert all("schema-id" not in header_dict(record) for record in records)

    code, out, _ = await _cli(fresh_database, "outbox", "list")
    assert code == 0
    [line] = out.splitlines()
    listed = orjson.loads(line)
    assert listed["event_id"] == str(events[1].event_id)
    assert listed["reason"] == "too_large"
    assert listed["size"] == len(events[1].payload)
    assert "KAFKA_MAX_REQUEST_SIZE" in listed["error"]
    assert "pad" not in line  # the payload is left out of the listing

    code, _, err = await _cli(fresh_database, "outbox", "republish")
    assert code == 2 and "--all" in err  # a filter or --all is required
    code, out, _ = await _cli(fresh_database, "outbox", "republish", "--id", str(listed["id"]))
    assert code == 0 and "moved 1 parked event" in out
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM parked_events") == 0
        assert await conn.fetchval("SELECT event_id FROM outbox") == events[1].event_id

    # Once the broker and the worker accept larger records, the same event goes out with its original event_id.
    bigger = await _producer(kafka_bootstrap, unique_topics, 2 * MiB)
    try:
        relay = OutboxRelay(pool=pool, sender=bigger, topic=unique_topics["events"])
        assert await relay.publish_once() == 1
    finally:
        await bigger.stop()
    assert relay.stats.parked == 0
    records = await read_topic(kafka_bootstrap, unique_topics["events"], until=lambda found: len(found) >= 3)
    [republished] = [record for record in records if payload(record)["event_id"] == str(events[1].event_id)]
    assert header_dict(republished)["schema-id"] == b"4294967295"
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 0

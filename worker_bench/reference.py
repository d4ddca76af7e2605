"""The yardsticks of `customer-worker bench`, run as their own process on the same servers and commands.

* `strong`: the yardstick of issue 12, what a team would write by hand: plain aiokafka and asyncpg, no validation.
  Per batch of up to 2,000 records: one transaction with a set-based inbox insert, an upsert of a narrow customers
  row (key columns plus the body as one `jsonb`) and an outbox insert; then the events are produced (acks=all), the
  outbox rows deleted and the offsets committed.
* `lean`: the full-width yardstick: the same, with the worker's own customers table (every column) and batch size,
  outbox rows kept.
* `naive`: the same work one message at a time: a transaction, an awaited event publish and an offset commit each.

Progress is written to the database (`processed_messages`), where the benchmark reads it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import uuid
from datetime import UTC, datetime
from typing import Any, Final

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from worker.domain.customer import COLUMNS
from worker.runtime import tune_garbage_collector, tune_malloc

_TEXT_COLUMNS: Final = tuple(
    column
    for column in COLUMNS
    if column
    not in {
        "id",
        "organization_id",
        "external_id",
        "created_at",
        "updated_at",
        "high_water_mark",
        "net_payment_term",
        "invoice_grace_period",
        "provider_payment_methods",
        "tax_codes",
        "metadata",
        "finalize_zero_amount_invoice",
    }
)
_UPSERT: Final = (
    "INSERT INTO customers (id, organization_id, external_id, created_at, updated_at, net_payment_term, "
    f"tax_codes, metadata, {', '.join(_TEXT_COLUMNS)}) "
    "SELECT gen_random_uuid(), o, e, now(), now(), n, t, m, "
    + ", ".join(f"c{i}" for i in range(len(_TEXT_COLUMNS)))
    + " FROM unnest($1::text[], $2::text[], $3::int4[], $4::jsonb[], $5::jsonb[], "
    + ", ".join(f"${i + 6}::text[]" for i in range(len(_TEXT_COLUMNS)))
    + ") AS r(o, e, n, t, m, "
    + ", ".join(f"c{i}" for i in range(len(_TEXT_COLUMNS)))
    + ") ON CONFLICT (organization_id, external_id) DO UPDATE SET updated_at = now(), "
    "net_payment_term = EXCLUDED.net_payment_term, tax_codes = EXCLUDED.tax_codes, metadata = EXCLUDED.metadata, "
    + ", ".join(f"{column} = EXCLUDED.{column}" for column in _TEXT_COLUMNS)
)
_INBOX: Final = (
    "INSERT INTO processed_messages (organization_id, message_id) SELECT * FROM unnest($1::text[], $2::text[]) "
    "ON CONFLICT DO NOTHING RETURNING organization_id, message_id"
)
_OUTBOX: Final = (
    "INSERT INTO outbox (event_id, event_key, event_type, traceparent, payload) "
    "SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bytea[]) RETURNING id"
)


# The strong yardstick's table: key columns and the body as one jsonb, in the same database as the full one.
_NARROW_TABLE: Final = (
    "CREATE TABLE IF NOT EXISTS lean_customers (id uuid NOT NULL, organization_id text NOT NULL, "
    "external_id text NOT NULL, created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL, body jsonb NOT NULL, "
    "PRIMARY KEY (organization_id, external_id))"
)
_NARROW_UPSERT: Final = (
    "INSERT INTO lean_customers (id, organization_id, external_id, created_at, updated_at, body) "
    "SELECT gen_random_uuid(), o, e, now(), now(), b FROM unnest($1::text[], $2::text[], $3::jsonb[]) AS r(o, e, b) "
    "ON CONFLICT (organization_id, external_id) DO UPDATE SET updated_at = now(), body = EXCLUDED.body"
)
_DELETE_OUTBOX: Final = "DELETE FROM outbox WHERE id = ANY($1::bigint[])"


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _row(document: dict[str, Any]) -> tuple[Any, ...]:
    customer = document.get("customer") or {}
    flat = dict(customer)
    for name, value in (customer.get("billing_configuration") or {}).items():
        flat.setdefault(name, value)
    for name, value in (customer.get("shipping_address") or {}).items():
        flat[f"shipping_{name}"] = value
    term = customer.get("net_payment_term")
    return (
        document.get("organization_id"),
        _text(customer.get("external_id")) or "",
        term if isinstance(term, int) and not isinstance(term, bool) else None,
        orjson.dumps(customer.get("tax_codes") or []).decode(),
        orjson.dumps(customer.get("metadata") or []).decode(),
        *(_text(flat.get(column)) for column in _TEXT_COLUMNS),
    )


def _event(document: dict[str, Any], now: str) -> tuple[uuid.UUID, str, bytes]:
    event_id = uuid.uuid4()
    customer = document.get("customer") or {}
    key = f"{document.get('organization_id')}:{customer.get('external_id')}"
    payload = orjson.dumps(
        {
            "event_id": str(event_id),
            "event_type": "customer.updated",
            "organization_id": document.get("organization_id"),
            "message_id": document.get("message_id"),
            "external_id": customer.get("external_id"),
            "occurred_at": now,
            "customer": customer,
        }
    )
    return event_id, key, payload


async def _apply(
    conn: asyncpg.Connection[asyncpg.Record], documents: list[dict[str, Any]], *, narrow: bool
) -> tuple[list[tuple[uuid.UUID, str, bytes]], list[int]]:
    now = datetime.now(UTC).isoformat()
    async with conn.transaction():
        fresh = {
            (row[0], row[1])
            for row in await conn.fetch(
                _INBOX, [d["organization_id"] for d in documents], [d["message_id"] for d in documents]
            )
        }
        kept = [d for d in documents if (d["organization_id"], d["message_id"]) in fresh]
        last: dict[tuple[str, str], tuple[Any, ...]] = {}
        for document in kept:
            customer = document.get("customer") or {}
            external_id = _text(customer.get("external_id")) or ""
            body = orjson.dumps(customer).decode()
            row = (document.get("organization_id"), external_id, body) if narrow else _row(document)
            last[(row[0], row[1])] = row
        if last:
            upsert = _NARROW_UPSERT if narrow else _UPSERT
            await conn.execute(upsert, *(list(column) for column in zip(*last.values(), strict=True)))
        events = [_event(d, now) for d in kept]
        ids: list[asyncpg.Record] = []
        if events:
            ids = await conn.fetch(
                _OUTBOX,
                [e[0] for e in events],
                [e[1] for e in events],
                ["customer.updated"] * len(events),
                [None] * len(events),
                [e[2] for e in events],
            )
    return events, [row[0] for row in ids]


async def run(mode: str, count: int) -> None:
    env = os.environ
    narrow = mode == "strong"
    batch_size = 2000 if narrow else int(env.get("BATCH_SIZE", "500"))
    conn = await asyncpg.connect(env["DATABASE_URL"])
    if narrow:
        await conn.execute(_NARROW_TABLE)
    consumer = AIOKafkaConsumer(
        env["COMMANDS_TOPIC"],
        bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"],
        group_id=env["KAFKA_GROUP_ID"],
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=int(env.get("KAFKA_SESSION_TIMEOUT_MS", "10000")),
        max_partition_fetch_bytes=2 * 1024 * 1024,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"],
        acks="all",
        linger_ms=2,
        max_batch_size=256 * 1024,
        max_request_size=2 * 1024 * 1024,
    )
    await consumer.start()
    await producer.start()
    events_topic = env["EVENTS_TOPIC"]
    processed = 0
    try:
        while processed < count:
            fetched = await consumer.getmany(timeout_ms=50, max_records=1 if mode == "naive" else batch_size)
            records: list[ConsumerRecord[Any, Any]] = [r for batch in fetched.values() for r in batch]
            if not records:
                continue
            documents = [orjson.loads(record.value) for record in records]
            events, outbox_ids = await _apply(conn, documents, narrow=narrow)
            sends = [await producer.send(events_topic, value=payload, key=key.encode()) for _, key, payload in events]
            await asyncio.gather(*sends)
            if narrow and outbox_ids:
                await conn.execute(_DELETE_OUTBOX, outbox_ids)
            offsets: dict[TopicPartition, int] = {}
            for record in records:
                tp = TopicPartition(record.topic, record.partition)
                offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
            await consumer.commit(offsets)
            processed += len(records)
    finally:
        await producer.stop()
        await consumer.stop()
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["strong", "lean", "naive"], required=True)
    parser.add_argument("--count", type=int, required=True)
    args = parser.parse_args()
    # The same collector settings as the worker's, so that the ratios compare the pipelines, not the runtime.
    tune_garbage_collector()
    tune_malloc()
    asyncio.run(run(args.mode, args.count))


if __name__ == "__main__":
    main()

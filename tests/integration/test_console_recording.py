"""What the worker records for the operator console (issue 20), against real PostgreSQL and Tansu: a `dead_letters`
row per acknowledged DLQ copy (each reason), answer and rejection counts in the batch's transaction, the heartbeat,
and no personal data in any of it."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from tests.harness.in_process import RunningWorker, running_worker
from tests.harness.records import command, encode, key_of, read_topic
from worker.contract.codes import DlqReason
from worker.contract.decode import DeadLetter
from worker.settings import KafkaSettings
from worker.transport.dead_letter_log import RecordedDeadLetters
from worker.transport.producers import KafkaProducer
from worker.transport.raw import RawRecord

pytestmark = pytest.mark.timeout(120)

CANARY_NAME = "Zebulon Canaryfield"
CANARY_EMAIL = "zebulon.canary@canary-mail.example"
CANARY_PHONE = "+33 6 99 88 77 66"
CANARIES = ("Zebulon", "Canaryfield", "zebulon.canary", "canary-mail", "99 88 77 66")
CONSOLE_TABLES = (
    "dead_letters",
    "rejection_counts",
    "answer_counts",
    "workers_seen",
    "operator_jobs",
    "operator_job_items",
    "audit_log",
)


@pytest.fixture(scope="module")
async def stack(pg_dsn: str, kafka_bootstrap: str) -> AsyncIterator[RunningWorker]:
    async with running_worker(pg_dsn, kafka_bootstrap, "console_rec", kind=RunningWorker) as running:
        yield running


async def _until(conn: asyncpg.Connection[asyncpg.Record], query: str, *args: Any, timeout: float = 20) -> Any:  # noqa: ASYNC109
    """The value of `query` once it is truthy (the worker writes asynchronously to the test)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await conn.fetchval(query, *args)
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not true after {timeout} s: {query}")
        await asyncio.sleep(0.1)


async def test_the_worker_records_its_dead_letters_counts_and_heartbeat(stack: RunningWorker) -> None:
    org = f"org_{uuid.uuid4().hex[:8]}"
    bad_json = b'{"organization_id": "' + org.encode() + b'", "name": "' + CANARY_NAME.encode() + b'"'
    no_message_id = encode({"organization_id": org, "customer": {"external_id": "c1", "email": CANARY_EMAIL}})
    rejected = command(org, {"external_id": "cus_r", "name": CANARY_NAME, "email": "not an email " + CANARY_EMAIL})
    created = command(org, {"external_id": "cus_ok", "name": CANARY_NAME, "phone": CANARY_PHONE})
    for value, key in ((bad_json, b"k1"), (no_message_id, b"k2"), (encode(rejected), key_of(rejected))):
        await stack.publish(value, key=key)
    await stack.publish(encode(created), key=key_of(created))
    await stack.publish(encode(created), key=key_of(created))  # a duplicate

    copies = await read_topic(
        stack.bootstrap, stack.topics["dlq"], until=lambda rs: sum(org.encode() in (r.value or b"") for r in rs) >= 2
    )
    async with stack.db() as conn:
        await _until(conn, "SELECT count(*) >= 2 FROM dead_letters")
        rows = {row["reason"]: row for row in await conn.fetch("SELECT * FROM dead_letters")}
        assert set(rows) == {"invalid_json", "invalid_envelope"}
        by_offset = {(r.partition, r.offset): r for r in copies}
        for row in rows.values():
            copy = by_offset[row["dlq_partition"], row["dlq_offset"]]  # the coordinates are the copy's
            assert row["dlq_topic"] == stack.topics["dlq"]
            assert row["source_topic"] == stack.topics["commands"]
            assert bytes(row["value_sha256"]) == hashlib.sha256(copy.value).digest()
            assert row["value_size"] == len(copy.value)
            assert row["replay_state"] == "new"
        assert rows["invalid_json"]["organization_id"] is None  # not readable: not guessed
        assert rows["invalid_json"]["codes"] == ["json_syntax"]
        assert rows["invalid_envelope"]["organization_id"] == org
        assert (rows["invalid_envelope"]["codes"], rows["invalid_envelope"]["paths"]) == (
            ["message_id_invalid"],
            ["message_id"],
        )

        await _until(conn, "SELECT sum(count) FROM answer_counts WHERE outcome = 'duplicate'")
        counted = await conn.fetch("SELECT outcome, sum(count)::int AS n FROM answer_counts GROUP BY outcome")
        answers = {row["outcome"]: row["n"] for row in counted}
        assert answers == {"created": 1, "rejected": 1, "duplicate": 1, "dead_lettered": 2}
        rejections = await conn.fetch("SELECT organization_id, code, path, count FROM rejection_counts")
        assert [tuple(r) for r in rejections] == [(org, "invalid_email_format", "email", 1)]

        # The maintenance loop's heartbeat (every 5 s) names the partitions the process holds.
        worker = await _until(conn, "SELECT worker_id FROM workers_seen WHERE partitions = '{0,1,2}'", timeout=15)
        seen = await conn.fetchrow("SELECT * FROM workers_seen WHERE worker_id = $1", worker)
        assert seen is not None
        assert seen["pid"] > 0 and seen["version"] and seen["last_seen_at"] >= seen["started_at"]

        # No personal data anywhere in the console's tables.
        for table in CONSOLE_TABLES:
            text = await conn.fetchval(f"SELECT coalesce(string_agg(t::text, ' '), '') FROM {table} AS t")
            for canary in CANARIES:
                assert canary.lower() not in text.lower(), (table, canary)


async def test_every_dlq_reason_gets_its_row_once(pool: asyncpg.Pool[asyncpg.Record], kafka_bootstrap: str) -> None:
    """All five reasons through the worker's own sink, on a real broker; sending the same rows again writes
    nothing twice (idempotent on the DLQ coordinates)."""
    from worker.dev import create_topics

    topic = f"test.console.dlq.{uuid.uuid4().hex[:8]}"
    await create_topics(kafka_bootstrap, [topic], partitions=2)
    settings = KafkaSettings(kafka_bootstrap_servers=kafka_bootstrap, kafka_enable_idempotence=False)
    producer = KafkaProducer(settings)
    envelope = encode(command("org_reasons", {"external_id": "c", "email": CANARY_EMAIL}))
    letters = [
        (RawRecord("cmds", 0, 10, b"a", b"[1]", ()), DeadLetter(DlqReason.INVALID_ENVELOPE, "value is a JSON array")),
        (RawRecord("cmds", 0, 11, b"b", b"{x", ()), DeadLetter(DlqReason.INVALID_JSON, "unexpected character")),
        (RawRecord("cmds", 1, 12, b"c", b"x" * 2000, ()), DeadLetter(DlqReason.TOO_LARGE, "value of 2000 bytes")),
        (RawRecord("cmds", 1, 13, b"d", envelope, ()), DeadLetter(DlqReason.PROCESSING_ERROR, "failed: TypeError")),
        (RawRecord("cmds", 2, 14, None, None, (), "crc"), DeadLetter(DlqReason.UNREADABLE_RECORD, "crc mismatch")),
    ]
    sink = RecordedDeadLetters(producer, topic, pool)
    try:
        await sink.send(letters)
        rows = await pool.fetch("SELECT * FROM dead_letters ORDER BY source_offset")
        await pool.execute("DELETE FROM answer_counts")
        from worker.store.console import record_dead_letters
        from worker.transport.dead_letter_log import dead_letter_row

        again = [
            dead_letter_row(topic, (row["dlq_partition"], row["dlq_offset"]), record, letter, 1 << 20)
            for row, (record, letter) in zip(rows, letters, strict=True)
        ]
        assert await record_dead_letters(pool, again) == 0
    finally:
        await producer.stop()
    assert [(r["reason"], r["codes"]) for r in rows] == [
        ("invalid_envelope", ["not_an_object"]),
        ("invalid_json", ["json_syntax"]),
        ("too_large", ["value_too_large"]),
        ("processing_error", ["failed_repeatedly"]),
        ("unreadable_record", ["unreadable"]),
    ]
    assert rows[3]["organization_id"] == "org_reasons" and rows[3]["message_id"]
    assert rows[4]["value_sha256"] is None and rows[4]["value_size"] == 0
    assert len({(r["dlq_partition"], r["dlq_offset"]) for r in rows}) == 5
    assert await pool.fetchval("SELECT count(*) FROM answer_counts") == 0  # nothing new: nothing counted
    copies = await read_topic(kafka_bootstrap, topic, until=lambda rs: len(rs) >= 5)
    assert {(r.partition, r.offset) for r in copies} == {(r["dlq_partition"], r["dlq_offset"]) for r in rows}

"""A DLQ replay job's chunk (issue 20): read each dead letter's record from the DLQ by its coordinates, republish it
to the commands topic with its key, value and headers minus the `dlq-*` ones, and mark it replayed once the broker
acknowledged the send.

Each republished record carries `x-replay-job` and `x-replay-item`; the worker copies headers to the DLQ unchanged,
so a record that fails again comes back with them and its `dead_letters` row names the job (the original is marked
`returned`). The job's frozen selection never includes that new row, so no job replays a record twice.

A record is checked before it is sent: gone from the DLQ (retention) or a truncated copy (the value was over
`KAFKA_MAX_REQUEST_SIZE`, SPEC §12) or a value whose SHA-256 differs from the one recorded: failed, with the reason.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import Any, Final

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from worker.ops.topics import start_consumer
from worker.outages import DependencyUnavailableError
from worker.settings import KafkaSettings
from worker.store import operator_jobs as sql
from worker.store.jobs import Pool
from worker.store.operator_actions import mark_replayed
from worker.transport.dead_letter_log import REPLAY_ITEM_HEADER, REPLAY_JOB_HEADER
from worker.transport.options import client_options
from worker.transport.producers import DLQ_HEADERS, KafkaProducer, Message, RecordRefusedError, raise_outage
from worker.transport.records import TRUNCATED_HEADER

_FETCH_SECONDS: Final = 10.0
_POLL_MS: Final = 500
_DROPPED: Final = DLQ_HEADERS | {REPLAY_JOB_HEADER, REPLAY_ITEM_HEADER}
_ROWS: Final = (
    "SELECT id, dlq_topic, dlq_partition, dlq_offset, value_sha256 FROM dead_letters WHERE id = ANY($1::bigint[]) "
    "ORDER BY id"
)


class ReplayChunks:
    """The chunk action of `dlq_replay` jobs (see `worker.ops.jobs.ChunkResult`), with its Kafka clients."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._consumer: AIOKafkaConsumer | None = None
        self._producer = KafkaProducer(settings)

    async def close(self) -> None:
        await self._producer.stop()
        if self._consumer is not None:
            await self._consumer.stop()

    async def __call__(self, pool: Pool, job: asyncpg.Record, ids: list[int], owner: str) -> bool:
        rows = await pool.fetch(_ROWS, ids)
        try:
            records = await self._fetch(rows)
        except KafkaError as exc:
            raise_outage(exc)  # unreachable, timed out: waited out by the runner
            raise
        results: dict[int, tuple[str, str | None]] = {item: ("skipped", "changed") for item in ids}
        chosen: list[tuple[int, Message]] = []
        for row in rows:
            record = records.get((row["dlq_topic"], row["dlq_partition"], row["dlq_offset"]))
            problem = _problem(row, record)
            if problem is not None or record is None:
                results[row["id"]] = ("failed", problem or "no longer in the DLQ")
                continue
            headers = [(k, v) for k, v in record.headers if k not in _DROPPED]
            headers += [(REPLAY_JOB_HEADER, str(job["id"]).encode()), (REPLAY_ITEM_HEADER, str(row["id"]).encode())]
            chosen.append((row["id"], (record.key, record.value, headers)))
        for item, refused in await self._send(chosen):
            results[item] = ("failed", refused) if refused else ("sent", None)
        sent = [item for item, (result, _) in results.items() if result == "sent"]
        async with pool.acquire() as conn, conn.transaction():
            if not await sql.record_items(conn, job["id"], owner, [(i, r, d) for i, (r, d) in results.items()]):
                return False
            await mark_replayed(conn, sent, job["id"])
        return True

    async def _send(self, chosen: Sequence[tuple[int, Message]]) -> list[tuple[int, str | None]]:
        """Each item with None once acknowledged, or why the broker refused it for good. Outages raise."""
        topic = self._settings.commands_topic
        try:
            await self._producer.send_all(topic, [message for _, message in chosen])
            return [(item, None) for item, _ in chosen]
        except RecordRefusedError:
            pass  # which one is not known from a batch: one at a time
        outcome: list[tuple[int, str | None]] = []
        for item, message in chosen:
            try:
                await self._producer.send_all(topic, [message])
                outcome.append((item, None))
            except RecordRefusedError as exc:
                outcome.append((item, f"refused by the broker: {exc.reason}"))
        return outcome

    async def _fetch(self, rows: Sequence[asyncpg.Record]) -> dict[tuple[str, int, int], Any]:
        """The DLQ records at the rows' coordinates; one missing from the result is no longer in the DLQ."""
        by_partition: dict[TopicPartition, list[int]] = {}
        for row in rows:
            by_partition.setdefault(TopicPartition(row["dlq_topic"], row["dlq_partition"]), []).append(
                row["dlq_offset"]
            )
        consumer = await self._started_consumer()
        found: dict[tuple[str, int, int], Any] = {}
        for tp, offsets in by_partition.items():
            consumer.assign([tp])
            wanted = set(offsets)
            for offset in sorted(wanted):
                if (tp.topic, tp.partition, offset) in found:
                    continue
                for record in await _read_from(consumer, tp, offset):
                    if record.offset in wanted:
                        found[tp.topic, tp.partition, record.offset] = record
        return found

    async def _started_consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                **client_options(self._settings),
                enable_auto_commit=False,
                group_id=None,
                auto_offset_reset="earliest",
            )
            await start_consumer(consumer)
            self._consumer = consumer
        return self._consumer


async def _read_from(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> list[Any]:
    """Records from `offset` on (one fetch's worth), or from the log's start if `offset` was deleted: whatever
    comes back at or past `offset` settles whether the record is still there."""
    consumer.seek(tp, offset)
    deadline = time.monotonic() + _FETCH_SECONDS
    while time.monotonic() < deadline:
        batches = await consumer.getmany(tp, timeout_ms=_POLL_MS, max_records=500)
        records = [record for record in batches.get(tp, []) if record.offset >= offset]
        if records:
            return records
        if offset >= (await consumer.end_offsets([tp]))[tp]:
            return []  # past the end: the topic was deleted and made again
    raise DependencyUnavailableError(f"kafka: nothing read from {tp.topic}[{tp.partition}] at {offset}")


def _problem(row: asyncpg.Record, record: Any) -> str | None:
    if record is None:
        return "no longer in the DLQ"
    if any(key == TRUNCATED_HEADER for key, _ in record.headers):
        return "the DLQ holds a truncated copy"
    expected = row["value_sha256"]
    if expected is not None and hashlib.sha256(record.value or b"").digest() != bytes(expected):
        return "the DLQ record's value differs from the one recorded"
    return None

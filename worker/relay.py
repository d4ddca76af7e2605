"""The outbox relay: publishes outbox rows to the events topic in id order, then deletes them.

One relay publishes at a time across all replicas (a transaction-scoped advisory lock), so events leave in the order
they were written, which is partition order for each customer. Rows are deleted in the transaction that read them,
after the broker acknowledged them: a crash in between rolls the delete back and the rows are published again with
the same `event_id` (at least once, SPEC §5).

A row the broker refuses for good (over `KAFKA_MAX_REQUEST_SIZE`, or refused as too large or invalid) is moved to
`parked_events` in that same transaction, with its reason, and the relay goes on (SPEC §12). Every other failure is
an outage: the rows stay and the relay retries with backoff, without limit.

A refusal that names no cause (Kafka's -1, aiokafka's `UnknownError`) is an outage too, unless the rows sent one at a
time show that one row alone keeps being refused while rows after it on its partition are accepted: that row is
parked as `invalid_record` (see `KafkaProducer.send_each`). Rows held meanwhile (the suspect, its key's later rows,
the later rows of a partition that refuses everything) stay in the outbox for the next round, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import asyncpg
import structlog

from worker.contract.codes import RefusalReason
from worker.faults import crash_point
from worker.outages import OUTAGES, is_outage
from worker.store.outbox import Refusal, park
from worker.tracing import publish_span
from worker.transport.producers import Outcome
from worker.transport.records import Message, RecordRefusedError, UnexplainedRefusalError, record_size

log = structlog.get_logger("worker.relay")

_LOCK_KEY: Final = 0x6375_7374_7265_6C61  # "custrela"
# The lock and the read in one round trip: the materialized lock is taken once, and without it no row is read.
_CLAIM: Final = (
    "WITH relay_lock AS MATERIALIZED (SELECT pg_try_advisory_xact_lock($2) AS held) "
    "SELECT id, event_key, event_type, traceparent, payload, schema_id FROM outbox "
    "WHERE (SELECT held FROM relay_lock) ORDER BY id LIMIT $1"
)
_DELETE: Final = "DELETE FROM outbox WHERE id = ANY($1::bigint[])"


class EventSender(Protocol):
    max_record_size: int

    async def send_all(self, topic: str, messages: Sequence[Message], *, sizes_checked: bool = False) -> object:
        """Raises RecordRefusedError for a refusal for good, anything else for an outage. `sizes_checked`: the
        caller already held every record to `max_record_size`, so the sender does not size them again."""

    async def send_each(self, topic: str, messages: Sequence[Message]) -> list[Outcome]:
        """Each alone, in order: None (acknowledged), RecordRefusedError (for good) or HELD, per message."""


@dataclass(slots=True)
class RelayStats:
    published: int = 0
    parked: int = 0
    rounds: int = 0


class OutboxRelay:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool[asyncpg.Record],
        sender: EventSender,
        topic: str,
        batch_size: int = 1000,
        idle_interval: float = 0.05,
        on_published: Callable[[int], None] | None = None,
        on_parked: Callable[[RefusalReason, int], None] | None = None,
    ) -> None:
        self._pool = pool
        self._sender = sender
        self._topic = topic
        self._batch_size = batch_size
        self._idle_interval = idle_interval
        self._wake = asyncio.Event()
        self._stopping = False
        self._on_published = on_published
        self._on_parked = on_parked
        self.stats = RelayStats()

    def notify(self) -> None:
        """New rows were committed in this process: publish now rather than at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        backoff = 0.1
        while not self._stopping:
            # Cleared before the round, not after: rows committed while this round publishes must wake the next
            # one at once, not after RELAY_IDLE_INTERVAL.
            self._wake.clear()
            try:
                published = await self.publish_once()
            except Exception as exc:  # noqa: BLE001
                # The relay never gives up: an outage or a broker refusal is retried; rows stay in the outbox.
                log.warning("relay_retry", error_type=type(exc).__name__, outage=is_outage(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            if published < self._batch_size:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self._idle_interval)

    async def drain(self, deadline: float) -> None:
        """Publish what is committed until the outbox is empty or the deadline (loop time) passes (SIGTERM)."""
        loop = asyncio.get_running_loop()
        while loop.time() < deadline:
            try:
                published = await asyncio.wait_for(self.publish_once(), timeout=max(deadline - loop.time(), 0.01))
            except (*OUTAGES, asyncpg.PostgresError):  # best effort: what is left stays in the outbox
                return
            if published == 0:
                return

    async def publish_once(self) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_CLAIM, self._batch_size, _LOCK_KEY)
            if not rows:
                return 0
            messages: list[tuple[int, Message]] = []
            refused: list[Refusal] = []
            for row in rows:
                headers = [("event-type", row["event_type"].encode()), ("content-type", b"application/json")]
                if row["traceparent"]:
                    headers.append(("traceparent", row["traceparent"].encode()))
                if row["schema_id"] is not None:
                    headers.append(("schema-id", str(row["schema_id"]).encode()))
                message = (row["event_key"].encode(), bytes(row["payload"]), headers)
                # Sized once, here: too large is parked with its size, and the sender is told not to size it again.
                size = record_size(*message)
                if size > self._sender.max_record_size:
                    refused.append(
                        Refusal(row["id"], RefusalReason.TOO_LARGE, f"{size} bytes over KAFKA_MAX_REQUEST_SIZE")
                    )
                else:
                    messages.append((row["id"], message))
            sent_refused, held = await self._send(messages)
            refused.extend(sent_refused)
            crash_point("after_relay_publish")
            await park(conn, refused)
            await conn.execute(_DELETE, [row["id"] for row in rows if row["id"] not in held])
        published = len(rows) - len(refused) - len(held)
        self.stats.published += published
        self.stats.parked += len(refused)
        self.stats.rounds += 1
        for refusal in refused:
            log.error("event_parked", outbox_id=refusal.outbox_id, reason=refusal.reason, error=refusal.error)
            if self._on_parked is not None:
                self._on_parked(refusal.reason, 1)
        if held:
            log.warning("events_held", count=len(held), cause="broker refusal without a named cause")
        if self._on_published is not None and published:
            self._on_published(published)
        return len(rows) - len(held)

    async def _send(self, messages: Sequence[tuple[int, Message]]) -> tuple[list[Refusal], set[int]]:
        """Publish in order; the refused rows are returned, and the ids of the rows held for a later round. A refused
        batch does not say which record was at fault: then one at a time (rows already acknowledged in the batch go
        out twice, with their stable event_id)."""
        if not messages:
            return [], set()
        batch = [message for _, message in messages]
        try:
            with publish_span(self._topic, batch):
                await self._sender.send_all(self._topic, batch, sizes_checked=True)
            return [], set()
        except (RecordRefusedError, UnexplainedRefusalError):
            pass
        outcomes = await self._sender.send_each(self._topic, batch)
        refused: list[Refusal] = []
        held: set[int] = set()
        for (outbox_id, _), outcome in zip(messages, outcomes, strict=True):
            if isinstance(outcome, RecordRefusedError):
                refused.append(Refusal(outbox_id, outcome.reason, outcome.detail))
            elif outcome is not None:
                held.add(outbox_id)
        return refused, held

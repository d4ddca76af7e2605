"""The use case: settle one batch of raw records, durably, before its offsets may be committed.

The story of a batch, in the order it happens (`BatchService` is the consumer's `BatchSink`):

1. `prepare` — decode: each record becomes a command, a rejection, or a dead letter (`contract.decode`, which also
   authenticates: the HMAC signature is checked there, through `security.SigningKeys`). In a thread, touching no
   dependency, while the previous batch is applied.
2. `apply` — one transaction (`apply_once`, over the unit of work of `store.batch`):
   inbox (duplicates settled without an event) → lock the customers → fold (`domain.fold`) → inline creates of
   `sync: true` (the provider calls, under the customers' locks) → write the customers, the result events (outbox)
   and the provider jobs.
3. Dead letters: copied to the DLQ, acknowledged by the broker.
4. The consumer commits the offsets once `apply` returns; the relay publishes the outbox (woken here).

Outages are waited out and a batch that keeps failing is split down to its poison records (`worker.retries`). No
framework imports: tests drive this without Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg
import structlog

from worker.contract.codes import DlqReason
from worker.contract.connections import Connection, Connections
from worker.contract.decode import Admitted, Command, DeadLetter, DecodeContext, Rejection, decode
from worker.domain.customer import CustomerState, patch_of
from worker.domain.events import OutboxEvent, result_events
from worker.domain.fold import (
    BatchSummary,
    Outcome,
    Patches,
    asking_for_creates,
    final_states,
    first_deliveries,
    fold_batch,
    group_by_customer,
    inbox_keys,
)
from worker.domain.inline import inline_creates, link_inline
from worker.domain.jobs import InlineResult
from worker.isolation import Isolation
from worker.observability import BatchObserver, record_context
from worker.retries import OutageHook, ignore_outage, until_done
from worker.store.batch import BatchTransaction, batch_transaction
from worker.store.probe import probe
from worker.tracing import consume_span, traced
from worker.transport.raw import RawRecord

log = structlog.get_logger("worker.service")


@dataclass(slots=True)
class Prepared:
    """A batch after the first phase: each record's command or rejection (in order), and its dead letters."""

    records: Sequence[RawRecord]
    admitted: list[tuple[RawRecord, Admitted]] = field(default_factory=list)
    letters: list[tuple[RawRecord, DeadLetter]] = field(default_factory=list)
    patches: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    """The commands' patches, made in the first phase (see `worker.domain.fold.Patches`)."""
    seconds: float = 0.0
    """Time spent preparing (decoding), counted in the batch's processing time."""


class DeadLetterSink(Protocol):
    async def send(self, letters: Sequence[tuple[RawRecord, DeadLetter]]) -> None:
        """Returns once the broker acknowledged every letter; raises on failure."""


class InlineCreator(Protocol):
    """The provider create call of `sync: true` (`worker.providers.runner.ProviderJobRunner.create_inline`)."""

    async def create_inline(
        self, connection: Connection, customer: CustomerState, message_id: str, budget_seconds: float
    ) -> InlineResult: ...


@dataclass(slots=True)
class Report:
    records: int = 0
    summary: BatchSummary = field(default_factory=BatchSummary)
    dead_letters: dict[DlqReason, int] = field(default_factory=dict)


Transaction = Callable[[asyncpg.Pool], contextlib.AbstractAsyncContextManager[BatchTransaction]]
"""Opens one batch's unit of work (`store.batch.batch_transaction`; a test may wrap it)."""


def _nothing() -> None:
    return None


class BatchService:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        decode_context: DecodeContext,
        connections: Connections,
        dead_letters: DeadLetterSink,
        poison_max_attempts: int = 3,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_outage: OutageHook = ignore_outage,
        inline: InlineCreator | None = None,
        inline_budget: float = 2.0,
        observer: BatchObserver | None = None,
        on_events: Callable[[], None] = _nothing,
        on_jobs: Callable[[], None] = _nothing,
        transaction: Transaction = batch_transaction,
    ) -> None:
        """`on_events` / `on_jobs`: wake the relay / the provider runner once a batch wrote events / jobs."""
        self._transaction = transaction
        self._pool = pool
        self._decode_context = decode_context
        self._connections = connections
        self._dead_letters = dead_letters
        self._poison_max_attempts = poison_max_attempts
        self._clock = clock
        self._on_outage = on_outage
        self._isolation = Isolation(
            functools.partial(probe, pool), max_attempts=poison_max_attempts, on_outage=on_outage
        )
        self._inline = inline
        self._inline_budget = inline_budget
        self._observer = observer
        self._on_events = on_events
        self._on_jobs = on_jobs

    async def handle(self, records: Sequence[RawRecord]) -> Report:
        """Both phases at once (tests, tools); the consumer runs them apart, see `prepare`."""
        return await self.apply(await self.prepare(records))

    async def prepare(self, records: Sequence[RawRecord]) -> Prepared:
        """The first phase: decode and validate, touching no dependency. The consumer runs it for the next batch
        while the previous one is applied (`apply`), so it must not depend on what `apply` writes."""
        started = time.perf_counter()
        batch = Prepared(records)
        # Off the event loop: a batch of worst-case records costs seconds of CPU, and the consumer's heartbeats, the
        # relay and the previous batch's transaction must go on meanwhile. One thread per batch.
        decoded_all = await asyncio.to_thread(self._decode_all, records, batch.patches)
        for record, decoded in zip(records, decoded_all, strict=True):
            if isinstance(decoded, DeadLetter):
                batch.letters.append((record, decoded))
            else:
                batch.admitted.append((record, decoded))
                if isinstance(decoded, Rejection):
                    _log_rejection(record, decoded)
        batch.seconds = time.perf_counter() - started
        return batch

    async def apply(self, batch: Prepared) -> Report:
        """The second phase: settle every record of a prepared batch, durably (one transaction, the DLQ)."""
        started = time.perf_counter()
        with consume_span(batch.records):
            report = await self._settle(batch)
        if report.summary.events:
            self._on_events()
        if report.summary.enqueued_jobs:
            self._on_jobs()
        if self._observer is not None:
            seconds = batch.seconds + time.perf_counter() - started
            self._observer.batch(report.records, seconds, report.summary, report.dead_letters)
        return report

    async def _settle(self, batch: Prepared) -> Report:
        report = Report(records=len(batch.records))
        admitted = batch.admitted
        letters = list(batch.letters)
        if admitted:
            attempt = functools.partial(self.apply_once, patches=batch.patches)
            report.summary, poisoned = await self._isolation.apply(attempt, admitted)
            letters.extend(poisoned)
        if letters:
            letters.sort(key=lambda letter: (letter[0].partition, letter[0].offset))
            await until_done(lambda: self._dead_letters.send(letters), "kafka", self._on_outage)
            for record, letter in letters:
                report.dead_letters[letter.reason] = report.dead_letters.get(letter.reason, 0) + 1
                with record_context(None, None, record.partition, record.offset):
                    log.warning("dead_lettered", reason=letter.reason.value, error=letter.error)
        return report

    @traced("apply")
    async def apply_once(self, batch: Sequence[Admitted], patches: Patches) -> BatchSummary:
        """One attempt, one transaction: the story of a batch's commands, over the SQL of `store.batch`. Raises
        whatever the attempt met (`apply` retries it); nothing is written then."""
        summary = BatchSummary()
        now = self._clock()
        async with self._transaction(self._pool) as tx:
            # The inbox: a message id seen before (or twice in this batch) is a duplicate, settled without an event.
            fresh = first_deliveries(batch, await tx.record_in_inbox(inbox_keys(batch)), summary)
            commands = [item for item in fresh if isinstance(item, Command)]
            # Lock the customers the commands touch, then fold each one's commands in partition order.
            groups = group_by_customer(commands)
            stored = await tx.lock_customers(groups)
            active = await tx.active_creates(asking_for_creates(commands, groups, stored))
            id_key = await tx.id_key() if len(stored) < len(groups) else b""
            outcomes = fold_batch(
                commands, groups, stored, active, connections=self._connections, now=now, id_key=id_key, patches=patches
            )
            # `sync: true`: the provider creates, made while the transaction holds the customers' locks.
            provider_events = await self._create_inline(outcomes, now)
            # Write: the customers and their result events (one statement), then the provider jobs.
            events = result_events(fresh, outcomes, provider_events, now, summary)
            await tx.write(final_states(outcomes.values()), events)
            await tx.enqueue_jobs(summary.enqueued_jobs)
            await tx.count_for_console(fresh, outcomes.values(), summary, now)
        return summary

    async def _create_inline(self, outcomes: dict[int, Outcome], now: datetime) -> dict[int, OutboxEvent]:
        """Runs the batch's inline creates concurrently; rewrites `outcomes` with their results (`domain.inline`)."""
        inline = self._inline
        targets = inline_creates(outcomes, self._connections) if inline is not None else []
        if inline is None or not targets:
            return {}
        results = await asyncio.gather(
            *(
                inline.create_inline(target.connection, target.request, target.message_id, self._inline_budget)
                for target in targets
            )
        )
        return link_inline(outcomes, targets, results, now)

    def _decode_all(
        self, records: Sequence[RawRecord], patches: dict[tuple[str, str], dict[str, Any]]
    ) -> list[Command | Rejection | DeadLetter]:
        decoded_all = [
            DeadLetter(DlqReason.UNREADABLE_RECORD, record.unreadable)
            if record.unreadable is not None
            else decode(record.value, record.headers, self._decode_context)
            for record in records
        ]
        # Each command's patch too, in this thread: it depends on the command alone, and the apply phase is the one
        # the batches queue behind.
        for decoded in decoded_all:
            if isinstance(decoded, Command):
                # A failure is left to the apply phase, which makes the patch again and treats the record as poison.
                key = (decoded.organization_id, decoded.message_id)
                if key not in patches:  # a later one is a duplicate, never folded (see `Patches`)
                    with contextlib.suppress(Exception):
                        patches[key] = patch_of(decoded.customer)
        return decoded_all


def _log_rejection(record: RawRecord, rejection: Rejection) -> None:
    # Paths and codes only: the rejected values may be personal data.
    with record_context(rejection.organization_id, rejection.message_id, record.partition, record.offset):
        if rejection.record_as_processed:
            log.debug("command_rejected", errors=rejection.errors)
        else:
            log.warning("command_signature_invalid")

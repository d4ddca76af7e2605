"""The use case: answer one batch of raw records, durably, before its offsets may be committed.

`BatchService.handle` returns only when every record of the batch is answered: applied, rejected or skipped in one
database transaction, or copied to the DLQ. Dependency outages (PostgreSQL, the broker) are waited out with
backoff, without limit; a failure that is not an outage (a bug, a value PostgreSQL refuses) is retried a bounded
number of times, then the batch is split and the records that still fail go to the DLQ as `processing_error`.
A timeout splits the batch at once; a record that times out alone while others' writes pass is poison too
(`worker.outages.TimeoutStrikes`).
No framework imports: tests drive this without Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol, TypeVar

import asyncpg
import stamina
import structlog
from asyncpg.pool import PoolConnectionProxy

from worker.contract.codes import DlqReason
from worker.contract.connections import ProviderRegistry
from worker.contract.decode import Command, DeadLetter, DecodeContext, Rejection, decode
from worker.domain.customer import patch_of
from worker.domain.fold import Patches
from worker.observability import record_context, safe_message
from worker.outages import Dependency, DependencyUnavailableError, TimeoutStrikes, is_outage, is_timeout, is_waited_out
from worker.store.batch import BatchSummary, apply_batch
from worker.store.inline import InlineCreate
from worker.store.probe import probe_writes
from worker.tracing import consume_span, traced

log = structlog.get_logger("worker.service")
# stamina's default hooks log `repr(exc)` (an asyncpg DETAIL can quote a row); `until_done` logs retries itself.
stamina.instrumentation.set_on_retry_hooks([])
T = TypeVar("T")


class RawRecord(NamedTuple):
    """A consumed record exactly as read: the DLQ copies key, value and headers byte for byte."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    # Set for an offset the Kafka client could not read (SPEC §12): why, without content; key, value, headers empty.
    unreadable: str | None = None


@dataclass(slots=True)
class DecodedBatch:
    """A batch after the first stage: each record's command or rejection (in order), and its dead letters."""

    records: Sequence[RawRecord]
    answers: list[tuple[RawRecord, Command | Rejection]] = field(default_factory=list)
    letters: list[tuple[RawRecord, DeadLetter]] = field(default_factory=list)
    patches: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    """The commands' patches, made in the first stage (see `worker.domain.fold.Patches`)."""


class DeadLetterSink(Protocol):
    async def send(self, letters: Sequence[tuple[RawRecord, DeadLetter]]) -> None:
        """Returns once the broker acknowledged every letter; raises on failure."""


@dataclass(slots=True)
class BatchReport:
    records: int = 0
    summary: BatchSummary = field(default_factory=BatchSummary)
    dead_letters: dict[str, int] = field(default_factory=dict)


OutageHook = Callable[[Dependency, bool], None]
"""Called with (dependency, available): False on each retry during an outage, True once the operation succeeded."""


def _ignore(dependency: Dependency, available: bool) -> None:
    return None


async def until_done(
    operation: Callable[[], Awaitable[T]],
    dependency: Dependency,
    on_outage: OutageHook = _ignore,
    *,
    outage: Callable[[BaseException], bool] = is_outage,
) -> T:
    """Retry `operation` through outages, with capped exponential backoff and jitter, for as long as it takes.

    Each failed attempt is logged here, through the redaction pipeline (type and a short message without data);
    stamina's own retry hooks, which log `repr(exc)`, are switched off below."""
    failed = False
    async for attempt in stamina.retry_context(on=outage, attempts=None, timeout=None, wait_max=5.0):
        with attempt:
            try:
                result = await operation()
            except Exception as exc:
                if outage(exc):
                    failed = True
                    log.warning(
                        "dependency_retry",
                        dependency=dependency,
                        attempt=attempt.num,
                        error_type=type(exc).__name__,
                        error=safe_message(exc),
                    )
                    on_outage(dependency, False)
                raise
            if failed:
                on_outage(dependency, True)
            return result
    raise AssertionError("unreachable: retry_context without limits only ends by returning or raising")


class PoisonError(Exception):
    """Raised for a record that fails the same way on every attempt."""


class TimedOutError(PoisonError):
    """Raised at once for a timeout (not counted as an attempt): the batch is split to find out whose it is."""


class BatchService:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        decode_context: DecodeContext,
        registry: ProviderRegistry,
        dead_letters: DeadLetterSink,
        poison_max_attempts: int = 3,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_outage: OutageHook = _ignore,
        inline: InlineCreate | None = None,
    ) -> None:
        self._on_outage = on_outage
        self._inline = inline
        self._pool = pool
        self._decode_context = decode_context
        self._registry = registry
        self._dead_letters = dead_letters
        self._poison_max_attempts = poison_max_attempts
        self._clock = clock

    async def handle(self, records: Sequence[RawRecord]) -> BatchReport:
        """Both stages at once (tests, tools); the consumer runs them apart, see `decode`."""
        return await self.apply(await self.decode(records))

    async def decode(self, records: Sequence[RawRecord]) -> DecodedBatch:
        """The first stage: decode and validate, touching no dependency. The consumer runs it for the next batch
        while the previous one is applied (`apply`), so it must not depend on what `apply` writes."""
        batch = DecodedBatch(records)
        # Off the event loop: a batch of worst-case records costs seconds of CPU, and the consumer's heartbeats, the
        # relay and the previous batch's transaction must go on meanwhile. One thread per batch.
        decoded_all = await asyncio.to_thread(self._decode_all, records, batch.patches)
        for record, decoded in zip(records, decoded_all, strict=True):
            if isinstance(decoded, DeadLetter):
                batch.letters.append((record, decoded))
            else:
                batch.answers.append((record, decoded))
                if isinstance(decoded, Rejection):
                    _log_rejection(record, decoded)
        return batch

    async def apply(self, batch: DecodedBatch) -> BatchReport:
        """The second stage: answer every record of a decoded batch, durably (one transaction, the DLQ)."""
        with consume_span(batch.records):
            return await self._answer(batch)

    async def _answer(self, batch: DecodedBatch) -> BatchReport:
        report = BatchReport(records=len(batch.records))
        answers = batch.answers
        letters = list(batch.letters)
        if answers:
            try:
                report.summary = await self._apply([answer for _, answer in answers], batch.patches)
            except PoisonError as exc:
                split = isinstance(exc, TimedOutError) and len(answers) > 1  # the whole batch again would time out
                parts = [answers[: len(answers) // 2], answers[len(answers) // 2 :]] if split else [answers]
                report.summary, poisoned = await self._apply_bisecting(parts, batch.patches)
                letters.extend(poisoned)
        if letters:
            letters.sort(key=lambda letter: (letter[0].partition, letter[0].offset))
            await until_done(lambda: self._dead_letters.send(letters), "kafka", self._on_outage)
            for record, letter in letters:
                report.dead_letters[letter.reason.value] = report.dead_letters.get(letter.reason.value, 0) + 1
                with record_context(None, None, record.partition, record.offset):
                    log.warning("dead_lettered", reason=letter.reason.value, error=letter.error)
        return report

    def _decode_all(
        self, records: Sequence[RawRecord], patches: dict[tuple[str, str], dict[str, Any]]
    ) -> list[Command | Rejection | DeadLetter]:
        decoded_all = [
            DeadLetter(DlqReason.UNREADABLE_RECORD, record.unreadable)
            if record.unreadable is not None
            else decode(record.value, record.headers, self._decode_context)
            for record in records
        ]
        # Each command's patch too, in this thread: it depends on the command alone, and the apply stage is the one
        # the batches queue behind.
        for decoded in decoded_all:
            if isinstance(decoded, Command):
                # A failure is left to the apply stage, which makes the patch again and treats the record as poison.
                key = (decoded.organization_id, decoded.message_id)
                if key not in patches:  # a later one is a duplicate, never folded (see `Patches`)
                    with contextlib.suppress(Exception):
                        patches[key] = patch_of(decoded.customer)
        return decoded_all

    async def _apply(
        self, answers: Sequence[Command | Rejection], patches: Patches, attempts: int | None = None
    ) -> BatchSummary:
        limit = attempts or self._poison_max_attempts
        failures = 0
        while True:
            try:
                return await until_done(
                    lambda: self._apply_once(answers, patches), "postgres", self._on_outage, outage=is_waited_out
                )
            except Exception as exc:  # anything but an outage counts towards the poison limit
                if is_timeout(exc):
                    raise TimedOutError(type(exc).__name__) from exc
                failures += 1
                log.error(
                    "batch_failed",
                    error_type=type(exc).__name__,
                    attempt=failures,
                    max_attempts=limit,
                    size=len(answers),
                )
                if failures >= limit:
                    raise PoisonError(type(exc).__name__) from exc
                await asyncio.sleep(min(0.1 * 2**failures, 2.0))

    @traced("apply")
    async def _apply_once(self, answers: Sequence[Command | Rejection], patches: Patches) -> BatchSummary:
        async with _connection(self._pool) as conn:
            try:
                return await apply_batch(
                    conn, answers, registry=self._registry, now=self._clock(), inline=self._inline, patches=patches
                )
            except asyncpg.ReadOnlySQLTransactionError:
                # A demoted primary keeps answering read-only on this connection: drop it, so that the next
                # attempt connects again (to the new primary, once the DSN's name or host list leads there).
                conn.terminate()
                raise

    async def _apply_bisecting(
        self, parts: Sequence[Sequence[tuple[RawRecord, Command | Rejection]]], patches: Patches
    ) -> tuple[BatchSummary, list[tuple[RawRecord, DeadLetter]]]:
        """Isolate the poison by bisection, halves in order, so the good records are still applied in order."""
        total = BatchSummary()
        poisoned: list[tuple[RawRecord, DeadLetter]] = []
        pending = list(parts)
        timeouts = TimeoutStrikes(self._poison_max_attempts)
        while pending:
            part = pending.pop(0)
            single = len(part) == 1
            try:
                summary = await self._apply(
                    [answer for _, answer in part], patches, attempts=self._poison_max_attempts if single else 1
                )
            except TimedOutError as exc:
                if single and await self._timed_out_alone(part[0][0], timeouts):
                    poisoned.append((part[0][0], DeadLetter(DlqReason.PROCESSING_ERROR, f"timed out alone: {exc}")))
                else:  # a single one again, in place (the order of its customer's commands holds), or the halves
                    pending[:0] = [part] if single else [part[: len(part) // 2], part[len(part) // 2 :]]
                continue
            except PoisonError as exc:
                if single:
                    poisoned.append((part[0][0], DeadLetter(DlqReason.PROCESSING_ERROR, f"failed repeatedly: {exc}")))
                else:
                    middle = len(part) // 2
                    pending[:0] = [part[:middle], part[middle:]]
                continue
            total.add(summary)
        return total, poisoned

    async def _timed_out_alone(self, record: RawRecord, timeouts: TimeoutStrikes) -> bool:
        """Whether `record`, which just timed out alone, is poison. Probes the writes of others first: a probe that
        fails too makes it the server's timeout, waited out here, not the record's."""
        try:
            await self._probe()
            others_pass = True
        except Exception as exc:
            if not is_outage(exc):
                raise
            others_pass = False
            await until_done(self._probe, "postgres", self._on_outage)
        strikes = timeouts.timed_out((record.partition, record.offset), others_pass=others_pass)
        with record_context(None, None, record.partition, record.offset):
            log.warning(
                "record_timed_out", others_pass=others_pass, strikes=strikes, max_attempts=self._poison_max_attempts
            )
        if strikes is not None and others_pass:
            await asyncio.sleep(min(0.1 * 2**strikes, 2.0))  # a lock held on the record's row may be released
        return strikes is None

    async def _probe(self) -> None:
        async with _connection(self._pool) as conn:
            await probe_writes(conn)


@contextlib.asynccontextmanager
async def _connection(pool: asyncpg.Pool[asyncpg.Record]) -> AsyncIterator[PoolConnectionProxy[asyncpg.Record]]:
    """A pooled connection; failing to get one in time (a connect timeout) is an outage, never a record's timeout."""
    try:
        conn = await pool.acquire()
    except TimeoutError as exc:
        raise DependencyUnavailableError("no database connection in time") from exc
    try:
        yield conn
    finally:
        await pool.release(conn)


def _log_rejection(record: RawRecord, rejection: Rejection) -> None:
    # Paths and codes only: the rejected values may be personal data.
    with record_context(rejection.organization_id, rejection.message_id, record.partition, record.offset):
        if rejection.record_as_processed:
            log.debug("command_rejected", errors=rejection.errors)
        else:
            log.warning("command_signature_invalid")

"""A batch that keeps failing, isolated down to its poison records (`Isolation`).

A failure that is not an outage (a bug, a value PostgreSQL refuses) is retried a bounded number of times
(`POISON_MAX_ATTEMPTS`), then the batch is split, halves in order, and the records that still fail alone are
dead-lettered as `processing_error`; outages are waited out meanwhile (`worker.retries.until_done`). A timeout splits
the batch at once; a record that times out alone while others' writes pass is poison too
(`worker.outages.TimeoutStrikes`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import structlog

from worker.contract.codes import DlqReason
from worker.contract.decode import Admitted, DeadLetter
from worker.domain.fold import BatchSummary
from worker.observability import record_context
from worker.outages import TimeoutStrikes, is_outage, is_timeout, is_waited_out
from worker.retries import OutageHook, ignore_outage, until_done
from worker.transport.raw import RawRecord

log = structlog.get_logger("worker.service")

Attempt = Callable[[Sequence[Admitted]], Awaitable[BatchSummary]]
"""One attempt at applying records in one transaction (`worker.service.BatchService.apply_once`)."""
Part = Sequence[tuple[RawRecord, Admitted]]


class PoisonError(Exception):
    """Raised for a record that fails the same way on every attempt."""


class TimedOutError(PoisonError):
    """Raised at once for a timeout (not counted as an attempt): the batch is split to find out whose it is."""


class Isolation:
    def __init__(
        self, probe: Callable[[], Awaitable[None]], *, max_attempts: int, on_outage: OutageHook = ignore_outage
    ) -> None:
        """`probe`: do writes like a batch's pass right now (`worker.store.probe`)?"""
        self._probe = probe
        self._max_attempts = max_attempts
        self._on_outage = on_outage

    async def apply(self, attempt: Attempt, admitted: Part) -> tuple[BatchSummary, list[tuple[RawRecord, DeadLetter]]]:
        """Applies the records, whole if it can; otherwise in parts, returning the poison records' dead letters."""
        try:
            return await self._retried(attempt, [item for _, item in admitted]), []
        except PoisonError as exc:
            split = isinstance(exc, TimedOutError) and len(admitted) > 1  # the whole batch again would time out
            middle = len(admitted) // 2
            return await self._bisected(attempt, [admitted[:middle], admitted[middle:]] if split else [admitted])

    async def _retried(self, attempt: Attempt, batch: Sequence[Admitted], attempts: int | None = None) -> BatchSummary:
        limit = attempts or self._max_attempts
        failures = 0
        while True:
            try:
                return await until_done(lambda: attempt(batch), "postgres", self._on_outage, outage=is_waited_out)
            except Exception as exc:  # anything but an outage counts towards the poison limit
                if is_timeout(exc):
                    raise TimedOutError(type(exc).__name__) from exc
                failures += 1
                log.error(
                    "batch_failed",
                    error_type=type(exc).__name__,
                    attempt=failures,
                    max_attempts=limit,
                    size=len(batch),
                )
                if failures >= limit:
                    raise PoisonError(type(exc).__name__) from exc
                await asyncio.sleep(min(0.1 * 2**failures, 2.0))

    async def _bisected(
        self, attempt: Attempt, parts: Sequence[Part]
    ) -> tuple[BatchSummary, list[tuple[RawRecord, DeadLetter]]]:
        """Isolate the poison by bisection, halves in order, so the good records are still applied in order."""
        total = BatchSummary()
        poisoned: list[tuple[RawRecord, DeadLetter]] = []
        pending = list(parts)
        timeouts = TimeoutStrikes(self._max_attempts)
        while pending:
            part = pending.pop(0)
            single = len(part) == 1
            try:
                summary = await self._retried(
                    attempt, [item for _, item in part], attempts=self._max_attempts if single else 1
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
            log.warning("record_timed_out", others_pass=others_pass, strikes=strikes, max_attempts=self._max_attempts)
        if strikes is not None and others_pass:
            await asyncio.sleep(min(0.1 * 2**strikes, 2.0))  # a lock held on the record's row may be released
        return strikes is None

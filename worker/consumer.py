"""The commands consumer: aiokafka directly, two overlapped stages, offsets committed per batch and partition.

FastStream's subscriber cannot do this through its public API (docs/decisions/0001-commands-consumer-on-aiokafka.md):
its poll loop sleeps a whole `BATCH_TIMEOUT_MS` after every empty poll, its batch parser fails a batch on one
non-UTF-8 header, its ack commits every assigned partition's position, and nothing of it lets a stop wait for a batch
applied outside the handler. So this module owns the loop, and the rules it keeps:
* unreadable records (a header key that is not UTF-8, a corrupt batch) become placeholders (`transport.salvage`),
  dead-lettered as `unreadable_record`, instead of sticking their partition;
* the reset policy is `earliest` (SPEC §11), the isolation level `read_committed` (an aborted transaction's
  records are never applied); nothing auto-commits: offsets are committed per partition, only after the batch is
  settled;
* a batch that cannot be settled is sought back to its first offsets, so its records are read again.

Two stages, overlapped, through the sink (`BatchSink`, implemented by `worker.service.BatchService`): `prepare`
(decode, in a thread) runs for batch N+1 while batch N is applied (`apply`) and committed by a task of its own. At
most one batch is applied at a time, in poll order. Should the batch in flight fail, it seeks back to its first
offsets and the batch prepared after it is dropped unapplied and uncommitted (both are read again); a revocation and
a stop wait for the batch in flight first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, Protocol, TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, ConsumerStoppedError, IllegalStateError, KafkaError

from worker.faults import crash_point
from worker.retries import until_done
from worker.settings import Settings
from worker.transport.options import client_options
from worker.transport.producers import raise_outage
from worker.transport.raw import RawRecord
from worker.transport.salvage import install

log = structlog.get_logger("worker.consumer")

P = TypeVar("P")
AssignmentHook = Callable[[set[int]], None]
DeliveryHook = Callable[[Mapping[int, int]], None]
Records = tuple[ConsumerRecord[Any, Any], ...]
_POLL_RETRY_SECONDS: Final = 1.0


class BatchSink(Protocol[P]):
    """Where the consumer's batches go, in two phases (in the spirit of Kafka Connect's put / flush / preCommit)."""

    async def prepare(self, records: Sequence[RawRecord]) -> P:
        """The first phase (decode): touches no dependency, since it runs while the previous batch is applied."""

    async def apply(self, prepared: P) -> object:
        """The second phase: settles every record durably; the offsets are committed once it returns."""


@dataclass(frozen=True, slots=True)
class _InFlight:
    records: Records
    task: asyncio.Task[bool]
    """True once the batch is settled and its offsets committed; False if it was abandoned (and rewound)."""


class _Assignment(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka ships no type hints
    def __init__(self, hook: AssignmentHook, before_revoke: Callable[[], Awaitable[None]]) -> None:
        self._hook = hook
        self._before_revoke = before_revoke
        self._partitions: set[int] = set()

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._before_revoke()
        self._partitions -= {tp.partition for tp in revoked}
        self._hook(set(self._partitions))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._partitions = {tp.partition for tp in assigned}
        self._hook(set(self._partitions))


async def _commit_or_outage(consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
    try:
        await consumer.commit(offsets)
    except KafkaError as exc:
        raise_outage(exc)
        raise


class CommandConsumer(Generic[P]):
    def __init__(
        self,
        settings: Settings,
        sink: BatchSink[P],
        on_assignment: AssignmentHook,
        *,
        grace: float,
        on_delivered: DeliveryHook | None = None,
    ) -> None:
        """`grace`: how long a stop waits for the batch in flight (`worker.shutdown.BATCH_IN_FLIGHT`);
        `on_delivered`: told each batch's highest offset per partition as it arrives (the liveness check)."""
        install()  # unreadable records become placeholders, dead-lettered, instead of sticking their partition
        self._settings = settings
        self._sink = sink
        self._on_assignment = on_assignment
        self._grace = grace
        self._on_delivered = on_delivered
        self._kafka: AIOKafkaConsumer | None = None
        self._poller: asyncio.Task[None] | None = None
        self._inflight: _InFlight | None = None
        self._stopping = False
        self._revocations = 0
        self._polled_after = 0  # revocations before the last poll returned

    async def start(self) -> None:
        """Joins the group and starts polling; raises `DependencyUnavailableError` for a broker that is not there."""
        settings = self._settings
        kafka = AIOKafkaConsumer(
            **client_options(settings),
            group_id=settings.kafka_group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",  # a producer's aborted transaction is never applied (issue 18)
            # The broker holds a fetch up to this long when it has nothing: it bounds the idle latency.
            fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
            session_timeout_ms=settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=max(settings.kafka_session_timeout_ms // 5, 200),
            max_partition_fetch_bytes=settings.kafka_max_request_size,
            fetch_max_bytes=max(50 * 1024 * 1024, settings.kafka_max_request_size),
        )
        kafka.subscribe([settings.commands_topic], listener=_Assignment(self._on_assignment, self._before_revoke))
        try:
            await kafka.start()
        except BaseException as exc:
            # A half-started consumer would keep its connections: stop it so the next attempt starts clean.
            with contextlib.suppress(Exception):
                await kafka.stop()
            raise_outage(exc)
            raise
        self._kafka = kafka
        self._poller = asyncio.create_task(self._poll(kafka), name="commands-consumer")

    async def stop(self) -> None:
        """The batch in flight is settled and committed (or abandoned after the grace) before the group is left."""
        self._stopping = True
        inflight = self._inflight
        if inflight is not None and not inflight.task.done():
            log.info("consumer_stop_waits", records=len(inflight.records), timeout=self._grace)
            _, pending = await asyncio.wait([inflight.task], timeout=self._grace)
            if pending:
                # Abandoned, uncommitted: the transaction rolls back and the records are read again next time.
                log.warning("batch_abandoned_at_stop", records=len(inflight.records))
                inflight.task.cancel()
                await asyncio.wait([inflight.task])
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        if self._kafka is not None:
            await _stop_client(self._kafka)

    def client(self) -> AIOKafkaConsumer | None:
        """The aiokafka consumer once started (the lag collector reads offsets through it), else None."""
        return self._kafka

    async def _poll(self, kafka: AIOKafkaConsumer) -> None:
        settings = self._settings
        while not self._stopping:
            try:
                # Returns as soon as a record arrives, or after BATCH_TIMEOUT_MS with none.
                batches = await kafka.getmany(timeout_ms=settings.batch_timeout_ms, max_records=settings.batch_size)
            except ConsumerStoppedError:
                return
            except Exception as exc:  # noqa: BLE001 - the loop outlives a failed poll; the records are read again
                log.warning("consumer_poll_failed", error_type=type(exc).__name__)
                await asyncio.sleep(_POLL_RETRY_SECONDS)
                continue
            self._polled_after = self._revocations
            records = tuple(record for records in batches.values() for record in records)
            if records:
                await self._on_batch(records)

    async def _on_batch(self, records: Records) -> None:
        polled_after = self._polled_after
        if self._on_delivered is not None:
            # Records are in offset order per partition: the last one of each is its highest.
            self._on_delivered({record.partition: record.offset for record in records})
        try:
            prepared = await self._sink.prepare([RawRecord.of(record) for record in records])
        except Exception:
            log.exception("batch_abandoned", records=len(records))
            if await self._previous_settled(records):
                self._rewind(records)
            return
        if not await self._previous_settled(records):
            return
        if self._stopping or polled_after != self._revocations:
            return  # not applied, not committed: read again by whoever owns the partitions next
        self._inflight = _InFlight(records, asyncio.create_task(self._apply(records, prepared)))
        await asyncio.sleep(0)  # the apply starts before the next poll

    async def _previous_settled(self, records: Records) -> bool:
        """Waits for the batch in flight. False if it failed: then `records`, polled after it, are dropped and read
        again after it (the seek covers both, whichever was polled first on a partition)."""
        previous = self._inflight
        if previous is None:
            return True
        await asyncio.wait([previous.task])
        self._inflight = None
        if _succeeded(previous.task):
            return True
        self._rewind(previous.records + records)
        return False

    async def _apply(self, records: Records, prepared: P) -> bool:
        try:
            await self._sink.apply(prepared)
            crash_point("after_db_commit")
            await self._commit(records)
        except Exception:
            log.exception("batch_abandoned", records=len(records))
            self._rewind(records)
            return False
        return True

    async def _before_revoke(self) -> None:
        """The batch in flight is settled and its offsets committed while the partitions are still ours."""
        self._revocations += 1
        inflight = self._inflight
        if inflight is not None:
            await asyncio.wait([inflight.task])

    async def _commit(self, records: Records) -> None:
        offsets: dict[TopicPartition, int] = {}
        for record in records:
            partition = TopicPartition(record.topic, record.partition)
            offsets[partition] = max(offsets.get(partition, 0), record.offset + 1)
        kafka = self._kafka
        assert kafka is not None
        try:
            await until_done(lambda: _commit_or_outage(kafka, offsets), "kafka")
        except (CommitFailedError, IllegalStateError) as exc:
            # The partitions moved to another consumer mid-batch. The batch is applied in PostgreSQL; the new owner
            # reads it again and the inbox settles each record as a duplicate.
            log.warning("commit_skipped_after_rebalance", error_type=type(exc).__name__)

    def _rewind(self, records: Records) -> None:
        kafka = self._kafka
        if kafka is None:
            return
        first: dict[TopicPartition, int] = {}
        for record in records:
            partition = TopicPartition(record.topic, record.partition)
            first[partition] = min(first.get(partition, record.offset), record.offset)
        for partition, offset in first.items():
            try:
                kafka.seek(partition, offset)
            except IllegalStateError:
                continue


async def _stop_client(kafka: AIOKafkaConsumer) -> None:
    """Leaves the group and closes the connections. aiokafka 0.14's `stop` cancels the fetch requests in flight and
    awaits them unguarded (`Fetcher.close`: `x.cancel(); await x`), so with the broker gone their CancelledError
    escapes `stop` although nothing cancelled the caller, and the client's connections stay open. That one is
    absorbed here and the client closed; a cancellation of the caller (a stop past its share) still propagates."""
    try:
        await kafka.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.debug("consumer_fetch_cancelled_at_stop")
        await kafka._client.close()  # what the interrupted `stop` had left to do


def _succeeded(task: asyncio.Task[bool]) -> bool:
    return not task.cancelled() and task.result()

"""The commands consumer: a FastStream batch subscriber with manual commits (the only FastStream code).

FastStream 0.7 traps this module avoids:
* aiokafka raises, forever, on a record it cannot parse (a header key that is not UTF-8, a corrupt batch): see
  `salvage`, which makes placeholders of them that are dead-lettered as `unreadable_record`;
* its batch parser decodes every header as UTF-8 and fails the whole batch on one bad header: a raw parser and
  decoder hand the untouched aiokafka records to the handler instead;
* a raising handler's batch is neither committed nor re-read: the handler never raises, and seeks back to the
  batch's first offsets if anything unexpected escapes, so the records are read again;
* the default reset policy is `latest`: set to `earliest` (SPEC §11);
* the default ack policy auto-commits: MANUAL, and offsets are committed explicitly, per partition, only after the
  batch is answered.

Two stages, overlapped: the handler decodes batch N+1 (in a thread) while batch N is applied and committed by a task
of its own, and FastStream polls again as soon as the handler returns. At most one batch is applied at a time, in
poll order. Should the batch in flight fail, it seeks back to its first offsets and the batch decoded after it is
dropped unapplied and uncommitted (both are read again); a revocation and a stop wait for the batch in flight first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import structlog
from aiokafka import ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.message import KafkaMessage as KafkaMessageClass
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from worker.faults import crash_point
from worker.service import RawRecord, until_done
from worker.settings import Settings
from worker.transport.options import ssl_context
from worker.transport.producers import raise_outage
from worker.transport.salvage import UnreadableRecord, install

log = structlog.get_logger("worker.consumer")

Finish = Callable[[], Awaitable[None]]
BatchHandler = Callable[[Sequence[RawRecord]], Awaitable[Finish]]
"""The first stage (decode) of a batch, returning its second (answer the records durably). The first stage of the
next batch runs while the second stage of this one does, so it must not depend on what the second stage writes."""
AssignmentHook = Callable[[set[int]], None]
Records = tuple[ConsumerRecord[Any, Any], ...]


@dataclass(frozen=True, slots=True)
class _InFlight:
    records: Records
    task: asyncio.Task[bool]
    """True once the batch is answered and its offsets committed; False if it was abandoned (and rewound)."""


class _NoCommitConsumer:
    """The consumer handle a message carries. FastStream's ack would commit through it; with `AckPolicy.MANUAL` the
    ack is never used (`CommandConsumer` commits per partition itself), so it commits and seeks nothing. Ours, not
    FastStream's internal `FAKE_CONSUMER` (faststream 0.7.8 exports no public one)."""

    async def commit(self) -> None:
        return None

    def seek(self, partition: TopicPartition, offset: int) -> None:
        return None


_NO_COMMIT: Final = _NoCommitConsumer()


def _raw_parser(records: tuple[ConsumerRecord[Any, Any], ...]) -> KafkaMessageClass:
    return KafkaMessageClass(
        raw_message=records,
        body=b"",
        message_id=f"{records[0].partition}-{records[0].offset}" if records else None,
        consumer=_NO_COMMIT,
    )


def _raw_decoder(message: KafkaMessageClass) -> Any:
    return None


def security(settings: Settings) -> BaseSecurity | None:
    context = ssl_context(settings)
    protocol = settings.kafka_security_protocol
    if protocol in ("PLAINTEXT",):
        return None
    if protocol == "SSL":
        return BaseSecurity(ssl_context=context, use_ssl=True)
    username = settings.kafka_sasl_username or ""
    password = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
    use_ssl = protocol == "SASL_SSL"
    mechanism = settings.kafka_sasl_mechanism or "PLAIN"
    if mechanism == "SCRAM-SHA-256":
        return SASLScram256(username, password, ssl_context=context, use_ssl=use_ssl)
    if mechanism == "SCRAM-SHA-512":
        return SASLScram512(username, password, ssl_context=context, use_ssl=use_ssl)
    return SASLPlaintext(username, password, ssl_context=context, use_ssl=use_ssl)


class _Assignment(ConsumerRebalanceListener):  # type: ignore[misc]
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


async def _commit_or_outage(consumer: Any, offsets: dict[TopicPartition, int]) -> None:
    try:
        await consumer.commit(offsets)
    except KafkaError as exc:
        raise_outage(exc)
        raise


async def start_broker(consumer: CommandConsumer) -> None:
    try:
        await consumer.broker.start()
    except BaseException as exc:
        # A half-started broker would keep its consumer: stop it so the next attempt starts clean.
        with contextlib.suppress(Exception):
            await consumer.broker.stop()
        raise_outage(exc)
        raise


class CommandConsumer:
    def __init__(self, settings: Settings, handler: BatchHandler, on_assignment: AssignmentHook) -> None:
        self._handler = handler
        install()  # unreadable records become placeholders, dead-lettered, instead of sticking their partition
        self.broker = KafkaBroker(
            settings.kafka_bootstrap_servers,
            security=security(settings),
            client_id="customer-worker",
            # FastStream cancels a batch still running after this and closes the consumer (nothing committed);
            # the rest of SHUTDOWN_TIMEOUT is for draining the outbox.
            graceful_timeout=settings.shutdown_timeout * 0.5,
            logger=logging.getLogger("faststream"),
            consumer_only=True,
        )
        self.subscriber = self.broker.subscriber(
            settings.commands_topic,
            group_id=settings.kafka_group_id,
            batch=True,
            max_records=settings.batch_size,
            batch_timeout_ms=settings.batch_timeout_ms,
            # The broker holds a fetch up to this long when it has nothing: it bounds the idle latency.
            fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
            auto_offset_reset="earliest",
            isolation_level="read_committed",  # a producer's aborted transaction is never applied (issue 18)
            ack_policy=AckPolicy.MANUAL,
            parser=_raw_parser,
            decoder=_raw_decoder,
            session_timeout_ms=settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=max(settings.kafka_session_timeout_ms // 5, 200),
            max_partition_fetch_bytes=settings.kafka_max_request_size,
            fetch_max_bytes=max(50 * 1024 * 1024, settings.kafka_max_request_size),
            listener=_Assignment(on_assignment, self._before_revoke),
        )
        self.subscriber(self._on_batch)
        self._batch_timeout_ms = settings.batch_timeout_ms
        self._max_records = settings.batch_size
        self._graceful_timeout = settings.shutdown_timeout * 0.5
        self._inflight: _InFlight | None = None
        self._stopping = False
        self._revocations = 0
        self._polled_after = 0  # revocations before the last poll returned
        # Whoever stops the broker, the batch in flight is answered and committed (or abandoned after the graceful
        # timeout) before FastStream closes the Kafka consumer.
        self._stop_subscriber = self.subscriber.stop
        self.subscriber.stop = self._stop  # type: ignore[method-assign]
        # FastStream's batch poll sleeps another BATCH_TIMEOUT_MS after every empty poll: up to that much latency
        # added to the first record after a quiet spell. This poll returns as soon as a record arrives.
        self.subscriber.get_msg = self._poll  # type: ignore[method-assign]

    async def _poll(self, consumer: Any) -> tuple[ConsumerRecord[Any, Any], ...]:
        batches = await consumer.getmany(timeout_ms=self._batch_timeout_ms, max_records=self._max_records)
        self._polled_after = self._revocations
        return tuple(record for records in batches.values() for record in records)

    async def _on_batch(self, body: Any, message: KafkaMessage) -> None:
        records: Records = message.raw_message
        if not records:
            return
        polled_after = self._polled_after
        try:
            finish = await self._handler(
                [
                    RawRecord(
                        topic=record.topic,
                        partition=record.partition,
                        offset=record.offset,
                        key=record.key,
                        value=record.value,
                        headers=tuple(record.headers),
                        unreadable=record.unreadable if isinstance(record, UnreadableRecord) else None,
                    )
                    for record in records
                ]
            )
        except Exception:
            log.exception("batch_abandoned", records=len(records))
            finish = None
        previous = self._inflight
        if previous is not None:
            await asyncio.wait([previous.task])
            self._inflight = None
            if not _succeeded(previous.task):
                # Polled after a batch that was not answered: dropped, and read again after it (the seek covers
                # both, whichever was polled first on a partition).
                self._rewind(previous.records + records)
                return
        if finish is None:
            self._rewind(records)
            return
        if self._stopping or polled_after != self._revocations:
            return  # not applied, not committed: read again by whoever owns the partitions next
        self._inflight = _InFlight(records, asyncio.create_task(self._answer(records, finish)))

    async def _answer(self, records: Records, finish: Finish) -> bool:
        try:
            await finish()
            crash_point("after_db_commit")
            await self._commit(records)
        except Exception:
            log.exception("batch_abandoned", records=len(records))
            self._rewind(records)
            return False
        return True

    async def _before_revoke(self) -> None:
        """The batch in flight is answered and its offsets committed while the partitions are still ours."""
        self._revocations += 1
        inflight = self._inflight
        if inflight is not None:
            await asyncio.wait([inflight.task])

    async def _stop(self) -> None:
        self._stopping = True
        inflight = self._inflight
        if inflight is not None and not inflight.task.done():
            log.info("consumer_stop_waits", records=len(inflight.records), timeout=self._graceful_timeout)
            _, pending = await asyncio.wait([inflight.task], timeout=self._graceful_timeout)
            if pending:
                # Abandoned, uncommitted: the transaction rolls back and the records are read again next time.
                log.warning("batch_abandoned_at_stop", records=len(inflight.records))
                inflight.task.cancel()
                await asyncio.wait([inflight.task])
        await self._stop_subscriber()

    async def _commit(self, records: Records) -> None:
        offsets: dict[TopicPartition, int] = {}
        for record in records:
            partition = TopicPartition(record.topic, record.partition)
            offsets[partition] = max(offsets.get(partition, 0), record.offset + 1)
        consumer = self.subscriber.consumer
        assert consumer is not None
        try:
            await until_done(lambda: _commit_or_outage(consumer, offsets), "kafka")
        except (CommitFailedError, IllegalStateError) as exc:
            # The partitions moved to another consumer mid-batch. The batch is applied in PostgreSQL; the new owner
            # reads it again and the inbox answers each record as a duplicate.
            log.warning("commit_skipped_after_rebalance", error_type=type(exc).__name__)

    def _rewind(self, records: Records) -> None:
        consumer = self.subscriber.consumer
        if consumer is None:
            return
        first: dict[TopicPartition, int] = {}
        for record in records:
            partition = TopicPartition(record.topic, record.partition)
            first[partition] = min(first.get(partition, record.offset), record.offset)
        for partition, offset in first.items():
            try:
                consumer.seek(partition, offset)
            except IllegalStateError:
                continue


def _succeeded(task: asyncio.Task[bool]) -> bool:
    return not task.cancelled() and task.result()

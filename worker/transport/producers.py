"""Producers for the DLQ (SPEC §7) and the events topic (SPEC §6). Plain aiokafka: sends are pipelined and the
caller awaits the broker's acknowledgement of the whole set before it commits anything.

A send ends in one of three ways: acknowledged; `RecordRefusedError` (the record's own fault: too large, invalid;
never worth retrying); or `DependencyUnavailableError` (anything else: connection loss, leader change, timeout,
throttling, authorization: waited out by the caller without limit). `UnexplainedRefusalError`, one of the latter, is
a refusal that names no cause (-1 and the codes aiokafka has no class for): sent one at a time (`send_each`), a
record that alone keeps being refused while the records after it on its partition are accepted is refused for good;
when the broker refuses everything, it is an outage."""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder

from worker.contract.codes import RefusalReason
from worker.contract.decode import DeadLetter
from worker.outages import DependencyUnavailableError
from worker.settings import KafkaSettings
from worker.transport.options import producer_options
from worker.transport.raw import RawRecord
from worker.transport.records import (
    ORIGINAL_SIZE_HEADER,
    TRUNCATED_HEADER,
    Message,
    RecordRefusedError,
    UnexplainedRefusalError,
    fit_dead_letter,
    record_size,
    refusal,
    stub,
    unexplained,
    without_dlq_headers,
)

__all__ = [
    "DLQ_HEADERS",
    "HELD",
    "DeadLetterProducer",
    "KafkaProducer",
    "Message",
    "Outcome",
    "RecordRefusedError",
    "UnexplainedRefusalError",
    "raise_outage",
]

log = structlog.get_logger("worker.producers")

DLQ_HEADERS = frozenset(
    {"dlq-reason", "dlq-error", "dlq-source-topic", "dlq-source-partition", "dlq-source-offset", "dlq-failed-at"}
    | {ORIGINAL_SIZE_HEADER, TRUNCATED_HEADER}
)


@functools.lru_cache(maxsize=65_536)
def _key_hash(key: bytes) -> int:
    # The Java client's partitioning (murmur2 of the key), as aiokafka's DefaultPartitioner computes it in pure
    # Python: cached, since a customer's key comes back with each of its commands.
    return int(murmur2(key)) & 0x7FFFFFFF


HELD: Final = "held"
"""A `send_each` outcome: not acknowledged, nor shown to be the record's fault; the caller keeps it for later."""
Outcome = RecordRefusedError | str | None
"""`send_each`, per message: None (acknowledged), the refusal for good, or HELD."""
UNEXPLAINED_ATTEMPTS: Final = 3  # sends of one record alone before its unexplained refusal counts against it


def raise_outage(exc: BaseException) -> None:
    """Re-raise a retriable broker error as the service's DependencyUnavailableError (then retried without limit).
    Not `UnknownError`: at start it is what a broker without idempotent producers answers InitProducerId, a setting
    to change (`KAFKA_ENABLE_IDEMPOTENCE=false`), not an outage to wait out."""
    if isinstance(exc, KafkaError) and exc.retriable:
        raise DependencyUnavailableError(f"kafka: {type(exc).__name__}") from exc


def _mapped(exc: KafkaError) -> Exception:
    refused = refusal(exc)
    if refused is not None:
        return refused
    if unexplained(exc):
        return UnexplainedRefusalError(f"kafka: {type(exc).__name__}")
    return DependencyUnavailableError(f"kafka: {type(exc).__name__}")


class KafkaProducer:
    """One aiokafka producer; `start` retries are the caller's (see `service.until_done`)."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None
        self.max_record_size = settings.kafka_max_request_size

    async def start(self) -> None:
        if self._producer is not None:
            return
        producer = AIOKafkaProducer(**producer_options(self._settings))
        try:
            await producer.start()
        except BaseException as exc:
            await producer.stop()
            raise_outage(exc)
            raise
        self._producer = producer

    async def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    def fits(self, message: Message) -> bool:
        return record_size(*message) <= self.max_record_size

    async def send_all(
        self, topic: str, messages: Sequence[Message], *, sizes_checked: bool = False
    ) -> list[tuple[int, int]]:
        """Send (key, value, headers) in order and return when the broker acknowledged every one of them, with
        each message's (partition, offset), in the order given.

        Raises `RecordRefusedError` when a record is over `KAFKA_MAX_REQUEST_SIZE` (nothing is sent then) or the
        broker refuses one for good; `DependencyUnavailableError` for every other failure. `sizes_checked=True`
        (the relay, which sizes each row to park the oversized ones) skips sizing the records a second time."""
        if not sizes_checked:
            for message in messages:
                if not self.fits(message):
                    raise RecordRefusedError(
                        RefusalReason.TOO_LARGE, f"record over KAFKA_MAX_REQUEST_SIZE ({self.max_record_size})"
                    )
        try:
            return await self._send_all(topic, messages)
        except KafkaError as exc:
            raise _mapped(exc) from exc

    async def partition_for(self, topic: str, key: bytes | None) -> int:
        """The partition a message with `key` goes to, as every Kafka client picks it (a random one without key)."""
        if self._producer is None:
            await self.start()
        assert self._producer is not None
        partitions = sorted(await self._producer.partitions_for(topic))
        return int(partitions[_key_hash(key) % len(partitions)] if key is not None else random.choice(partitions))

    async def send_alone(self, topic: str, message: Message, partition: int) -> tuple[int, int]:
        """One message to `partition`, sent again (with a short backoff) while the broker refuses it without naming
        a cause, up to UNEXPLAINED_ATTEMPTS sends; its (partition, offset) once acknowledged; raises as `send_all`
        does."""
        if not self.fits(message):
            raise RecordRefusedError(
                RefusalReason.TOO_LARGE, f"record over KAFKA_MAX_REQUEST_SIZE ({self.max_record_size})"
            )
        key, value, headers = message
        for attempt in range(UNEXPLAINED_ATTEMPTS):
            if self._producer is None:
                await self.start()
            assert self._producer is not None
            producer = self._producer
            # A batch of one: `send` refuses a record with neither key nor value (a DLQ stub); one larger than a
            # batch (a big DLQ copy) goes through `send`, which sizes a batch for it.
            batch = producer.create_batch()
            try:
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is not None:
                    metadata = await (await _send_closed(producer, batch, topic, partition))
                else:
                    metadata = await (
                        await producer.send(topic, value=value, key=key, partition=partition, headers=headers)
                    )
                return int(metadata.partition), int(metadata.offset)
            except KafkaError as exc:
                mapped = _mapped(exc)
                if not isinstance(mapped, UnexplainedRefusalError) or attempt + 1 == UNEXPLAINED_ATTEMPTS:
                    raise mapped from exc
            await asyncio.sleep(0.1 * 2**attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def send_each(self, topic: str, messages: Sequence[Message]) -> list[Outcome]:
        """Each message alone, in order, after a send of several was refused and did not say which record.

        A record refused without a named cause (`UnexplainedRefusalError`, after UNEXPLAINED_ATTEMPTS sends) is a
        suspect, and its key's later messages are held behind it (their order is kept). It is refused for good
        (`invalid_record`) only when a later message on its partition is accepted and it is then refused once more;
        with no such message it is HELD. A second suspect on a partition with nothing accepted in between means the
        partition refuses everything: its later messages are HELD without being tried. When nothing at all is
        accepted, the broker is in an incident: `UnexplainedRefusalError` (an outage) is raised. Other outages
        raise at once."""
        partitions = [await self.partition_for(topic, message[0]) for message in messages]
        outcomes: list[Outcome] = [None] * len(messages)
        open_suspect: dict[int, int] = {}  # partition -> its suspect with nothing accepted after it
        confirmed: list[int] = []  # suspects with a later message of their partition accepted
        held_keys: set[bytes] = set()
        refusing: set[int] = set()
        accepted = unexplained_refusals = 0
        for index, (message, partition) in enumerate(zip(messages, partitions, strict=True)):
            if partition in refusing or (message[0] is not None and message[0] in held_keys):
                outcomes[index] = HELD
                continue
            try:
                await self.send_alone(topic, message, partition)
            except RecordRefusedError as exc:
                outcomes[index] = exc
                continue
            except UnexplainedRefusalError:
                unexplained_refusals += 1
                outcomes[index] = HELD
                if message[0] is not None:
                    held_keys.add(message[0])
                if partition in open_suspect:
                    refusing.add(partition)
                else:
                    open_suspect[partition] = index
                continue
            accepted += 1
            if partition in open_suspect:
                confirmed.append(open_suspect.pop(partition))
        if unexplained_refusals and not accepted:
            raise UnexplainedRefusalError("kafka: UnknownError for every record sent alone")
        for index in confirmed:
            try:
                await self.send_alone(topic, messages[index], partitions[index])
                outcomes[index] = None
            except UnexplainedRefusalError:
                outcomes[index] = RecordRefusedError(
                    RefusalReason.INVALID_RECORD,
                    f"UnknownError for this record alone ({2 * UNEXPLAINED_ATTEMPTS} sends) while records after it "
                    "on its partition were accepted",
                )
        return outcomes

    async def _send_all(self, topic: str, messages: Sequence[Message]) -> list[tuple[int, int]]:
        # Messages are partitioned as every Kafka client does (murmur2 of the key) and appended to record batches
        # per partition: far less work per message than one `send` each, and the order within a partition is kept.
        if self._producer is None:
            await self.start()
        producer = self._producer
        assert producer is not None
        partitions = sorted(await producer.partitions_for(topic))
        by_partition: dict[int, list[int]] = {}
        for index, message in enumerate(messages):
            key = message[0]
            partition = partitions[_key_hash(key) % len(partitions)] if key is not None else random.choice(partitions)
            by_partition.setdefault(partition, []).append(index)
        # Each future with the positions of its records: a batch's metadata carries its base offset, and its
        # records follow it one by one (offset deltas 0, 1, ...).
        pending: list[tuple[Any, list[int]]] = []
        for partition, indexes in by_partition.items():
            batch = producer.create_batch()
            in_batch: list[int] = []
            for index in indexes:
                key, value, headers = messages[index]
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is not None:
                    in_batch.append(index)
                    continue
                if batch.record_count():
                    pending.append((await _send_closed(producer, batch, topic, partition), in_batch))
                    batch, in_batch = producer.create_batch(), []
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    # Larger than a batch (a big DLQ copy): the regular path sizes one for it.
                    sent = await producer.send(topic, value=value, key=key, partition=partition, headers=headers)
                    pending.append((sent, [index]))
                else:
                    in_batch.append(index)
            if batch.record_count():
                pending.append((await _send_closed(producer, batch, topic, partition), in_batch))
        acknowledged = await asyncio.gather(*(future for future, _ in pending))
        coordinates: list[tuple[int, int]] = [(0, 0)] * len(messages)
        for metadata, (_, indexes) in zip(acknowledged, pending, strict=True):
            for delta, index in enumerate(indexes):
                coordinates[index] = (metadata.partition, metadata.offset + delta)
        return coordinates


async def _send_closed(producer: AIOKafkaProducer, batch: BatchBuilder, topic: str, partition: int) -> Any:
    """Hands a finished batch to aiokafka, closed: aiokafka holds an open batch for `linger_ms` in case `send` adds
    to it, which nothing here does; closed, it goes out with the sender's next request."""
    batch.close()
    return await producer.send_batch(batch, topic, partition=partition)


class DeadLetterProducer:
    """Copies records to the DLQ with key, value and headers unchanged, plus the `dlq-*` headers of SPEC §7.

    Every copy fits `KAFKA_MAX_REQUEST_SIZE` (SPEC §12): an oversized value keeps its first bytes; a copy the broker
    refuses anyway is replaced by a headers-only stub; a stub refused as well is dropped with an error log and
    counted (`on_dropped`), so that no batch is retried forever for a record's sake."""

    def __init__(self, producer: KafkaProducer, topic: str, on_dropped: Callable[[int], None] | None = None) -> None:
        self._producer = producer
        self._topic = topic
        self._on_dropped = on_dropped

    @property
    def max_record_size(self) -> int:
        return self._producer.max_record_size

    async def send(self, letters: Sequence[tuple[RawRecord, DeadLetter]]) -> None:
        await self.send_placed(letters)

    async def send_placed(self, letters: Sequence[tuple[RawRecord, DeadLetter]]) -> list[tuple[int, int] | None]:
        """Each letter's DLQ (partition, offset) once acknowledged, in order; None for a copy dropped (see above)."""
        failed_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z").encode()
        limit = self._producer.max_record_size
        copies: list[tuple[Message, Message]] = []
        for record, letter in letters:
            dlq = dlq_headers(record, letter, failed_at)
            copy = fit_dead_letter(record.key, record.value, without_dlq_headers(record.headers), dlq, limit)
            copies.append((copy, stub(dlq, len(record.value or b""))))
        try:
            return list(await self._producer.send_all(self._topic, [copy for copy, _ in copies]))
        except (RecordRefusedError, UnexplainedRefusalError):
            # Which record the broker refused is not known from a batch: one at a time, in order.
            return [await self._send_one(copy, fallback) for copy, fallback in copies]

    async def _send_one(self, copy: Message, fallback: Message) -> tuple[int, int] | None:
        """The copy, else its stub on the same partition. A copy refused without a named cause is replaced by its
        stub only when the stub is accepted there: the partition takes records, so the copy was at fault. A stub
        refused without a named cause raises `UnexplainedRefusalError`, an outage: the batch is retried and no
        offset is committed, so no dead letter is dropped for a broker incident."""
        partition = await self._producer.partition_for(self._topic, copy[0])
        try:
            return await self._producer.send_alone(self._topic, copy, partition)
        except RecordRefusedError as exc:
            log.warning("dead_letter_refused", reason=exc.reason, detail=exc.detail, stub=True)
        except UnexplainedRefusalError as exc:
            log.warning("dead_letter_refused", reason="unexplained", detail=str(exc), stub=True)
        try:
            return await self._producer.send_alone(self._topic, fallback, partition)
        except RecordRefusedError as exc:
            log.error("dead_letter_dropped", reason=exc.reason, detail=exc.detail, headers=_dlq_summary(fallback))
            if self._on_dropped is not None:
                self._on_dropped(1)
            return None


def dlq_headers(record: RawRecord, letter: DeadLetter, failed_at: bytes) -> list[tuple[str, bytes]]:
    return [
        ("dlq-reason", letter.reason.value.encode()),
        ("dlq-error", letter.error[:300].encode("utf-8", errors="replace")),
        ("dlq-source-topic", record.topic.encode()),
        ("dlq-source-partition", str(record.partition).encode()),
        ("dlq-source-offset", str(record.offset).encode()),
        ("dlq-failed-at", failed_at),
    ]


def _dlq_summary(message: Message) -> dict[str, str]:
    # Coordinates and reason only: the sender's headers and value may hold personal data.
    wanted = {"dlq-reason", "dlq-source-topic", "dlq-source-partition", "dlq-source-offset"}
    return {name: value.decode("utf-8", "replace") for name, value in message[2] if name in wanted}

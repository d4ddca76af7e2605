"""Producers for the DLQ (SPEC §7) and the events topic (SPEC §6). Plain aiokafka: sends are pipelined and the
caller awaits the broker's acknowledgement of the whole set before it commits anything."""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Sequence
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

from worker.contract.decode import DeadLetter
from worker.outages import DependencyUnavailableError
from worker.service import RawRecord
from worker.settings import KafkaSettings
from worker.transport.options import producer_options

Message = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]
DLQ_HEADERS = frozenset(
    {"dlq-reason", "dlq-error", "dlq-source-topic", "dlq-source-partition", "dlq-source-offset", "dlq-failed-at"}
)


@functools.lru_cache(maxsize=65_536)
def _key_hash(key: bytes) -> int:
    # The Java client's partitioning (murmur2 of the key), as aiokafka's DefaultPartitioner computes it in pure
    # Python: cached, since a customer's key comes back with each of its commands.
    return int(murmur2(key)) & 0x7FFFFFFF


def raise_outage(exc: BaseException) -> None:
    """Re-raise a retriable broker error as the service's DependencyUnavailableError (then retried without limit)."""
    if isinstance(exc, KafkaError) and exc.retriable:
        raise DependencyUnavailableError(f"kafka: {type(exc).__name__}") from exc


class KafkaProducer:
    """One aiokafka producer; `start` retries are the caller's (see `service.until_done`)."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None

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

    async def send_all(self, topic: str, messages: Sequence[Message]) -> None:
        """Send (key, value, headers) in order and return when the broker acknowledged every one of them.

        Messages are partitioned as every Kafka client does (murmur2 of the key) and appended to record batches per
        partition: far less work per message than one `send` each, and the order within a partition is kept."""
        if self._producer is None:
            await self.start()
        producer = self._producer
        assert producer is not None
        partitions = sorted(await producer.partitions_for(topic))
        by_partition: dict[int, list[Message]] = {}
        for message in messages:
            key = message[0]
            partition = partitions[_key_hash(key) % len(partitions)] if key is not None else random.choice(partitions)
            by_partition.setdefault(partition, []).append(message)
        pending = []
        for partition, batch_messages in by_partition.items():
            batch = producer.create_batch()
            for key, value, headers in batch_messages:
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is not None:
                    continue
                if batch.record_count():
                    pending.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    # Larger than a batch (a too_large record on its way to the DLQ): the regular path sizes one.
                    pending.append(
                        await producer.send(topic, value=value, key=key, partition=partition, headers=headers)
                    )
            if batch.record_count():
                pending.append(await producer.send_batch(batch, topic, partition=partition))
        try:
            await asyncio.gather(*pending)
        except KafkaError as exc:
            raise_outage(exc)
            raise


class DeadLetterProducer:
    """Copies records to the DLQ with key, value and headers unchanged, plus the `dlq-*` headers of SPEC §7."""

    def __init__(self, producer: KafkaProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic

    async def send(self, letters: Sequence[tuple[RawRecord, DeadLetter]]) -> None:
        failed_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z").encode()
        messages = []
        for record, letter in letters:
            headers = [
                *record.headers,
                ("dlq-reason", letter.reason.value.encode()),
                ("dlq-error", letter.error.encode("utf-8", errors="replace")),
                ("dlq-source-topic", record.topic.encode()),
                ("dlq-source-partition", str(record.partition).encode()),
                ("dlq-source-offset", str(record.offset).encode()),
                ("dlq-failed-at", failed_at),
            ]
            messages.append((record.key, record.value, headers))
        await self._producer.send_all(self._topic, messages)

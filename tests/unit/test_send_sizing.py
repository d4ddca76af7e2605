"""Issue 12: a record is sized once on its way out. The relay sizes each outbox row (oversized rows are parked) and
tells the producer so; every other caller of `KafkaProducer.send_all` still gets the size check. And the batches
go to aiokafka closed, so that they do not wait `linger_ms` for records nobody will add."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.structs import RecordMetadata

from worker.settings import KafkaSettings
from worker.transport.producers import KafkaProducer, Message, RecordRefusedError


class _Recording(KafkaProducer):
    """The real `send_all`; what would go to the broker is recorded instead, and sizing is counted."""

    def __init__(self) -> None:
        super().__init__(KafkaSettings(kafka_bootstrap_servers="127.0.0.1:9", kafka_max_request_size=64 * 1024))
        self.sized = 0
        self.sent: list[Message] = []

    def fits(self, message: Message) -> bool:
        self.sized += 1
        return super().fits(message)

    async def _send_all(self, topic: str, messages: Sequence[Message]) -> list[tuple[int, int]]:
        self.sent.extend(messages)
        return [(0, len(self.sent) - len(messages) + index) for index in range(len(messages))]


SMALL: Message = (b"k", b"v" * 10, [])
LARGE: Message = (b"k", b"v" * 100_000, [])


async def test_unchecked_records_are_sized_and_an_oversized_one_sends_nothing() -> None:
    producer = _Recording()
    with pytest.raises(RecordRefusedError) as refused:
        await producer.send_all("events", [SMALL, LARGE])
    assert refused.value.reason == "too_large"
    assert producer.sized == 2
    assert producer.sent == []


async def test_records_the_caller_sized_are_not_sized_again() -> None:
    producer = _Recording()
    await producer.send_all("events", [SMALL, SMALL], sizes_checked=True)
    assert producer.sized == 0
    assert producer.sent == [SMALL, SMALL]


class _Broker(AIOKafkaProducer):  # type: ignore[misc]
    """aiokafka's producer with its network end replaced: records the batches it is handed."""

    def __init__(self) -> None:
        super().__init__(bootstrap_servers="127.0.0.1:9")
        self.handed: list[tuple[int, bool, int]] = []  # (partition, closed, records)

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2}

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future[RecordMetadata]:
        # Acknowledged as a broker does: the batch's base offset (100 per batch handed, so offsets are telling).
        base = 100 * len(self.handed)
        self.handed.append((partition, batch.closed(), batch.record_count()))
        done: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        done.set_result(RecordMetadata(topic, partition, TopicPartition(topic, partition), base, -1, 0, 0))
        return done


async def test_batches_are_handed_over_closed_so_that_they_do_not_linger() -> None:
    producer = KafkaProducer(KafkaSettings(kafka_bootstrap_servers="127.0.0.1:9"))
    broker = _Broker()
    producer._producer = broker
    messages: list[Message] = [(f"customer-{n}".encode(), b"{}", []) for n in range(30)]
    try:
        placed = await producer.send_all("events", messages, sizes_checked=True)
    finally:
        await broker.stop()
    assert broker.handed, "nothing was sent"
    # Each message's (partition, offset), in the order given: its batch's base offset plus its place in the batch.
    bases = {partition: 100 * n for n, (partition, _, _) in enumerate(broker.handed)}
    for partition, base in bases.items():
        offsets = [offset for p, offset in placed if p == partition]
        assert offsets == list(range(base, base + len(offsets)))
    assert all(closed for _, closed, _ in broker.handed)
    assert sum(count for _, _, count in broker.handed) == len(messages)
    assert len({partition for partition, _, _ in broker.handed}) == len(broker.handed)  # one batch per partition

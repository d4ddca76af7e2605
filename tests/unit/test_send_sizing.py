"""Issue 12: a record is sized once on its way out. The relay sizes each outbox row (oversized rows are parked) and
tells the producer so; every other caller of `KafkaProducer.send_all` still gets the size check."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

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

    async def _send_all(self, topic: str, messages: Sequence[Message]) -> None:
        self.sent.extend(messages)


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

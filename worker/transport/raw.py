"""A consumed record exactly as read: what the consumer hands the service, and what a dead letter copies."""

from __future__ import annotations

from typing import Any, NamedTuple

from aiokafka import ConsumerRecord

from worker.transport.salvage import UnreadableRecord


class RawRecord(NamedTuple):
    """The DLQ copies key, value and headers byte for byte."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    # Set for an offset the Kafka client could not read (SPEC §12): why, without content; key, value, headers empty.
    unreadable: str | None = None

    @classmethod
    def of(cls, record: ConsumerRecord[Any, Any]) -> RawRecord:
        return cls(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
            headers=tuple(record.headers),
            unreadable=record.unreadable if isinstance(record, UnreadableRecord) else None,
        )

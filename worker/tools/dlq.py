"""`customer-worker dlq replay`: republish dead-lettered records to the commands topic (SPEC §7 and §11).

Reads the DLQ from its beginning up to its end as of the start (no consumer group, nothing committed), keeps the
records that match the filters, strips the `dlq-*` headers and publishes key, value and the other headers unchanged.
Safe to repeat: the worker answers a replayed command it already applied as a duplicate (by `message_id`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from worker.settings import KafkaSettings
from worker.transport.options import client_options
from worker.transport.producers import DLQ_HEADERS, KafkaProducer

_IDLE_MS = 1500


@dataclass(frozen=True, slots=True)
class ReplayFilter:
    reason: str | None = None
    organization_id: str | None = None
    from_offset: int | None = None
    to_offset: int | None = None
    partition: int | None = None

    def matches(self, record: Any) -> bool:
        if self.partition is not None and record.partition != self.partition:
            return False
        if self.from_offset is not None and record.offset < self.from_offset:
            return False
        if self.to_offset is not None and record.offset > self.to_offset:
            return False
        headers = dict(record.headers)
        if self.reason is not None and headers.get("dlq-reason", b"").decode(errors="replace") != self.reason:
            return False
        return self.organization_id is None or _organization_of(record.value) == self.organization_id


def _organization_of(value: bytes | None) -> str | None:
    if not value:
        return None
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    organization_id = document.get("organization_id") if isinstance(document, dict) else None
    return organization_id if isinstance(organization_id, str) else None


async def replay(settings: KafkaSettings, selection: ReplayFilter) -> int:
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False, group_id=None)
    await consumer.start()
    producer = KafkaProducer(settings)
    await producer.start()
    republished = 0
    try:
        partitions = [
            TopicPartition(settings.dlq_topic, p)
            for p in sorted(consumer.partitions_for_topic(settings.dlq_topic) or ())
            if selection.partition in (None, p)  # read only the partition asked for
        ]
        if not partitions:
            return 0
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        # End offsets are only a lower bound (Tansu reports the last batch's base offset + 1): read on until the
        # DLQ has nothing more to give.
        ends = await consumer.end_offsets(partitions)
        while True:
            batches = await consumer.getmany(timeout_ms=_IDLE_MS, max_records=1000)
            if not batches:
                behind = [tp for tp in partitions if await consumer.position(tp) < ends[tp]]
                if not behind:
                    break
                continue
            messages = []
            for records in batches.values():
                for record in records:
                    if selection.matches(record):
                        headers = [(k, v) for k, v in record.headers if k not in DLQ_HEADERS]
                        messages.append((record.key, record.value, headers))
            if messages:
                await producer.send_all(settings.commands_topic, messages)
                republished += len(messages)
    finally:
        await producer.stop()
        await consumer.stop()
    return republished

"""Records aiokafka cannot read never stick a partition (SPEC §12).

Measured with aiokafka 0.14: a header key that is not UTF-8 raises `UnicodeDecodeError`, and a batch whose CRC does
not match raises `CorruptRecordException`, from inside the fetcher's record iterator. The consumer's position does
not move, every later `getmany` raises the same error, and no record of that partition is ever delivered again (the
readable records fetched with it included).

`install()` replaces aiokafka's per-partition record iterator with one that turns what cannot be read into
`UnreadableRecord` placeholders instead of raising: one per offset that cannot be read (the rest of the batch from
the failing record on, or the whole batch for a bad CRC or a value that does not decompress), with no key, value or
headers and a short reason. The handler dead-letters them as `unreadable_record` with their source coordinates,
and the partition moves on. Readable records before the failure are delivered as usual. The original bytes stay in
the commands topic (until its retention) for a tolerant reader.

This is the only place that touches aiokafka internals; the copy follows `PartitionRecords._unpack_records` of
aiokafka 0.14 (pinned below 0.15) line for line, with the two guarded steps added.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from aiokafka.consumer import fetcher
from aiokafka.structs import ConsumerRecord

_MAX_PLACEHOLDERS: Final = 1000  # a corrupt header may claim any offset range: past this, one covers the rest


@dataclass
class UnreadableRecord(ConsumerRecord[bytes, bytes]):  # type: ignore[misc]
    """A placeholder for an offset whose record could not be read."""

    unreadable: str = ""


def _placeholders(tp: Any, first: int, end: int, reason: str) -> Iterator[UnreadableRecord]:
    if end - first > _MAX_PLACEHOLDERS:
        reason = f"{reason} (offsets {first} to {end - 1})"
        first = end - 1
    for offset in range(first, end):
        yield UnreadableRecord(tp.topic, tp.partition, offset, -1, 0, None, None, None, -1, -1, (), reason)


def _unpack_records(self: Any) -> Iterator[ConsumerRecord[Any, Any]]:
    tp = self._tp
    records = self._records
    while records.has_next():
        next_batch = records.next_batch()
        if self._check_crcs and not next_batch.validate_crc():
            # Added: the batch's offsets are known from its header, its records cannot be trusted.
            yield from _placeholders(
                tp, max(next_batch.base_offset, self.next_fetch_offset), next_batch.next_offset, "batch CRC mismatch"
            )
            self.next_fetch_offset = next_batch.next_offset
            continue

        if self._isolation_level == fetcher.READ_COMMITTED and next_batch.producer_id is not None:
            self._consume_aborted_up_to(next_batch.base_offset)
            if next_batch.is_control_batch and self._contains_abort_marker(next_batch):
                self._aborted_producers.discard(next_batch.producer_id)
            if next_batch.is_transactional and next_batch.producer_id in self._aborted_producers:
                self.next_fetch_offset = next_batch.next_offset
                continue

        if next_batch.is_control_batch:
            self.next_fetch_offset = next_batch.next_offset
            continue

        try:
            for record in next_batch:
                if record.offset < self.next_fetch_offset:
                    continue
                consumer_record = self._consumer_record(tp, record)
                self.next_fetch_offset = record.offset + 1
                yield consumer_record
        except Exception as exc:  # noqa: BLE001 - added: whatever the parser raises, the rest of the batch is lost
            reason = f"record not readable by the Kafka client: {type(exc).__name__}"
            yield from _placeholders(tp, self.next_fetch_offset, next_batch.next_offset, reason)
        self.next_fetch_offset = next_batch.next_offset


def install() -> None:
    """Idempotent; called when the commands consumer is built."""
    fetcher.PartitionRecords._unpack_records = _unpack_records

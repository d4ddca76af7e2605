"""Records aiokafka cannot read never stick a partition, nor cost another partition its records (SPEC §12).

Measured with aiokafka 0.14: whatever its per-partition record iterator raises (a header key that is not UTF-8, a
batch whose CRC does not match, a batch length below the minimum, a slice too short for its records) escapes
`getmany`. The records already drained from the partitions ahead of it in the same call are lost with the exception,
their positions already moved on; and the failing partition's position does not move, so every later poll raises
again. A batch whose length runs past the fetched bytes is skipped one offset at a time, each with an exception and
no trace of the record.

`install()` replaces aiokafka's per-partition record iterator with one that never raises: what cannot be read
becomes `UnreadableRecord` placeholders, one per offset that cannot be read (the rest of a batch from the failing
record on; the whole batch for a bad CRC or a value that does not decompress; the position's offset when the fetched
bytes cannot even be split into batches), with no key, value or headers and a short reason. The handler
dead-letters them as `unreadable_record` with their source coordinates, and the partition moves on. Readable records
before a failure are delivered as usual, and every other partition's records with them. Every shape is met the same
way: v0/v1 message sets (no `base_offset`), v2 batches, control batches (skipped; one that cannot be read as well:
it carries no command), corrupt lengths and truncated data. The original bytes stay in the commands topic (until its
retention) for a tolerant reader.

This is the only place that touches aiokafka internals; the copy follows `PartitionRecords._unpack_records` of
aiokafka 0.14 (pinned below 0.15), with every step guarded.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from aiokafka.consumer import fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.memory_records import MemoryRecords, _MemoryRecordsPy
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


class _FormatChangedError(Exception):
    """The fetched bytes switch from v2 batches to v0/v1 message sets: the rest is read by the next fetch."""


_MAGIC_AT: Final = 16  # the same place in every format: v2 batch header and v0/v1 message


class _SplittableRecords:
    """The fetched bytes split into batches. aiokafka's compiled splitter reads every batch in the format of the
    first (a v2 batch after a v0/v1 message set fails with `SystemError`; a v0/v1 set after v2 batches is misread),
    so a fetch that starts with a v0/v1 set is split by its pure-Python one, which reads each batch's own magic
    byte (slower, and only ever met on topics that still hold old-format data); a fetch of v2 batches ends where a
    v0/v1 set follows them, and the next fetch starts there. Bytes holding no whole batch at the fetch position (a
    length that runs past them) are one more batch to read, which fails: aiokafka would skip the offset with an
    exception instead."""

    def __init__(self, data: bytes) -> None:
        self._legacy_first = len(data) > _MAGIC_AT and data[_MAGIC_AT] < 2
        self._records = _MemoryRecordsPy(data) if self._legacy_first else MemoryRecords(data)
        self._unsplittable = not self._records.has_next() and self._records.size_in_bytes() > 0
        self.started = False  # whether a batch was split off: a failure after that is met again by the next fetch

    def size_in_bytes(self) -> int:
        return int(self._records.size_in_bytes())

    def has_next(self) -> bool:
        return self._unsplittable or bool(self._records.has_next())

    def next_batch(self) -> Any:
        if self._unsplittable:
            self._unsplittable = False
            raise CorruptRecordException("batch length runs past the fetched bytes")
        batch = self._records.next_batch()
        if not self._legacy_first and getattr(batch, "magic", 2) < 2:
            raise _FormatChangedError
        self.started = True
        return batch


def _unpack_records(self: Any) -> Iterator[ConsumerRecord[Any, Any]]:
    tp = self._tp
    records = self._records
    while True:
        try:
            if not records.has_next():
                return
            batch = records.next_batch()
        except _FormatChangedError:
            return
        except Exception as exc:  # noqa: BLE001 - the bytes from here on cannot be split into batches
            if getattr(records, "started", False):
                return  # the next fetch starts at this batch: its own format, or the case below
            # Only the position's offset is known; the next fetch starts after it (its batch, if longer, is met
            # again there and placeholders go on one offset per fetch until it is passed).
            reason = f"record batch not readable by the Kafka client: {type(exc).__name__}"
            yield from _placeholders(tp, self.next_fetch_offset, self.next_fetch_offset + 1, reason)
            self.next_fetch_offset += 1
            return
        try:
            yield from _batch_records(self, tp, batch)
        except Exception as exc:  # noqa: BLE001 - whatever the parser raises, the rest of the batch is lost
            end = _next_offset(batch, self.next_fetch_offset)
            reason = f"record not readable by the Kafka client: {type(exc).__name__}"
            yield from _placeholders(tp, self.next_fetch_offset, end, reason)
            self.next_fetch_offset = end


def _batch_records(self: Any, tp: Any, batch: Any) -> Iterator[ConsumerRecord[Any, Any]]:
    end = batch.next_offset
    if self._check_crcs and not batch.validate_crc():
        # The batch's offsets are known from its header, its records cannot be trusted. A v0/v1 message set has
        # no base offset: its offsets start at the position.
        first = max(getattr(batch, "base_offset", self.next_fetch_offset), self.next_fetch_offset)
        yield from _placeholders(tp, first, end, "batch CRC mismatch")
    elif not _skipped_as_control_or_aborted(self, batch):
        for record in batch:
            if record.offset < self.next_fetch_offset:
                continue  # a v0/v1 wrapper or a v2 batch that the fetch started inside
            consumer_record = self._consumer_record(tp, record)
            self.next_fetch_offset = record.offset + 1
            yield consumer_record
    # v2 keeps a batch's last offset even when compaction removed its last record: the next fetch starts after it.
    # Never backwards, whatever a batch before the position claims.
    self.next_fetch_offset = max(self.next_fetch_offset, end)


def _skipped_as_control_or_aborted(self: Any, batch: Any) -> bool:
    """aiokafka's read_committed bookkeeping, then control batches skipped whatever the isolation level. A control
    batch holds no command: one whose marker cannot be read is skipped too (it cannot end an aborted transaction)."""
    control = batch.is_control_batch
    if self._isolation_level == fetcher.READ_COMMITTED and batch.producer_id is not None:
        self._consume_aborted_up_to(batch.base_offset)
        if control:
            try:
                if self._contains_abort_marker(batch):
                    self._aborted_producers.discard(batch.producer_id)
            except Exception:  # noqa: BLE001
                return True
        if batch.is_transactional and batch.producer_id in self._aborted_producers:
            return True
    return bool(control)


def _next_offset(batch: Any, position: int) -> int:
    """Where the next fetch starts once `batch` cannot be read further: after it, or after the position's offset
    when its header cannot be trusted either."""
    try:
        end = int(batch.next_offset)
    except Exception:  # noqa: BLE001
        return position + 1
    return end if end > position else position + 1


def install() -> None:
    """Idempotent; called when the commands consumer is built."""
    fetcher.PartitionRecords._unpack_records = _unpack_records
    fetcher.MemoryRecords = _SplittableRecords

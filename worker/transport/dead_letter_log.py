"""The DLQ sink that also records each copy in `dead_letters` for the operator console (issue 20).

The row is written after the broker acknowledged the copy (its coordinates are known only then) and before the
batch's offsets are committed (`send` returns only after), idempotent on the coordinates, so a crash in between
leaves either the row or a redelivery that writes a new copy and its own row. Only allowlisted metadata: reason,
a stable detail code, field path, organization and message id when the envelope could be read, size, SHA-256 of the
value, the replay job a record came back from. Never the value's bytes, the error text or the sender's headers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Final

import orjson
import structlog

from worker.contract.codes import DlqReason
from worker.contract.decode import DeadLetter
from worker.outages import Dependency
from worker.retries import OutageHook, until_done
from worker.store.console import DeadLetterRow, record_dead_letters
from worker.store.jobs import Pool
from worker.transport.producers import DeadLetterProducer, KafkaProducer
from worker.transport.raw import RawRecord
from worker.transport.records import record_size

log = structlog.get_logger("worker.dead_letters")

REPLAY_JOB_HEADER: Final = "x-replay-job"
"""Set by a replay job on each record it republishes (the job's id), with `x-replay-item` (the `dead_letters` id
of the record replayed). The worker copies a record's headers to the DLQ unchanged, so a replayed record that fails
again carries both back, and its row names the job and the original."""
REPLAY_ITEM_HEADER: Final = "x-replay-item"
_PARSE_LIMIT: Final = 1 << 20
_MAX_ID: Final = 200
_ENVELOPE_FIELDS: Final = ("message_id", "organization_id", "customer")


def _unobserved(dependency: Dependency, available: bool) -> None:
    return None


class RecordedDeadLetters:
    """A `DeadLetterSink`: the DLQ copies (a `DeadLetterProducer` on `producer`), then their rows (outages waited
    out, as for the copies)."""

    def __init__(
        self,
        producer: KafkaProducer,
        topic: str,
        pool: Pool,
        *,
        on_dropped: Callable[[int], None] | None = None,
        on_outage: OutageHook = _unobserved,
    ) -> None:
        self._producer = DeadLetterProducer(producer, topic, on_dropped)
        self._pool = pool
        self._topic = topic
        self._on_outage = on_outage

    async def send(self, letters: Sequence[tuple[RawRecord, DeadLetter]]) -> None:
        coordinates = await self._producer.send_placed(letters)
        limit = self._producer.max_record_size
        rows = [
            dead_letter_row(self._topic, at, record, letter, limit)
            for (record, letter), at in zip(letters, coordinates, strict=True)
            if at is not None
        ]
        try:
            await until_done(lambda: record_dead_letters(self._pool, rows), "postgres", self._on_outage)
        except Exception as exc:  # noqa: BLE001 - a console row is never a reason to hold the partition back
            log.error("dead_letter_not_recorded", error_type=type(exc).__name__, count=len(rows))


def dead_letter_row(
    topic: str, at: tuple[int, int], record: RawRecord, letter: DeadLetter, max_record_size: int
) -> DeadLetterRow:
    value = record.value or b""
    organization_id, message_id = envelope_ids(value)
    headers = dict(record.headers)
    return DeadLetterRow(
        dlq_topic=topic,
        dlq_partition=at[0],
        dlq_offset=at[1],
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
        reason=letter.reason.value,
        codes=[detail_code(letter)],
        paths=_paths(letter),
        organization_id=organization_id,
        message_id=message_id,
        value_size=len(value),
        value_sha256=hashlib.sha256(value).digest() if record.value is not None else None,
        # As `fit_dead_letter` decides (its dlq-* headers add a few hundred bytes at most).
        truncated=record_size(record.key, record.value, record.headers) + 512 > max_record_size,
        returned_from_job_id=_int_header(headers.get(REPLAY_JOB_HEADER)),
        returned_from_id=_int_header(headers.get(REPLAY_ITEM_HEADER)),
        failed_at=None,
    )


def detail_code(letter: DeadLetter) -> str:
    """A stable code for what went wrong, from the error text (which is not stored: it may quote the value)."""
    error = letter.error
    match letter.reason:
        case DlqReason.INVALID_JSON:
            if error.startswith("empty value"):
                return "empty_value"
            return "schema_registry_frame" if "Schema Registry" in error else "json_syntax"
        case DlqReason.INVALID_ENVELOPE:
            if error.startswith("value is a JSON"):
                return "not_an_object"
            if "repeats a member name" in error:
                return "duplicate_member"
            field = next((name for name in _ENVELOPE_FIELDS if error.startswith(name)), None)
            return f"{field}_invalid" if field else "envelope_invalid"
        case DlqReason.TOO_LARGE:
            return "value_too_large"
        case DlqReason.PROCESSING_ERROR:
            return "failed_repeatedly"
        case DlqReason.UNREADABLE_RECORD:
            return "unreadable"
    return letter.reason.value


def _paths(letter: DeadLetter) -> list[str]:
    if letter.reason is not DlqReason.INVALID_ENVELOPE:
        return []
    return [name for name in _ENVELOPE_FIELDS if letter.error.startswith(name)][:1]


def envelope_ids(value: bytes) -> tuple[str | None, str | None]:
    """The organization and message ids a value names, when it is a JSON object (a claim, never verified)."""
    if len(value) > _PARSE_LIMIT:
        return None, None
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(document, dict):
        return None, None
    return _identifier(document.get("organization_id")), _identifier(document.get("message_id"))


def _identifier(value: object) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= _MAX_ID else None


def _int_header(value: bytes | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None

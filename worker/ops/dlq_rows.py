"""The `dead_letters` row of a record read from the DLQ (by `dlq replay`), from its `dlq-*` headers: for records the
worker did not record (written before it did, or by another tool). The same allowlisted metadata as the worker's."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from worker.contract.codes import DlqReason
from worker.contract.decode import DeadLetter
from worker.store.console import DeadLetterRow
from worker.transport.dead_letter_log import REPLAY_ITEM_HEADER, REPLAY_JOB_HEADER, detail_code, envelope_ids
from worker.transport.records import TRUNCATED_HEADER


def row_of_dlq_record(topic: str, record: Any) -> DeadLetterRow:
    headers = {key: bytes(value) for key, value in record.headers}
    reason = headers.get("dlq-reason", b"").decode(errors="replace")
    value = record.value or b""
    known = reason in DlqReason.__members__.values()
    letter = DeadLetter(DlqReason(reason), headers.get("dlq-error", b"").decode(errors="replace")) if known else None
    organization_id, message_id = envelope_ids(value)
    return DeadLetterRow(
        dlq_topic=topic,
        dlq_partition=record.partition,
        dlq_offset=record.offset,
        source_topic=headers.get("dlq-source-topic", b"").decode(errors="replace"),
        source_partition=_int(headers.get("dlq-source-partition")) or 0,
        source_offset=_int(headers.get("dlq-source-offset")) or 0,
        reason=reason or "(none)",
        codes=[detail_code(letter)] if letter is not None else [],
        paths=[],
        organization_id=organization_id,
        message_id=message_id,
        value_size=_int(headers.get("dlq-original-size")) or len(value),
        value_sha256=hashlib.sha256(value).digest() if record.value is not None else None,
        truncated=TRUNCATED_HEADER in headers,
        returned_from_job_id=_int(headers.get(REPLAY_JOB_HEADER)),
        returned_from_id=_int(headers.get(REPLAY_ITEM_HEADER)),
        failed_at=_time(headers.get("dlq-failed-at")),
    )


def _int(value: bytes | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _time(value: bytes | None) -> datetime | None:
    try:
        return datetime.fromisoformat(value.decode()) if value else None
    except (ValueError, UnicodeDecodeError):
        return None

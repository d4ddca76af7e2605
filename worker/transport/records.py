"""What the worker may produce (SPEC §12): the record-size bound, DLQ copies cut to fit, and which broker refusals
are the record's fault (permanent) rather than an outage.

Broker error codes: aiokafka 0.14 maps every code it has no class for to `UnknownError`, like -1 (UNKNOWN_SERVER_ERROR,
what a broker answers for an unexpected failure of its own). Code 87 (INVALID_RECORD, a refusal of the record for
good) is registered here under a class of its own, so that the raw code tells the two apart; `UnknownError` itself is
`UnexplainedRefusalError`: an outage unless retries show that the record alone keeps being refused (see
`producers.KafkaProducer.send_each`).

A record's size is aiokafka's own upper-bound estimate of a one-record batch, the figure its producer compares with
`max_request_size`, so a record that passes here is never refused by the client. A default Kafka broker compares
its `message.max.bytes` (1 MiB) with the batch, which this estimate bounds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from aiokafka import errors
from aiokafka.errors import (
    BrokerResponseError,
    CorruptRecordException,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    UnknownError,
    UnsupportedForMessageFormatError,
)
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from worker.contract.codes import RefusalReason
from worker.outages import DependencyUnavailableError

Headers = list[tuple[str, bytes]]
Message = tuple[bytes | None, bytes | None, Headers]

DLQ_PREFIX: Final = "dlq-"
ORIGINAL_SIZE_HEADER: Final = "dlq-original-size"
TRUNCATED_HEADER: Final = "dlq-truncated"


class InvalidRecordError(BrokerResponseError):  # type: ignore[misc]
    """Kafka's INVALID_RECORD: the broker refused the record for good (a failed validation, say)."""

    errno = 87
    message = "INVALID_RECORD"
    description = "This record has failed the validation on broker and hence will be rejected."


# aiokafka resolves codes through this table at each response: a newer aiokafka that names 87 itself keeps its own.
errors.kafka_errors.setdefault(InvalidRecordError.errno, InvalidRecordError)


class UnexplainedRefusalError(DependencyUnavailableError):
    """The broker refused with a code that names no cause (`UnknownError`): an outage, waited out, unless retries
    show that one record alone keeps being refused while the records after it on its partition are accepted."""


class RecordRefusedError(Exception):
    """A record the broker (or the size check before sending) refuses for good: retrying it cannot help."""

    def __init__(self, reason: RefusalReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def record_size(key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]) -> int:
    return int(DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, list(headers)))


def refusal(exc: BaseException) -> RecordRefusedError | None:
    """The permanent refusal `exc` stands for, or None when it says nothing about the record (an outage)."""
    if isinstance(exc, MessageSizeTooLargeError | RecordListTooLargeError | RecordTooLargeError):
        return RecordRefusedError(RefusalReason.TOO_LARGE, type(exc).__name__)
    if isinstance(exc, CorruptRecordException | UnsupportedForMessageFormatError | InvalidRecordError):
        return RecordRefusedError(RefusalReason.INVALID_RECORD, type(exc).__name__)
    return None


def unexplained(exc: BaseException) -> bool:
    """A refusal that says nothing of its cause: -1, or a code aiokafka has no class for (see the module's note)."""
    return isinstance(exc, UnknownError)


def without_dlq_headers(headers: Sequence[tuple[str, bytes]]) -> Headers:
    """A sender's own `dlq-*` headers are dropped: only the worker's may say why a record is in the DLQ."""
    return [(name, value) for name, value in headers if not name.lower().startswith(DLQ_PREFIX)]


def fit_dead_letter(key: bytes | None, value: bytes | None, headers: Headers, dlq: Headers, limit: int) -> Message:
    """The DLQ copy of (key, value, headers) with the `dlq` headers added, at most `limit` bytes.

    Whole when it fits; else the value keeps its first bytes and `dlq-original-size` / `dlq-truncated: true` say so;
    when even the key and headers are too large, the headers-only stub."""
    whole = [*headers, *dlq]
    if record_size(key, value, whole) <= limit:
        return key, value, whole
    original = len(value) if value is not None else 0
    marked = [*whole, (ORIGINAL_SIZE_HEADER, str(original).encode()), (TRUNCATED_HEADER, b"true")]
    room = limit - record_size(key, b"", marked) - 8  # the value's length prefix grows with the value (varint)
    if room <= 0:
        return stub(dlq, original)
    return key, (value or b"")[:room], marked


def stub(dlq: Headers, original_size: int) -> Message:
    """The headers-only DLQ record: no key, no value, no headers of the sender's."""
    return None, None, [*dlq, (ORIGINAL_SIZE_HEADER, str(original_size).encode()), (TRUNCATED_HEADER, b"true")]

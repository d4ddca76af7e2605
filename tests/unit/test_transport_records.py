"""SPEC §12 record bounds: what the worker produces fits KAFKA_MAX_REQUEST_SIZE, and which refusals are permanent."""

from __future__ import annotations

import pytest
from aiokafka.errors import (
    CorruptRecordException,
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    RecordListTooLargeError,
    RequestTimedOutError,
    TopicAuthorizationFailedError,
    for_code,
)

from worker.transport.records import fit_dead_letter, record_size, refusal, without_dlq_headers

MiB = 1024 * 1024
DLQ = [("dlq-reason", b"too_large"), ("dlq-source-offset", b"7")]


def test_a_copy_that_fits_is_kept_whole() -> None:
    key, value, headers = fit_dead_letter(b"k", b"v" * 1000, [("content-type", b"json")], DLQ, MiB)
    assert (key, value) == (b"k", b"v" * 1000)
    assert headers == [("content-type", b"json"), *DLQ]


@pytest.mark.parametrize("size", [MiB - 10, MiB, 3 * MiB])
def test_an_oversized_value_keeps_its_first_bytes_up_to_the_limit(size: int) -> None:
    value = (bytes(range(256)) * (size // 256 + 1))[:size]
    key, copy, headers = fit_dead_letter(b"org:cus", value, [("x-a", b"1")], DLQ, MiB)
    assert key == b"org:cus"
    assert copy is not None and value.startswith(copy)
    assert MiB - 200 < len(copy) < MiB
    assert record_size(key, copy, headers) <= MiB
    assert headers == [("x-a", b"1"), *DLQ, ("dlq-original-size", str(len(value)).encode()), ("dlq-truncated", b"true")]


def test_headers_too_large_to_copy_give_the_headers_only_stub() -> None:
    key, value, headers = fit_dead_letter(b"k", b"{}", [("x-huge", b"h" * MiB)], DLQ, MiB)
    assert (key, value) == (None, None)
    assert headers == [*DLQ, ("dlq-original-size", b"2"), ("dlq-truncated", b"true")]


def test_a_senders_dlq_headers_are_dropped_whatever_their_case() -> None:
    headers = [("dlq-reason", b"processing_error"), ("DLQ-Error", b"x"), ("x-dlq-note", b"kept"), ("a", b"b")]
    assert without_dlq_headers(headers) == [("x-dlq-note", b"kept"), ("a", b"b")]


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (MessageSizeTooLargeError(), "too_large"),
        (RecordListTooLargeError(), "too_large"),
        (CorruptRecordException(), "invalid_record"),
        (for_code(87)(), "invalid_record"),  # INVALID_RECORD: aiokafka has no class for it (UnknownError)
    ],
)
def test_refusals_caused_by_the_record_are_permanent(error: Exception, reason: str) -> None:
    refused = refusal(error)
    assert refused is not None and refused.reason == reason


@pytest.mark.parametrize(
    "error",
    [
        KafkaConnectionError(),
        NotLeaderForPartitionError(),
        RequestTimedOutError(),
        KafkaTimeoutError(),
        TopicAuthorizationFailedError(),
        OSError("connection reset"),
    ],
)
def test_everything_else_is_an_outage_not_a_refusal(error: Exception) -> None:
    assert refusal(error) is None

"""Adversarial records at the transport (SPEC §12): codecs, sizes, spoofed and unreadable headers, corrupt batches.

Each case ends with the wedge check (`assert_every_partition_answers`): the worker still answers on every partition.
"""

from __future__ import annotations

import uuid

import pytest

from tests.harness.adversarial import (
    MiB,
    Stack,
    answers,
    assert_every_partition_answers,
    command,
    corrupt,
    encode,
    event_body,
    headers_of,
    replace_once,
    send_crafted,
)

DLQ_COORDINATES = ("dlq-source-topic", "dlq-source-partition", "dlq-source-offset", "dlq-failed-at", "dlq-error")


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
async def test_every_kafka_codec_is_consumed(stack: Stack, codec: str) -> None:
    producer = await stack.producer(compression_type=codec, linger_ms=50)
    documents = [command(stack.organization_id, f"cus_{codec}_{n}") for n in range(30)]
    try:
        futures = [
            await producer.send(
                stack.topics["commands"],
                encode(document),
                key=f"{stack.organization_id}:{document['customer']['external_id']}".encode(),
            )
            for document in documents
        ]
        for future in futures:
            await future
    finally:
        await producer.stop()
    for document in documents:
        [event] = await stack.events.wait_for(answers(document["message_id"]), worker=stack.worker)
        assert event_body(event)["event_type"] == "customer.created"
    await assert_every_partition_answers(stack)


async def test_a_value_of_3_mib_in_a_tiny_gzip_batch_is_dead_lettered_cut_to_the_limit(stack: Stack) -> None:
    value = b'{"message_id": "m", "organization_id": "o", "customer": {"name": "' + b"x" * (3 * MiB) + b'"}}'
    producer = await stack.producer(compression_type="gzip", max_request_size=8 * MiB)
    try:
        metadata = await producer.send_and_wait(stack.topics["commands"], value, key=b"o:big", partition=0)
    finally:
        await producer.stop()
    letter = await stack.dead_letter_at(metadata.partition, metadata.offset)
    headers = headers_of(letter)
    assert headers["dlq-reason"] == b"too_large"
    assert headers["dlq-original-size"] == str(len(value)).encode()
    assert headers["dlq-truncated"] == b"true"
    assert letter.value is not None and value.startswith(letter.value)
    assert MiB - 1024 < len(letter.value) < MiB
    assert letter.key == b"o:big"
    await assert_every_partition_answers(stack)


async def test_a_senders_own_dlq_headers_are_dropped_before_the_copy(stack: Stack) -> None:
    spoofed = [
        ("dlq-reason", b"processing_error"),
        ("dlq-error", b"spoofed"),
        ("dlq-source-offset", b"999999"),
        ("x-kept", b"1"),
    ]
    producer = await stack.producer()
    try:
        metadata = await producer.send_and_wait(stack.topics["commands"], b"{not json", key=b"o:spoof", headers=spoofed)
    finally:
        await producer.stop()
    letter = await stack.dead_letter_at(metadata.partition, metadata.offset)
    names = [name for name, _ in letter.headers]
    assert names.count("dlq-reason") == 1 and names.count("dlq-error") == 1 and names.count("dlq-source-offset") == 1
    assert headers_of(letter)["dlq-reason"] == b"invalid_json"
    assert headers_of(letter)["dlq-error"] != b"spoofed"
    assert letter.headers[0] == ("x-kept", b"1")
    assert letter.value == b"{not json"
    await assert_every_partition_answers(stack)


async def test_a_record_whose_headers_alone_exceed_the_limit_gets_a_headers_only_stub(stack: Stack) -> None:
    producer = await stack.producer(max_request_size=4 * MiB)
    try:
        metadata = await producer.send_and_wait(
            stack.topics["commands"], b"[1]", key=b"o:stub", headers=[("x-huge", b"h" * (MiB + 10))]
        )
    finally:
        await producer.stop()
    letter = await stack.dead_letter_at(metadata.partition, metadata.offset)
    assert letter.key is None and letter.value is None
    headers = headers_of(letter)
    assert set(headers) == {"dlq-reason", *DLQ_COORDINATES, "dlq-original-size", "dlq-truncated"}
    assert (headers["dlq-reason"], headers["dlq-original-size"], headers["dlq-truncated"]) == (
        b"invalid_envelope",
        b"3",
        b"true",
    )
    await assert_every_partition_answers(stack)


async def test_a_header_key_that_is_not_utf8_is_dead_lettered_as_unreadable_and_the_partition_moves_on(
    stack: Stack,
) -> None:
    before = command(stack.organization_id, f"cus_before_{uuid.uuid4().hex[:6]}")
    bad = command(stack.organization_id, f"cus_bad_{uuid.uuid4().hex[:6]}")
    producer = await stack.producer()
    try:
        # One batch: a readable record, then one whose header key becomes b"K\xffZ" (CRC recomputed: a valid batch).
        base = await send_crafted(
            producer,
            stack.topics["commands"],
            1,
            [(b"k1", encode(before), [("x-a", b"1")]), (b"k2", encode(bad), [("KqZ", b"v")])],
            replace_once(b"KqZ", b"K\xffZ"),
        )
    finally:
        await producer.stop()
    [event] = await stack.events.wait_for(answers(before["message_id"]), worker=stack.worker)
    assert event_body(event)["event_type"] == "customer.created"
    letter = await stack.dead_letter_at(1, base + 1)
    headers = headers_of(letter)
    assert headers["dlq-reason"] == b"unreadable_record"
    assert b"UnicodeDecodeError" in headers["dlq-error"]
    assert (letter.key, letter.value) == (None, None)
    await assert_every_partition_answers(stack)


async def test_a_corrupt_batch_is_dead_lettered_as_unreadable_and_the_partition_moves_on(stack: Stack) -> None:
    documents = [command(stack.organization_id, f"cus_crc_{n}_{uuid.uuid4().hex[:6]}") for n in range(2)]
    producer = await stack.producer()
    try:
        base = await send_crafted(
            producer,
            stack.topics["commands"],
            2,
            [(b"k", encode(document), []) for document in documents],
            corrupt(documents[1]["message_id"].encode()),
        )
    finally:
        await producer.stop()
    for offset in (base, base + 1):
        letter = await stack.dead_letter_at(2, offset)
        assert headers_of(letter)["dlq-reason"] == b"unreadable_record"
        assert headers_of(letter)["dlq-error"] == b"batch CRC mismatch"
    await assert_every_partition_answers(stack)

"""SPEC §12 bounded work per record: 50 worst-case records of almost 1 MiB each (long lists, deep nesting, huge
strings, many invalid items) are all answered without a rebalance (decoding is off the event loop, so heartbeats go
on), within 300 MB of peak RSS, and the partitions still answer afterwards."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import orjson
import pytest

from tests.harness.adversarial import (
    MiB,
    Stack,
    assert_every_partition_answers,
    headers_of,
    peak_rss_mib,
)

LIMIT = MiB - 512  # just under the 1 MiB command limit, so every record is decoded (none is too_large)


def _envelope(org: str, customer: dict[str, Any]) -> dict[str, Any]:
    return {"message_id": str(uuid.uuid4()), "organization_id": org, "customer": customer}


def _fill(org: str, external_id: str, field: str, item: Any) -> tuple[str, bytes]:
    """A command whose `field` is a list of `item`s, as long as fits under LIMIT."""
    document = _envelope(org, {"external_id": external_id, field: []})
    empty = len(orjson.dumps(document))
    per_item = len(orjson.dumps([item, item])) - len(orjson.dumps([item]))
    document["customer"][field] = [item] * ((LIMIT - empty) // per_item)
    return document["message_id"], orjson.dumps(document)


def long_valid_list(org: str, n: int) -> tuple[str, bytes]:
    document = _envelope(org, {"external_id": f"cus_list_{n}", "tax_codes": []})
    count = (LIMIT - len(orjson.dumps(document))) // len(b'"t0000000",')
    document["customer"]["tax_codes"] = [f"t{i:07d}" for i in range(count)]
    return document["message_id"], orjson.dumps(document)


def blank_list(org: str, n: int) -> tuple[str, bytes]:
    return _fill(org, f"cus_blank_{n}", "tax_codes", "")


def invalid_metadata(org: str, n: int) -> tuple[str, bytes]:
    return _fill(org, f"cus_meta_{n}", "metadata", {"key": 1})


def huge_string(org: str, n: int) -> tuple[str, bytes]:
    document = _envelope(org, {"external_id": f"cus_name_{n}", "name": ""})
    document["customer"]["name"] = "é" * ((LIMIT - len(orjson.dumps(document))) // 2)
    return document["message_id"], orjson.dumps(document)


def many_unknown_fields(org: str, n: int) -> tuple[str, bytes]:
    document = _envelope(org, {"external_id": f"cus_fields_{n}"})
    count = (LIMIT - len(orjson.dumps(document))) // len(b'"f0000000":[0],')
    document["customer"].update({f"f{i:07d}": [0] for i in range(count)})
    return document["message_id"], orjson.dumps(document)


def unknown_list_of_objects(org: str, n: int) -> tuple[str, bytes]:
    return _fill(org, f"cus_objects_{n}", "x_extra", {"a": [1, {"b": None}]})


def deep_nesting(org: str, n: int) -> tuple[str, bytes]:
    document = _envelope(org, {"external_id": f"cus_deep_{n}", "metadata": "HOLE"})
    head, tail = orjson.dumps(document).split(b'"HOLE"')
    depth = (LIMIT - len(head) - len(tail)) // 2
    return document["message_id"], head + b"[" * depth + b"]" * depth + tail


# What costs the transport and the decoder (parsing, validating, building a large event): bounded here.
TRANSPORT_KINDS: list[Callable[[str, int], tuple[str, bytes]]] = [
    long_valid_list,
    huge_string,
    deep_nesting,
    many_unknown_fields,
    unknown_list_of_objects,
]
# What amplifies into a huge rejection (one error per item): bounded by the contract's capped error lists.
REJECTION_KINDS: list[Callable[[str, int], tuple[str, bytes]]] = [blank_list, invalid_metadata]


async def _parked_message_ids(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT convert_from(payload, 'UTF8')::jsonb ->> 'message_id' AS message_id FROM parked_events"
        )
        return {row["message_id"] for row in rows}
    finally:
        await conn.close()


def _joins(stack: Stack) -> int:
    """Assignment changes the worker logged (one at the first join; two more per rebalance)."""
    return sum(1 for record in stack.worker.log_records() if record.get("event") == "partitions_assigned")


async def fifty_worst_case_records(stack: Stack, kinds: list[Callable[[str, int], tuple[str, bytes]]]) -> None:
    """Publish 50 records of `kinds` in turn; require each answered (an event, a parked event or a dead letter),
    with no re-join of the group, no redelivery, a peak RSS under 300 MB, and every partition answering after."""
    await assert_every_partition_answers(stack)  # joined and warm before the measure
    joins_before = _joins(stack)
    assert joins_before >= 1, "the worker logs no assignment: a rebalance could not be seen"
    rss_before = peak_rss_mib(stack.worker.pid)
    records = [kinds[n % len(kinds)](stack.organization_id, n) for n in range(50)]
    assert all(MiB - 4096 < len(value) <= LIMIT for _, value in records)

    producer = await stack.producer(max_request_size=2 * MiB)
    placed: dict[str, tuple[int, int]] = {}
    started = time.monotonic()
    try:
        for index, (message_id, value) in enumerate(records):
            meta = await producer.send_and_wait(stack.topics["commands"], value, partition=index % stack.partitions)
            placed[message_id] = (meta.partition, meta.offset)
    finally:
        await producer.stop()

    answered: set[str] = set()
    deadline = time.monotonic() + 420
    while len(answered) < len(records):
        assert stack.worker.alive, stack.worker.tail()
        assert time.monotonic() < deadline, f"{len(answered)} of {len(records)} answered after 420 s"
        parked = await _parked_message_ids(stack.dsn)
        letters = {
            (int(headers_of(r)["dlq-source-partition"]), int(headers_of(r)["dlq-source-offset"]))
            for r in stack.dlq.records
        }
        for message_id in placed.keys() - answered:
            if message_id in stack.events.message_ids or message_id in parked or placed[message_id] in letters:
                answered.add(message_id)
        await asyncio.sleep(0.5)
    elapsed = time.monotonic() - started
    peak = peak_rss_mib(stack.worker.pid)
    print(
        f"50 worst-case records ({', '.join(kind.__name__ for kind in kinds)}) answered in {elapsed:.1f} s; "
        f"peak RSS {peak:.0f} MiB (before: {rss_before:.0f} MiB)"
    )
    assert _joins(stack) == joins_before, "the consumer re-joined its group: a rebalance happened"
    assert await stack.worker.metric("commands_total", outcome="duplicate") == 0, "a record was delivered again"
    assert peak < 300, f"peak RSS {peak:.0f} MiB"
    await assert_every_partition_answers(stack)


@pytest.mark.timeout(600)
async def test_fifty_worst_case_records_cause_no_rebalance_and_stay_under_300_mb(stack: Stack) -> None:
    await fifty_worst_case_records(stack, TRANSPORT_KINDS)

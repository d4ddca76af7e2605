"""Command builders, raw records, a recording DLQ sink, small Kafka readers that see a topic from its beginning
without a consumer group, and the `customer-worker` CLI as a subprocess."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from worker.contract.decode import DeadLetter
from worker.service import RawRecord

JSON_HEADERS: tuple[tuple[str, bytes], ...] = (("content-type", b"application/json"),)


def new_message_id() -> str:
    return str(uuid.uuid4())


def new_traceparent() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def trace_id(traceparent: str) -> str:
    return traceparent.split("-")[1]


def command(
    organization_id: str,
    customer: dict[str, Any],
    *,
    message_id: str | None = None,
    occurred_at: str | None = None,
) -> dict[str, Any]:
    """A command envelope (SPEC §2); `occurred_at` is left out when None."""
    document: dict[str, Any] = {
        "message_id": message_id or new_message_id(),
        "organization_id": organization_id,
        "customer": customer,
    }
    if occurred_at is not None:
        document["occurred_at"] = occurred_at
    return document


def encode(document: Any) -> bytes:
    return orjson.dumps(document)


def key_of(document: dict[str, Any]) -> bytes:
    return f"{document['organization_id']}:{document['customer'].get('external_id', '')}".encode()


@dataclass
class RecordFactory:
    """Raw records as the consumer would hand them to `BatchService.handle`, with increasing offsets."""

    topic: str = "test.commands"
    next_offset: int = 0

    def record(
        self,
        value: bytes | None,
        *,
        headers: Sequence[tuple[str, bytes]] = JSON_HEADERS,
        key: bytes | None = None,
        partition: int = 0,
    ) -> RawRecord:
        offset = self.next_offset
        self.next_offset += 1
        return RawRecord(
            topic=self.topic,
            partition=partition,
            offset=offset,
            key=key,
            value=value,
            headers=tuple(headers),
        )


@dataclass
class RecordingSink:
    """An in-memory `DeadLetterSink`: keeps every letter it was handed, in order."""

    letters: list[tuple[RawRecord, DeadLetter]] = field(default_factory=list)

    async def send(self, letters: Sequence[tuple[RawRecord, DeadLetter]]) -> None:
        self.letters.extend(letters)


def header_dict(record: Any) -> dict[str, bytes]:
    return dict(record.headers)


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    until: Callable[[list[Any]], bool],
    timeout: float = 20.0,  # noqa: ASYNC109 - a helper with a deadline of its own
    settle: float = 0.0,
) -> list[Any]:
    """Every record of `topic` from its beginning, read until `until(records)` holds (then `settle` seconds more, to
    catch records that should not be there), or raise TimeoutError with what was read."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    records: list[Any] = []
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        assert partitions, f"topic {topic} has no partitions"
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        satisfied_at: float | None = None
        while True:
            batches = await consumer.getmany(timeout_ms=200)
            for tp in sorted(batches, key=lambda tp: tp.partition):
                records.extend(batches[tp])
            now = loop.time()
            if satisfied_at is None and until(records):
                satisfied_at = now
            if satisfied_at is not None and now >= satisfied_at + settle:
                return records
            if now > deadline:
                raise TimeoutError(f"{topic}: condition not met after {timeout} s; read {len(records)} records")
    finally:
        await consumer.stop()


def payload(record: Any) -> dict[str, Any]:
    value: dict[str, Any] = orjson.loads(record.value)
    return value


def environ_without(names: Collection[str], **env: str) -> dict[str, str]:
    """The test's own environment without `names`, plus `env`: for a CLI subprocess that must see only the worker
    settings a test gives it."""
    return {**{k: v for k, v in os.environ.items() if k not in names}, **env}


def run_cli(
    *args: str,
    env: Mapping[str, str],
    cwd: Path | None = None,
    stdin: str | None = None,
    timeout: float = 30,
) -> subprocess.CompletedProcess[str]:
    """`customer-worker ARGS` (`python -m worker`) as a subprocess with exactly `env`; stdout and stderr captured as
    text."""
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        input=stdin,
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )

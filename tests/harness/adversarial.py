"""The adversarial suite's harness: one real worker process on the embedded stack, tails of its output topics, and
the wedge check that every adversarial case ends with.

`worker_stack` starts the worker (the module fixture `stack` of tests/adversarial/ and tests/soak/).
`assert_every_partition_answers` publishes one valid command to each partition of the commands topic and requires
each to be answered by its `customer.created` event: a case that stuck a partition, killed the worker or stopped the
relay fails there, whatever the case itself asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.record.util import calc_crc32c

from tests.harness.database import migrate_database, new_database
from tests.harness.processes import Launcher, WorkerProcess, worker_env
from worker.dev import create_topics

Headers = list[tuple[str, bytes]]
MiB = 1024 * 1024
PARTITIONS = 3
_CRC_AT = 17  # record batch v2: the CRC32C (4 bytes) of everything from the attributes (byte 21) on


class Tail:
    """Every record of a topic from its beginning, collected in the background."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self.records: list[ConsumerRecord[bytes, bytes]] = []
        self.message_ids: set[str] = set()  # of event records, parsed once as they arrive
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 * MiB,
        )
        await consumer.start()
        await consumer.topics()
        partitions = [TopicPartition(self._topic, p) for p in sorted(consumer.partitions_for_topic(self._topic) or ())]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        self._consumer = consumer
        self._task = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            for records in batches.values():
                self.records.extend(records)
                for record in records:
                    if record.value is not None and record.value.startswith(b"{"):
                        with contextlib.suppress(orjson.JSONDecodeError, TypeError, AttributeError):
                            self.message_ids.add(str(orjson.loads(record.value).get("message_id")))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    async def wait_for(
        self,
        predicate: Callable[[ConsumerRecord[bytes, bytes]], bool],
        count: int = 1,
        timeout: float = 60.0,  # noqa: ASYNC109
        worker: WorkerProcess | None = None,
    ) -> list[ConsumerRecord[bytes, bytes]]:
        deadline = time.monotonic() + timeout
        while True:
            found = [record for record in self.records if predicate(record)]
            if len(found) >= count:
                return found
            if worker is not None:
                assert worker.alive, f"the worker exited with {worker.returncode}\n{worker.tail()}"
            assert time.monotonic() < deadline, f"{len(found)} of {count} records on {self._topic} after {timeout} s"
            await asyncio.sleep(0.1)


def event_body(record: ConsumerRecord[bytes, bytes]) -> dict[str, Any]:
    assert record.value is not None
    body: dict[str, Any] = orjson.loads(record.value)
    return body


def answers(message_id: str) -> Callable[[ConsumerRecord[bytes, bytes]], bool]:
    return lambda record: record.value is not None and event_body(record).get("message_id") == message_id


def headers_of(record: ConsumerRecord[bytes, bytes]) -> dict[str, bytes]:
    return dict(record.headers)


def command(organization_id: str, external_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "message_id": str(uuid.uuid4()),
        "organization_id": organization_id,
        "customer": {"external_id": external_id, "name": f"Customer {external_id}", **fields},
    }


def encode(document: Any) -> bytes:
    return orjson.dumps(document)


@dataclass
class Stack:
    """A worker process with its topics and database, shared by the cases of one module."""

    bootstrap: str
    topics: dict[str, str]
    dsn: str
    partitions: int
    worker: WorkerProcess
    events: Tail
    dlq: Tail
    organization_id: str = field(default_factory=lambda: f"org_adv_{uuid.uuid4().hex[:8]}")

    async def producer(self, **options: Any) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, enable_idempotence=False, **options)
        await producer.start()
        return producer

    async def dead_letter_at(self, partition: int, offset: int, timeout: float = 60.0) -> ConsumerRecord[bytes, bytes]:  # noqa: ASYNC109
        """The DLQ copy of the commands topic's record at (partition, offset)."""

        def copies(record: ConsumerRecord[bytes, bytes]) -> bool:
            headers = headers_of(record)
            return (
                headers.get("dlq-source-partition") == str(partition).encode()
                and headers.get("dlq-source-offset") == str(offset).encode()
                and headers.get("dlq-source-topic") == self.topics["commands"].encode()
            )

        [letter] = await self.dlq.wait_for(copies, timeout=timeout, worker=self.worker)
        return letter


@contextlib.asynccontextmanager
async def worker_stack(
    kafka_bootstrap: str, pg_dsn: str, log_dir: Path, overrides: Mapping[str, str]
) -> AsyncIterator[Stack]:
    """One worker process on the session's servers, with topics and a database of its own; `overrides` are more
    settings (a module's `WORKER_SETTINGS`)."""
    suffix = uuid.uuid4().hex[:10]
    topics = {role: f"adv.{role}.{suffix}" for role in ("commands", "events", "dlq")}
    await create_topics(kafka_bootstrap, list(topics.values()), partitions=PARTITIONS)
    launcher = Launcher(log_dir)
    async with new_database(pg_dsn, prefix="adv") as dsn:
        await migrate_database(dsn)
        env = worker_env(
            database_url=dsn, bootstrap=kafka_bootstrap, topics=topics, group_id=f"adv-{suffix}", **overrides
        )
        worker = launcher.start(env, name="adversarial")
        events, dlq = Tail(kafka_bootstrap, topics["events"]), Tail(kafka_bootstrap, topics["dlq"])
        try:
            await worker.wait_http("/readyz", 200, timeout=60)
            await events.start()
            await dlq.start()
            yield Stack(kafka_bootstrap, topics, dsn, PARTITIONS, worker, events, dlq)
        finally:
            await events.stop()
            await dlq.stop()
            launcher.cleanup()


async def assert_every_partition_answers(stack: Stack, timeout: float = 60.0) -> None:  # noqa: ASYNC109
    """The wedge check: a valid command on EVERY partition of the commands topic, each answered by its event."""
    producer = await stack.producer()
    sent = []
    try:
        for partition in range(stack.partitions):
            document = command(stack.organization_id, f"cus_probe_{uuid.uuid4().hex[:8]}")
            key = f"{stack.organization_id}:{document['customer']['external_id']}".encode()
            await producer.send_and_wait(stack.topics["commands"], encode(document), key=key, partition=partition)
            sent.append(document["message_id"])
    finally:
        await producer.stop()
    for message_id in sent:
        [event] = await stack.events.wait_for(answers(message_id), timeout=timeout, worker=stack.worker)
        assert event_body(event)["event_type"] == "customer.created"


async def send_crafted(
    producer: AIOKafkaProducer,
    topic: str,
    partition: int,
    records: Sequence[tuple[bytes | None, bytes | None, Headers]],
    mutate: Callable[[bytearray], bool],
) -> int:
    """Publish one uncompressed record batch whose bytes `mutate` changed in place; `mutate` returns whether the
    CRC is then recomputed (a valid batch of invalid content) or left stale (a corrupt batch). Returns the base
    offset. What no client library would produce, as a broken or hostile producer can."""
    batch = producer.create_batch()
    for key, value, headers in records:
        assert batch.append(key=key, value=value, timestamp=None, headers=headers) is not None
    buffer: bytearray = batch._build()
    if mutate(buffer):
        buffer[_CRC_AT : _CRC_AT + 4] = calc_crc32c(bytes(buffer[_CRC_AT + 4 :])).to_bytes(4, "big")
    metadata = await (await producer.send_batch(batch, topic, partition=partition))
    return int(metadata.offset)


def replace_once(old: bytes, new: bytes) -> Callable[[bytearray], bool]:
    """A mutation that swaps `old` for `new` (same length) and recomputes the CRC."""
    assert len(old) == len(new)

    def mutate(buffer: bytearray) -> bool:
        at = buffer.find(old)
        assert at > 0
        buffer[at : at + len(old)] = new
        return True

    return mutate


def corrupt(marker: bytes) -> Callable[[bytearray], bool]:
    """A mutation that flips a byte of `marker` and leaves the CRC stale."""

    def mutate(buffer: bytearray) -> bool:
        at = buffer.find(marker)
        assert at > 0
        buffer[at] ^= 0xFF
        return False

    return mutate


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set size (VmHWM), in MiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/PID/status")

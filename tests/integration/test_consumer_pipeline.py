"""The two-stage consumer (worker/consumer.py) against the real broker: batch N+1 is decoded while batch N
is answered, at most one batch is answered at a time and in poll order, a failing batch takes the one decoded after
it down with it (both read again, nothing skipped, nothing answered twice), and a stop waits for the batch in
flight and commits it."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pydantic import SecretStr
from structlog.testing import capture_logs

from worker.consumer import CommandConsumer
from worker.settings import Settings
from worker.transport.raw import RawRecord

pytestmark = pytest.mark.timeout(90)

RECORDS = 20
BATCH = 5
WAIT = 30.0  # only bounds a failing run; every wait below ends on a state change


@dataclass
class Stages:
    """Records what each stage saw, in the order things happened."""

    steps: list[tuple[str, int]] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)  # offsets, in the order their batches were answered
    answering = 0
    most_at_once = 0
    first_decoded: asyncio.Event = field(default_factory=asyncio.Event)
    next_decoded: asyncio.Event = field(default_factory=asyncio.Event)
    all_answered: asyncio.Event = field(default_factory=asyncio.Event)

    def decoded(self, records: Sequence[RawRecord]) -> int:
        first = records[0].offset
        self.steps.append(("decode", first))
        if not self.first_decoded.is_set():
            self.first_decoded.set()
        elif first != self.steps[0][1]:
            self.next_decoded.set()
        return first


Answer = Callable[[Stages, Sequence[RawRecord]], Awaitable[None]]


async def _publish(bootstrap: str, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for index in range(RECORDS):
            await producer.send(topic, value=str(index).encode(), partition=0)
        await producer.flush()
    finally:
        await producer.stop()


async def _committed(bootstrap: str, topic: str, group: str) -> int | None:
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await reader.start()
    try:
        committed: int | None = await reader.committed(TopicPartition(topic, 0))
        return committed
    finally:
        await reader.stop()


@asynccontextmanager
async def _consuming(
    bootstrap: str, topic: str, group: str, answer: Answer
) -> AsyncIterator[tuple[Stages, CommandConsumer[Sequence[RawRecord]]]]:
    stages = Stages()

    class Sink:
        async def prepare(self, records: Sequence[RawRecord]) -> Sequence[RawRecord]:
            stages.decoded(records)
            return records

        async def apply(self, records: Sequence[RawRecord]) -> None:
            stages.answering += 1
            stages.most_at_once = max(stages.most_at_once, stages.answering)
            stages.steps.append(("answer", records[0].offset))
            try:
                await answer(stages, records)
            finally:
                stages.answering -= 1
            stages.answered.extend(record.offset for record in records)
            stages.steps.append(("answered", records[0].offset))
            if len(stages.answered) >= RECORDS:
                stages.all_answered.set()

    settings = Settings(
        database_url=SecretStr("postgresql://unused@127.0.0.1:9/unused"),
        kafka_bootstrap_servers=bootstrap,
        commands_topic=topic,
        kafka_group_id=group,
        batch_size=BATCH,
        kafka_session_timeout_ms=6000,
        shutdown_timeout=20.0,
    )
    consumer = CommandConsumer(
        settings,
        Sink(),
        lambda partitions: stages.steps.append(("partitions", len(partitions))),
        grace=settings.shutdown_timeout * 0.5,
    )
    await consumer.start()
    try:
        yield stages, consumer
    finally:
        await consumer.stop()


def _group() -> str:
    return f"pipeline-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("unique_topics", [1], indirect=True)
async def test_the_next_batch_is_prepared_while_one_is_applied_one_at_a_time_in_order(
    kafka_bootstrap: str, unique_topics: dict[str, str]
) -> None:
    topic, group = unique_topics["commands"], _group()
    await _publish(kafka_bootstrap, topic)
    overlapped: list[bool] = []

    async def answer(stages: Stages, records: Sequence[RawRecord]) -> None:
        if not overlapped:
            # The first batch is answered only once the next one has been decoded: without the overlap this waits
            # in vain (the consumer would not poll again before this returns).
            try:
                await asyncio.wait_for(stages.next_decoded.wait(), WAIT)
                overlapped.append(True)
            except TimeoutError:
                overlapped.append(False)

    async with _consuming(kafka_bootstrap, topic, group, answer) as (stages, _):
        await asyncio.wait_for(stages.all_answered.wait(), WAIT * 2)
        assert overlapped == [True]
        first_batch = stages.steps[0][1]
        # The second batch's decode happened between the first batch's start and end of answering.
        order = [step for step in stages.steps if step[0] != "decode" or step[1] != first_batch]
        assert order.index(("answer", first_batch)) < order.index(("answered", first_batch))
        second = next(step for step in order if step[0] == "decode")
        assert order.index(("answer", first_batch)) < order.index(second) < order.index(("answered", first_batch))
    assert stages.answered == list(range(RECORDS)), "every record answered once, in poll order"
    assert stages.most_at_once == 1
    assert await _committed(kafka_bootstrap, topic, group) == RECORDS


@pytest.mark.parametrize("unique_topics", [1], indirect=True)
async def test_a_failing_batch_drops_the_next_decoded_batch_and_both_are_read_again(
    kafka_bootstrap: str, unique_topics: dict[str, str]
) -> None:
    topic, group = unique_topics["commands"], _group()
    await _publish(kafka_bootstrap, topic)
    failed: list[int] = []

    async def answer(stages: Stages, records: Sequence[RawRecord]) -> None:
        if not failed:
            await asyncio.wait_for(stages.next_decoded.wait(), WAIT)  # the next batch is decoded, waiting
            failed.append(records[0].offset)
            raise RuntimeError("unexpected failure while answering")

    with capture_logs() as logs:
        async with _consuming(kafka_bootstrap, topic, group, answer) as (stages, _):
            await asyncio.wait_for(stages.all_answered.wait(), WAIT * 2)
    assert failed == [0]
    assert stages.answered == list(range(RECORDS)), "nothing skipped, nothing answered twice, in order"
    decoded = [first for step, first in stages.steps if step == "decode"]
    dropped = next(first for first in decoded if first != 0)
    # The failed batch and the one decoded after it were both read again; the dropped one was never answered
    # before the failed one was answered again.
    assert decoded.count(0) >= 2
    assert decoded.count(dropped) >= 2
    assert stages.steps.index(("answered", 0)) < stages.steps.index(("answer", dropped))
    assert stages.most_at_once == 1
    assert [entry["records"] for entry in logs if entry["event"] == "batch_abandoned"] == [BATCH]
    assert await _committed(kafka_bootstrap, topic, group) == RECORDS


@pytest.mark.parametrize("unique_topics", [1], indirect=True)
async def test_a_stop_waits_for_the_batch_in_flight_and_commits_it(
    kafka_bootstrap: str, unique_topics: dict[str, str]
) -> None:
    topic, group = unique_topics["commands"], _group()
    await _publish(kafka_bootstrap, topic)
    release = asyncio.Event()
    held: list[int] = []

    async def answer(stages: Stages, records: Sequence[RawRecord]) -> None:
        if not held:
            held.append(records[0].offset)
            await release.wait()

    events: list[str] = []
    with capture_logs() as logs:
        async with _consuming(kafka_bootstrap, topic, group, answer) as (stages, consumer):
            await _until(lambda: bool(held))

            async def stop() -> None:
                await consumer.stop()  # `_consuming` stops it again on exit: harmless
                events.append("stopped")

            stopping = asyncio.create_task(stop())
            # Released only once the stop says it waits for the batch: a stop that did not wait would close the
            # consumer meanwhile and never log this (the test would then fail on the timeout).
            await _until(lambda: any(entry["event"] == "consumer_stop_waits" for entry in logs))
            events.append("released")
            release.set()
            await asyncio.wait_for(stopping, WAIT)
    assert events == ["released", "stopped"]
    assert held == [0]
    assert stages.answered[:BATCH] == list(range(BATCH))
    # Committed after the batch was answered, while the consumer was still open.
    assert await _committed(kafka_bootstrap, topic, group) == len(stages.answered)


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        while not condition():  # noqa: ASYNC110 - conditions on captured logs, which signal nothing
            await asyncio.sleep(0.01)


class _RevocationSeen(logging.Handler):
    """aiokafka logs this line just before it calls the rebalance listener's `on_partitions_revoked` (with an empty
    set at a consumer's first join, which is not a revocation)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        revoked = record.args[0] if isinstance(record.args, tuple) and record.args else None
        if record.getMessage().startswith("Revoking previously assigned partitions") and revoked:
            self.seen.set()


@pytest.mark.parametrize("unique_topics", [1], indirect=True)
async def test_a_revocation_waits_for_the_batch_in_flight_which_commits_and_is_not_applied_twice(
    kafka_bootstrap: str, unique_topics: dict[str, str]
) -> None:
    topic, group = unique_topics["commands"], _group()
    await _publish(kafka_bootstrap, topic)
    revocation = _RevocationSeen()
    coordinator_log = logging.getLogger("aiokafka.consumer.group_coordinator")
    coordinator_log.addHandler(revocation)
    level = coordinator_log.level
    coordinator_log.setLevel(logging.INFO)
    held: list[int] = []
    answered: list[int] = []  # by either consumer

    async def first(stages: Stages, records: Sequence[RawRecord]) -> None:
        if not held:
            held.append(records[0].offset)
            # Held until the group rebalances around it (a second consumer joins): the revocation must wait.
            await asyncio.wait_for(revocation.seen.wait(), WAIT)
        answered.extend(record.offset for record in records)

    async def second(stages: Stages, records: Sequence[RawRecord]) -> None:
        answered.extend(record.offset for record in records)

    try:
        with capture_logs() as logs:
            async with _consuming(kafka_bootstrap, topic, group, first) as (stages, _):
                await _until(lambda: bool(held))
                async with _consuming(kafka_bootstrap, topic, group, second):
                    await _until(lambda: len(answered) >= RECORDS)
                    await _until(lambda: stages.answering == 0)
    finally:
        coordinator_log.removeHandler(revocation)
        coordinator_log.setLevel(level)
    assert revocation.seen.is_set()
    # The held batch was answered (and committed) before the revocation gave its partition up.
    # (The group's first join reports an empty revocation too, before the held batch.)
    began = stages.steps.index(("answer", held[0]))
    assert stages.steps.index(("answered", held[0]), began) < stages.steps.index(("partitions", 0), began)
    assert sorted(answered) == list(range(RECORDS)), "each record answered once across the two consumers"
    assert not [entry for entry in logs if entry["event"] == "commit_skipped_after_rebalance"]
    assert await _committed(kafka_bootstrap, topic, group) == RECORDS

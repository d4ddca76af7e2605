"""A DLQ replay job in front of a broker that refuses its sends (`tests.faults.proxy.RefusingProxy` answers every
Produce request carrying the replay's `x-replay-item` header with MESSAGE_TOO_LARGE) or cannot be reached at all: a
record is marked replayed only after the broker acknowledged its republish."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from tests.harness.proxy import ProxiedTansu, RefusingProxy
from tests.harness.records import command, encode, key_of, read_topic
from worker.contract.codes import DlqReason
from worker.contract.decode import DeadLetter
from worker.dev import create_topics, free_port
from worker.ops.jobs import DeadLetterFilter, JobRunner, start_job
from worker.settings import KafkaSettings
from worker.transport.dead_letter_log import REPLAY_ITEM_HEADER, RecordedDeadLetters
from worker.transport.producers import KafkaProducer
from worker.transport.raw import RawRecord

pytestmark = pytest.mark.timeout(120)
MESSAGE_TOO_LARGE = 10


class _CuttableRefusingProxy(RefusingProxy):
    """The refusing proxy that also plays an unreachable broker while `cut` (as `TcpProxy` does)."""

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            self.refused += 1
            writer.transport.abort()
            return
        await super()._accept(reader, writer)


@pytest.fixture
async def proxied(tmp_path: Path) -> AsyncIterator[tuple[RefusingProxy, KafkaSettings]]:
    proxy_port = free_port()
    tansu = ProxiedTansu(proxy_port, log_path=tmp_path / "tansu.log")
    await asyncio.to_thread(tansu.start)
    proxy = _CuttableRefusingProxy(
        tansu.port, proxy_port, marker=REPLAY_ITEM_HEADER.encode(), error_code=MESSAGE_TOO_LARGE
    )
    await proxy.start()
    try:
        topics = {role: f"opjobs.{role}.{uuid.uuid4().hex[:8]}" for role in ("commands", "events", "dlq")}
        await create_topics(f"127.0.0.1:{proxy_port}", list(topics.values()), partitions=2)
        yield (
            proxy,
            KafkaSettings(
                kafka_bootstrap_servers=f"127.0.0.1:{proxy_port}",
                commands_topic=topics["commands"],
                events_topic=topics["events"],
                dlq_topic=topics["dlq"],
                kafka_enable_idempotence=False,
            ),
        )
    finally:
        await proxy.stop()
        await asyncio.to_thread(tansu.stop)


async def _dead_letters(settings: KafkaSettings, pool: asyncpg.Pool[asyncpg.Record], org: str, n: int) -> list[int]:
    producer = KafkaProducer(settings)
    documents = [command(org, {"external_id": f"cus_{i}"}) for i in range(n)]
    letters = [
        (RawRecord(settings.commands_topic, 0, i, key_of(d), encode(d), ()), DeadLetter(DlqReason.PROCESSING_ERROR))
        for i, d in enumerate(documents)
    ]
    try:
        await RecordedDeadLetters(producer, settings.dlq_topic, pool).send(letters)
    finally:
        await producer.stop()
    return [row["id"] for row in await pool.fetch("SELECT id FROM dead_letters ORDER BY id")]


async def test_a_refused_republish_leaves_the_row_not_replayed(
    proxied: tuple[RefusingProxy, KafkaSettings], pool: asyncpg.Pool[asyncpg.Record]
) -> None:
    proxy, settings = proxied
    org = f"org_{uuid.uuid4().hex[:8]}"
    ids = await _dead_letters(settings, pool, org, 2)

    job_id = await start_job(pool, "dlq_replay", DeadLetterFilter(organization_id=org), actor="test")
    status = await JobRunner(pool, settings).run_job(job_id)
    assert status is not None and (status.state, status.done, status.failed) == ("done", 0, 2)
    assert proxy.produce_refused >= 1  # the broker's answer, on the wire
    rows = await pool.fetch("SELECT replay_state, replay_job_id FROM dead_letters WHERE id = ANY($1)", ids)
    assert {(r["replay_state"], r["replay_job_id"]) for r in rows} == {("new", None)}
    details = {r["detail"] for r in await pool.fetch("SELECT detail FROM operator_job_items WHERE job_id = $1", job_id)}
    assert details == {"refused by the broker: too_large"}
    with pytest.raises(TimeoutError):
        await read_topic(f"127.0.0.1:{proxy.port}", settings.commands_topic, until=bool, timeout=2)


async def test_an_unreachable_broker_is_waited_out_and_nothing_is_marked(
    proxied: tuple[RefusingProxy, KafkaSettings], pool: asyncpg.Pool[asyncpg.Record]
) -> None:
    proxy, settings = proxied
    org = f"org_{uuid.uuid4().hex[:8]}"
    ids = await _dead_letters(settings, pool, org, 2)
    proxy.marker = b"\x00never-present\x00"  # sends go through once the broker is back
    job_id = await start_job(pool, "dlq_replay", DeadLetterFilter(organization_id=org), actor="test")
    proxy.cut()
    runner = JobRunner(pool, settings)
    task = asyncio.create_task(runner.run_job(job_id))
    deadline = asyncio.get_running_loop().time() + 30
    while not await pool.fetchval("SELECT last_error LIKE 'waiting for%' FROM operator_jobs WHERE id = $1", job_id):
        assert asyncio.get_running_loop().time() < deadline, "the outage was never noted"
        await asyncio.sleep(0.2)
    assert await pool.fetchval("SELECT count(*) FROM operator_job_items WHERE job_id = $1", job_id) == 0
    assert await pool.fetchval("SELECT count(*) FROM dead_letters WHERE replay_state <> 'new'") == 0
    assert proxy.refused > 0

    proxy.restore()
    status = await asyncio.wait_for(task, timeout=60)
    assert status is not None and (status.state, status.done, status.failed) == ("done", 2, 0)
    states = {
        r["replay_state"] for r in await pool.fetch("SELECT replay_state FROM dead_letters WHERE id = ANY($1)", ids)
    }
    assert states == {"replayed"}

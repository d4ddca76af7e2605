"""Operators' bulk jobs (issue 20) against real PostgreSQL and Tansu with the worker running: DLQ replay end to end
(applied, marked replayed after the broker's ack, a record that fails again comes back as such and is not replayed
twice by the same job), cancel, resume after a lease runs out, parked events republished."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from tests.harness.in_process import RunningWorker, running_worker
from tests.harness.records import command, encode, key_of, payload, read_topic
from worker.contract.codes import DlqReason
from worker.contract.decode import DeadLetter
from worker.ops.jobs import DeadLetterFilter, Ids, JobRunner, ParkedFilter, dry_run, job_status, start_job
from worker.store.db import create_pool
from worker.transport.dead_letter_log import RecordedDeadLetters
from worker.transport.producers import KafkaProducer
from worker.transport.raw import RawRecord

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
async def stack(pg_dsn: str, kafka_bootstrap: str) -> AsyncIterator[RunningWorker]:
    async with running_worker(pg_dsn, kafka_bootstrap, "opjobs", kind=RunningWorker) as running:
        yield running


@pytest.fixture
async def db(stack: RunningWorker) -> AsyncIterator[asyncpg.Pool[asyncpg.Record]]:
    pool = await create_pool(stack.dsn, size=3)
    try:
        yield pool
    finally:
        await pool.close()


async def _dead_letter(stack: RunningWorker, pool: asyncpg.Pool[asyncpg.Record], documents: list[Any]) -> list[int]:
    """Valid commands dead-lettered as `processing_error` (as after a bug since fixed), through the worker's own
    sink: their DLQ copies and rows. Their `dead_letters` ids."""
    producer = KafkaProducer(stack.kafka_settings())
    letters = [
        (
            RawRecord(stack.topics["commands"], 0, n, key_of(d), encode(d), (("content-type", b"application/json"),)),
            DeadLetter(DlqReason.PROCESSING_ERROR, "failed repeatedly: TypeError"),
        )
        for n, d in enumerate(documents)
    ]
    try:
        await RecordedDeadLetters(producer, stack.topics["dlq"], pool).send(letters)
    finally:
        await producer.stop()
    organization = documents[0]["organization_id"]
    rows = await pool.fetch("SELECT id FROM dead_letters WHERE organization_id = $1 ORDER BY id", organization)
    return [row["id"] for row in rows]


async def _until(pool: asyncpg.Pool[asyncpg.Record], query: str, *args: Any, timeout: float = 20) -> Any:  # noqa: ASYNC109
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := await pool.fetchval(query, *args)):
        if loop.time() > deadline:
            raise AssertionError(f"not true after {timeout} s: {query}")
        await asyncio.sleep(0.1)
    return value


def _org() -> str:
    return f"org_{uuid.uuid4().hex[:10]}"


async def test_replay_applies_the_records_and_marks_them_after_the_ack(
    stack: RunningWorker, db: asyncpg.Pool[asyncpg.Record]
) -> None:
    org = _org()
    documents = [command(org, {"external_id": f"cus_{n}"}) for n in range(3)]
    ids = await _dead_letter(stack, db, documents)
    selection = DeadLetterFilter(organization_id=org, reason="processing_error")
    jobs_before = await db.fetchval("SELECT count(*) FROM operator_jobs")
    assert await dry_run(db, "dlq_replay", selection) == 3
    assert await db.fetchval("SELECT count(*) FROM operator_jobs") == jobs_before  # a dry run writes no job

    job_id = await start_job(db, "dlq_replay", selection, actor="test", rate_per_second=50)
    status = await JobRunner(db, stack.kafka_settings()).run_job(job_id)
    assert status is not None
    assert (status.state, status.total, status.done, status.failed) == ("done", 3, 3, 0)

    events = await read_topic(
        stack.bootstrap,
        stack.topics["events"],
        until=lambda rs: sum(payload(r)["organization_id"] == org for r in rs) >= 3,
    )
    assert {payload(r)["event_type"] for r in events if payload(r)["organization_id"] == org} == {"customer.created"}
    rows = await db.fetch("SELECT replay_state, replay_job_id, replayed_at FROM dead_letters WHERE id = ANY($1)", ids)
    assert {(r["replay_state"], r["replay_job_id"]) for r in rows} == {("replayed", job_id)}
    items = await db.fetch("SELECT item_id, result FROM operator_job_items WHERE job_id = $1 ORDER BY item_id", job_id)
    assert [(r["item_id"], r["result"]) for r in items] == [(i, "sent") for i in ids]
    # Replayed rows are no longer candidates of a new job.
    assert await dry_run(db, "dlq_replay", selection) == 0


async def test_a_record_that_fails_again_comes_back_as_returned_and_is_not_replayed_twice(
    stack: RunningWorker, db: asyncpg.Pool[asyncpg.Record]
) -> None:
    bad = f'{{"organization_id": "{_org()}", broken {uuid.uuid4().hex}'.encode()
    await stack.publish(bad, key=b"loop:1")
    original = await _until(db, "SELECT id FROM dead_letters WHERE value_sha256 = sha256($1)", bad)

    job_id = await start_job(db, "dlq_replay", Ids((original,)), actor="test")
    runner = JobRunner(db, stack.kafka_settings())
    status = await runner.run_job(job_id)
    assert status is not None and (status.state, status.done) == ("done", 1)

    # The worker dead-letters it again; the copy carries the job's headers back, so its row names the job.
    returned = await _until(db, "SELECT id FROM dead_letters WHERE returned_from_job_id = $1", job_id)
    row = await db.fetchrow("SELECT * FROM dead_letters WHERE id = $1", returned)
    assert row is not None
    assert (row["returned_from_id"], row["replay_state"]) == (original, "new")
    assert await db.fetchval("SELECT replay_state FROM dead_letters WHERE id = $1", original) == "returned"
    assert (
        await db.fetchval("SELECT result FROM operator_job_items WHERE job_id = $1 AND item_id = $2", job_id, original)
        == "returned"
    )
    status = await job_status(db, job_id)
    assert status is not None and status.returned == 1

    # The same job, run again (as after a restart): the returned copy is not part of it, nothing is sent.
    await db.execute("UPDATE operator_jobs SET state = 'pending', finished_at = NULL WHERE id = $1", job_id)
    status = await runner.run_job(job_id)
    assert status is not None and (status.state, status.done) == ("done", 1)
    sends = await read_topic(stack.bootstrap, stack.topics["commands"], until=lambda rs: True, settle=1.0)
    assert sum(r.value == bad for r in sends) == 2  # the original and the one replay


async def test_cancel_stops_a_job_between_chunks(stack: RunningWorker, db: asyncpg.Pool[asyncpg.Record]) -> None:
    org = _org()
    await _dead_letter(stack, db, [command(org, {"external_id": f"cus_{n}"}) for n in range(6)])
    job_id = await start_job(db, "dlq_replay", DeadLetterFilter(organization_id=org), actor="test", rate_per_second=2)
    runner = JobRunner(db, stack.kafka_settings())
    task = asyncio.create_task(runner.run_job(job_id))
    await _until(db, "SELECT done_count >= 2 FROM operator_jobs WHERE id = $1", job_id)
    from worker.ops.jobs import cancel_job

    assert await cancel_job(db, job_id, actor="test")
    status = await asyncio.wait_for(task, timeout=20)
    assert status is not None and status.state == "cancelled"
    assert 2 <= status.done < 6
    replayed = await db.fetchval(
        "SELECT count(*) FROM dead_letters WHERE organization_id = $1 AND replay_state = 'replayed'", org
    )
    assert replayed == status.done
    assert not await cancel_job(db, job_id, actor="test")  # finished: nothing to cancel


async def test_a_job_resumes_after_its_runner_died(stack: RunningWorker, db: asyncpg.Pool[asyncpg.Record]) -> None:
    org = _org()
    ids = await _dead_letter(stack, db, [command(org, {"external_id": f"cus_{n}"}) for n in range(4)])
    job_id = await start_job(db, "dlq_replay", DeadLetterFilter(organization_id=org), actor="test", rate_per_second=2)
    dead = JobRunner(db, stack.kafka_settings(), owner="dead-runner")
    task = asyncio.create_task(dead.run_job(job_id))
    await _until(db, "SELECT done_count >= 2 FROM operator_jobs WHERE id = $1", job_id)
    task.cancel()  # killed mid-job: its lease stays until it runs out
    await asyncio.gather(task, return_exceptions=True)
    done_before = await db.fetchval("SELECT done_count FROM operator_jobs WHERE id = $1", job_id)

    other = JobRunner(db, stack.kafka_settings(), owner="next-runner")
    assert await other.run_job(job_id) is not None  # the lease is still held: it follows, claims nothing
    await db.execute("UPDATE operator_jobs SET lease_until = now() - interval '1 second' WHERE id = $1", job_id)
    status = await other.run_job(job_id)
    assert status is not None and (status.state, status.done) == ("done", 4)
    items = await db.fetch("SELECT item_id FROM operator_job_items WHERE job_id = $1 ORDER BY item_id", job_id)
    assert [r["item_id"] for r in items] == ids  # each once: the second runner went on after the last recorded
    assert done_before >= 2
    copies = await read_topic(
        stack.bootstrap,
        stack.topics["commands"],
        until=lambda rs: sum(org.encode() in (r.value or b"") for r in rs) >= 4,
        settle=1.0,
    )
    assert sum(org.encode() in (r.value or b"") for r in copies) == 4


async def test_parked_events_are_republished_by_a_job(stack: RunningWorker, db: asyncpg.Pool[asyncpg.Record]) -> None:
    org = _org()
    for n in range(3):
        await db.execute(
            "INSERT INTO parked_events (outbox_id, event_id, event_key, event_type, payload, created_at, reason, "
            "error) VALUES ($1, $2, $3, 'customer.updated', $4, now(), 'too_large', 'too large')",
            n,
            uuid.uuid4(),
            f"{org}:cus_{n}",
            b'{"event_type": "customer.updated", "organization_id": "' + org.encode() + b'"}',
        )
    selection = ParkedFilter(organization_id=org)
    assert await dry_run(db, "parked_republish", selection) == 3
    job_id = await start_job(db, "parked_republish", selection, actor="test")
    status = await JobRunner(db, stack.kafka_settings()).run_job(job_id)
    assert status is not None and (status.state, status.done) == ("done", 3)
    assert await db.fetchval("SELECT count(*) FROM parked_events WHERE event_key LIKE $1", f"{org}:%") == 0
    events = await read_topic(
        stack.bootstrap, stack.topics["events"], until=lambda rs: sum(org.encode() in r.value for r in rs) >= 3
    )
    assert sum(org.encode() in r.value for r in events) == 3


async def test_a_stopped_runner_gives_the_job_back_and_a_broken_job_fails(
    stack: RunningWorker, db: asyncpg.Pool[asyncpg.Record]
) -> None:
    org = _org()
    await _dead_letter(stack, db, [command(org, {"external_id": f"cus_{n}"}) for n in range(4)])
    job_id = await start_job(db, "dlq_replay", DeadLetterFilter(organization_id=org), actor="test", rate_per_second=2)
    first = JobRunner(db, stack.kafka_settings(), owner="stopping-runner")
    task = asyncio.create_task(first.run_job(job_id))
    await _until(db, "SELECT done_count >= 2 FROM operator_jobs WHERE id = $1", job_id)
    await first.stop()  # as the console does on shutdown
    stopped = await asyncio.wait_for(task, timeout=20)
    assert stopped is not None and stopped.state == "running"
    assert await db.fetchval("SELECT lease_until <= now() FROM operator_jobs WHERE id = $1", job_id)
    # Given back: the next runner claims it at once (no lease to wait out) and finishes it.
    status = await JobRunner(db, stack.kafka_settings(), owner="next").run_job(job_id)
    assert status is not None and (status.state, status.done) == ("done", 4)

    # A job that fails for a reason of its own (here a filter no version knows) ends failed, not retried forever.
    broken = await db.fetchval(
        "INSERT INTO operator_jobs (kind, filter, selection, total, created_by, rate_per_second) "
        "VALUES ('dlq_replay', '{\"no_such_filter\": 1}', '{\"max_id\": 10}', 1, 'test', 10) RETURNING id"
    )
    status = await JobRunner(db, stack.kafka_settings()).run_job(broken)
    assert status is not None and status.state == "failed"
    assert status.last_error is not None and status.last_error.startswith("ValueError")

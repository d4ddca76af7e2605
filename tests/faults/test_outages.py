"""SPEC §5 Start-up and Faults: PostgreSQL or the broker unavailable.

The worker waits and retries, not ready, and does not exit; it never commits past an unapplied command and recovers
by itself when the dependency returns. PostgreSQL outages use a server of the test's own (`fast=False`, so what
was committed survives `kill()`); the shared in-memory broker is never restarted: broker unavailability is tested
at start-up, with a broker of the test's own that appears later.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from pathlib import Path

import pytest

from tests.harness.processes import (
    Launcher,
    WorkerProcess,
    check_commits_cover_only_applied,
    check_exactly_once,
    committed_offsets,
    make_commands,
    progress,
    publish_commands,
    read_events,
    read_records,
    wait_for_completion,
    wait_for_progress,
    worker_env,
)
from worker.dev import EmbeddedPostgres, EmbeddedTansu, create_topics, free_port

SHUTDOWN_TIMEOUT = 10.0


def _dependency_retries(worker: WorkerProcess, dependency: str) -> int:
    return sum(
        1
        for record in worker.log_records()
        if record.get("event") == "dependency_retry" and record.get("dependency") == dependency
    )


async def _more_retries(worker: WorkerProcess, dependency: str, *, count: int, timeout: float) -> set[int | None]:  # noqa: ASYNC109
    """Wait until the worker has logged `count` more retries of `dependency`, alive all along; the /readyz statuses
    seen meanwhile. A state to wait for, rather than a time in which nothing must happen."""
    target = _dependency_retries(worker, dependency) + count
    deadline = time.monotonic() + timeout
    readiness: set[int | None] = set()
    while _dependency_retries(worker, dependency) < target:
        assert worker.alive, f"{worker.name} exited with {worker.returncode}\n{worker.tail()}"
        assert time.monotonic() < deadline, f"fewer than {count} more {dependency} retries in {timeout} s"
        readiness.add(await worker.http_status("/readyz"))
        await asyncio.sleep(0.1)
    return readiness


async def _stop(worker: WorkerProcess) -> float:
    """SIGTERM; asserts exit 0 within SHUTDOWN_TIMEOUT (+2 s of slack); returns the seconds it took."""
    elapsed = await worker.stop(wait=SHUTDOWN_TIMEOUT + 5)
    assert elapsed < SHUTDOWN_TIMEOUT + 2, f"{worker.name} took {elapsed:.1f} s to stop"
    return elapsed


async def _always_not_ready(worker: WorkerProcess, seconds: float) -> None:
    """For `seconds`: alive, /healthz 200, /readyz 503."""
    await worker.wait_http("/healthz", 200, timeout=30)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert worker.alive, f"{worker.name} exited with {worker.returncode}\n{worker.tail()}"
        assert await worker.http_status("/readyz") == 503
        assert await worker.http_status("/healthz") == 200
        await asyncio.sleep(0.25)


@pytest.mark.timeout(120)
async def test_start_while_postgres_is_down_waits_not_ready_then_recovers(
    own_postgres: EmbeddedPostgres, kafka_bootstrap: str, unique_topics: dict[str, str], launcher: Launcher
) -> None:
    await asyncio.to_thread(own_postgres.stop)
    env = worker_env(
        database_url=own_postgres.dsn,
        bootstrap=kafka_bootstrap,
        topics=unique_topics,
        group_id=f"faults-{uuid.uuid4().hex[:8]}",
    )
    worker = launcher.start(env)
    await _always_not_ready(worker, seconds=4.0)

    # One command per customer: this test is about start-up, not about updates (see the crash tests for those).
    commands = make_commands(300, 300, seed=random.randrange(2**32))
    await publish_commands(kafka_bootstrap, unique_topics["commands"], commands)
    # Commands are waiting and the worker keeps trying PostgreSQL: alive, not ready, attempts going on.
    await _more_retries(worker, "postgres", count=1, timeout=30)
    assert await worker.http_status("/readyz") == 503
    await asyncio.to_thread(own_postgres.start)
    ready_after = await worker.wait_http("/readyz", 200, timeout=30)
    await wait_for_completion(
        own_postgres.dsn, commands[0].organization_id, len(commands), workers=[worker], timeout=30
    )
    events = await read_events(kafka_bootstrap, unique_topics["events"], quiet=1.0)
    outcome = await check_exactly_once(own_postgres.dsn, commands, events)
    await _stop(worker)
    assert _dependency_retries(worker, "postgres") > 0
    print(f"ready {ready_after:.1f} s after PostgreSQL started; {outcome}")


@pytest.mark.timeout(180)
async def test_postgres_killed_mid_drain_commits_nothing_past_and_recovers(
    own_postgres: EmbeddedPostgres, kafka_bootstrap: str, unique_topics: dict[str, str], launcher: Launcher
) -> None:
    rng = random.Random()
    commands = make_commands(4_000, 400, seed=rng.randrange(2**32))
    org = commands[0].organization_id
    group_id = f"faults-{uuid.uuid4().hex[:8]}"
    placements = await publish_commands(kafka_bootstrap, unique_topics["commands"], commands)
    env = worker_env(
        database_url=own_postgres.dsn,
        bootstrap=kafka_bootstrap,
        topics=unique_topics,
        group_id=group_id,
        BATCH_SIZE="20",
        RELAY_BATCH_SIZE="100",
    )
    worker = launcher.start(env)
    at_kill = await wait_for_progress(
        own_postgres.dsn, org, at_least=rng.randint(200, 1_500), workers=[worker], timeout=60
    )
    await asyncio.to_thread(own_postgres.kill)

    # The outage: the worker stays up, turns not ready, and commits nothing (nothing can be applied). Once it has
    # failed on PostgreSQL, the batch applied before the kill has had its offsets committed (one batch at a time);
    # from then on, several more failed attempts must leave the committed offsets where they were.
    await _more_retries(worker, "postgres", count=1, timeout=30)
    committed_early = await committed_offsets(kafka_bootstrap, group_id, unique_topics["commands"])
    readiness = await _more_retries(worker, "postgres", count=3, timeout=60)
    committed_late = await committed_offsets(kafka_bootstrap, group_id, unique_topics["commands"])
    assert committed_late == committed_early, "offsets were committed while PostgreSQL was down"
    assert 503 in readiness, f"/readyz answered {readiness} during a PostgreSQL outage"

    await asyncio.to_thread(own_postgres.start)
    recovered = await wait_for_completion(own_postgres.dsn, org, len(commands), workers=[worker], timeout=90)
    await worker.wait_http("/readyz", 200, timeout=15)
    await check_commits_cover_only_applied(
        bootstrap=kafka_bootstrap,
        group_id=group_id,
        topic=unique_topics["commands"],
        dsn=own_postgres.dsn,
        placements=placements,
        organization_id=org,
    )
    await _stop(worker)
    events = await read_events(kafka_bootstrap, unique_topics["events"])
    outcome = await check_exactly_once(own_postgres.dsn, commands, events)
    assert not await read_records(kafka_bootstrap, unique_topics["dlq"], quiet=0.5)
    assert _dependency_retries(worker, "postgres") > 0
    # Reported, not asserted: any error during the outage that `outages.is_outage` does not know would be logged as a
    # poison attempt (a connection cut mid-query surfaces as asyncpg's InternalClientError, which it does know).
    failed = [record.get("error_type") for record in worker.log_records() if record.get("event") == "batch_failed"]
    print(
        f"killed PostgreSQL at {at_kill} processed; drained {recovered:.1f} s after its restart; {outcome}; "
        f"/readyz during the outage: {sorted(map(str, readiness))}; batch_failed during the outage: {failed}"
    )


@pytest.mark.timeout(120)
async def test_sigterm_during_a_postgres_outage_exits_0_and_commits_nothing_past(
    own_postgres: EmbeddedPostgres, kafka_bootstrap: str, unique_topics: dict[str, str], launcher: Launcher
) -> None:
    """The in-flight batch cannot finish (PostgreSQL is gone): it is abandoned, uncommitted, within the timeout."""
    commands = make_commands(2_000, 2_000, seed=random.randrange(2**32))  # creates only
    org = commands[0].organization_id
    group_id = f"faults-{uuid.uuid4().hex[:8]}"
    placements = await publish_commands(kafka_bootstrap, unique_topics["commands"], commands)
    env = worker_env(
        database_url=own_postgres.dsn,
        bootstrap=kafka_bootstrap,
        topics=unique_topics,
        group_id=group_id,
        BATCH_SIZE="20",
        SHUTDOWN_TIMEOUT=str(SHUTDOWN_TIMEOUT),
    )
    worker = launcher.start(env, name="stopped-in-outage")
    await wait_for_progress(own_postgres.dsn, org, at_least=100, workers=[worker], timeout=60)
    await asyncio.to_thread(own_postgres.kill)
    # Mid-outage, proven by the worker's own state: it retries PostgreSQL for a batch it holds and is not ready.
    retries_at_kill = _dependency_retries(worker, "postgres")
    deadline = time.monotonic() + 30
    while _dependency_retries(worker, "postgres") == retries_at_kill:
        assert worker.alive, worker.tail()
        assert time.monotonic() < deadline, "the worker never retried PostgreSQL after the kill"
        await asyncio.sleep(0.1)
    assert await worker.http_status("/readyz") == 503
    elapsed = await _stop(worker)
    worker.log_records()

    await asyncio.to_thread(own_postgres.start)
    at_stop = await progress(own_postgres.dsn, org)
    assert at_stop is not None and at_stop.processed < len(commands), "nothing was left to do at SIGTERM"
    await check_commits_cover_only_applied(
        bootstrap=kafka_bootstrap,
        group_id=group_id,
        topic=unique_topics["commands"],
        dsn=own_postgres.dsn,
        placements=placements,
        organization_id=org,
    )
    restarted = launcher.start(env, name="restarted")
    await wait_for_completion(own_postgres.dsn, org, len(commands), workers=[restarted], timeout=60)
    await _stop(restarted)
    events = await read_events(kafka_bootstrap, unique_topics["events"])
    outcome = await check_exactly_once(own_postgres.dsn, commands, events)
    print(f"stopped in {elapsed:.2f} s during the outage; {outcome}")


@pytest.mark.timeout(60)
async def test_start_with_the_broker_unreachable_runs_not_ready_until_sigterm(
    migrated_database: str, unique_topics: dict[str, str], launcher: Launcher
) -> None:
    env = worker_env(
        database_url=migrated_database,
        bootstrap=f"127.0.0.1:{free_port()}",  # nothing listens there
        topics=unique_topics,
        group_id=f"faults-{uuid.uuid4().hex[:8]}",
        SHUTDOWN_TIMEOUT=str(SHUTDOWN_TIMEOUT),
    )
    worker = launcher.start(env)
    await _always_not_ready(worker, seconds=6.0)
    elapsed = await _stop(worker)
    assert _dependency_retries(worker, "kafka") > 0  # also: stderr is structured, no raw traceback
    print(f"stopped in {elapsed:.2f} s while waiting for the broker")


@pytest.mark.timeout(90)
async def test_broker_appearing_after_start_up_is_picked_up(
    migrated_database: str, launcher: Launcher, tmp_path: Path
) -> None:
    broker = EmbeddedTansu(free_port(), log_path=tmp_path / "tansu.log")
    suffix = uuid.uuid4().hex[:8]
    topics = {role: f"faults.{role}.{suffix}" for role in ("commands", "events", "dlq")}
    env = worker_env(
        database_url=migrated_database,
        bootstrap=broker.bootstrap,
        topics=topics,
        group_id=f"faults-{suffix}",
        SHUTDOWN_TIMEOUT=str(SHUTDOWN_TIMEOUT),
    )
    worker = launcher.start(env)
    try:
        await _always_not_ready(worker, seconds=3.0)
        await asyncio.to_thread(broker.start)
        await create_topics(broker.bootstrap, list(topics.values()), partitions=3)
        commands = make_commands(300, 300, seed=random.randrange(2**32))  # creates only
        await publish_commands(broker.bootstrap, topics["commands"], commands)
        ready_after = await worker.wait_http("/readyz", 200, timeout=30)
        await wait_for_completion(
            migrated_database, commands[0].organization_id, len(commands), workers=[worker], timeout=30
        )
        events = await read_events(broker.bootstrap, topics["events"], quiet=1.0)
        outcome = await check_exactly_once(migrated_database, commands, events)
        await _stop(worker)
        assert _dependency_retries(worker, "kafka") > 0
    finally:
        worker.kill()
        await asyncio.to_thread(broker.stop)
    print(f"ready {ready_after:.1f} s after the broker started; {outcome}")

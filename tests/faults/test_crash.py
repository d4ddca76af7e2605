"""SPEC §5 Faults: a crash (`kill -9`) at any moment loses nothing and applies nothing twice.

Real worker processes drain a backlog of a few thousand commands and are killed with SIGKILL, at random moments and
at the two injected crash points (`CUSTOMER_WORKER_CRASH_AT`), each followed by a fresh process; a last one runs to
completion. The final state is then checked against the published commands (see `check_exactly_once`).
"""

from __future__ import annotations

import os
import random
import signal
import time
import uuid

import pytest

from tests.harness.processes import (
    Launcher,
    WorkerProcess,
    check_commits_cover_only_applied,
    check_exactly_once,
    make_commands,
    progress,
    publish_commands,
    read_events,
    read_records,
    wait_for_completion,
    wait_for_progress,
    worker_env,
)

COMMANDS = 3_000
CUSTOMERS = 300


def _seed() -> int:
    """`FAULTS_SEED` replays a run; otherwise a new seed, printed (pytest shows it when the test fails)."""
    seed = int(os.environ.get("FAULTS_SEED", str(random.SystemRandom().randrange(2**32))))
    print(f"FAULTS_SEED={seed}")
    return seed


@pytest.mark.timeout(60)
async def test_update_of_a_customer_stored_by_an_earlier_batch_is_applied(
    kafka_bootstrap: str, unique_topics: dict[str, str], migrated_database: str, launcher: Launcher
) -> None:
    """No fault at all: the baseline the crash tests stand on. The second command arrives after the first one's
    transaction committed, so it updates a customer loaded from PostgreSQL (which once failed: asyncpg's own UUID
    type in the loaded row could not be serialised into the event, and every such update was dead-lettered)."""
    first, second = make_commands(2, 1, seed=1)
    env = worker_env(
        database_url=migrated_database,
        bootstrap=kafka_bootstrap,
        topics=unique_topics,
        group_id=f"faults-{uuid.uuid4().hex[:8]}",
    )
    worker = launcher.start(env)
    await publish_commands(kafka_bootstrap, unique_topics["commands"], [first], check_spread=False)
    await wait_for_completion(migrated_database, first.organization_id, 1, workers=[worker], timeout=30)
    await publish_commands(kafka_bootstrap, unique_topics["commands"], [second], check_spread=False)
    await wait_for_completion(migrated_database, first.organization_id, 2, workers=[worker], timeout=30)
    events = await read_events(kafka_bootstrap, unique_topics["events"], quiet=1.0)
    outcome = await check_exactly_once(migrated_database, [first, second], events)
    assert outcome.result_events == 2
    worker.terminate()
    assert await worker.wait_exit(15) == 0
    worker.log_records()


@pytest.mark.timeout(240)
async def test_kill_9_at_any_moment_loses_nothing_and_applies_nothing_twice(
    kafka_bootstrap: str, unique_topics: dict[str, str], migrated_database: str, launcher: Launcher
) -> None:
    rng = random.Random(_seed())
    # Every third command carries a billing_configuration (grace period, locale, provider stored without a link).
    commands = make_commands(COMMANDS, CUSTOMERS, seed=rng.randrange(2**32), billing_every=3)
    assert sum(command.billing is not None for command in commands) == COMMANDS // 3
    org = commands[0].organization_id
    group_id = f"faults-{uuid.uuid4().hex[:8]}"
    placements = await publish_commands(kafka_bootstrap, unique_topics["commands"], commands)
    # Small batches and relay rounds: many commit points, a drain long enough to be interrupted.
    env = worker_env(
        database_url=migrated_database,
        bootstrap=kafka_bootstrap,
        topics=unique_topics,
        group_id=group_id,
        BATCH_SIZE="10",
        RELAY_BATCH_SIZE="40",
        KAFKA_SESSION_TIMEOUT_MS="3000",  # each restart waits for the dead member's session to expire
    )
    dead: list[WorkerProcess] = []
    started = time.monotonic()

    def phase(what: str) -> None:
        print(f"{time.monotonic() - started:6.1f} s  {what}")

    async def applied_but_uncommitted() -> int:
        return await check_commits_cover_only_applied(
            bootstrap=kafka_bootstrap,
            group_id=group_id,
            topic=unique_topics["commands"],
            dsn=migrated_database,
            placements=placements,
            organization_id=org,
        )

    # (b) The injected crash points: the process kills itself with SIGKILL.
    # After the database transaction of its 4th batch, before that batch's offsets are committed ...
    worker = launcher.start(env, crash_at="after_db_commit:4", name="crash-after-db-commit")
    assert await worker.wait_exit(60) == -signal.SIGKILL, worker.tail()
    dead.append(worker)
    phase("crashed after_db_commit:4")
    assert await applied_but_uncommitted() > 0, "the crash left no applied-but-uncommitted batch to redeliver"
    # ... and after the relay's 3rd publish to Kafka, before it deletes the published outbox rows.
    worker = launcher.start(env, crash_at="after_relay_publish:3", name="crash-after-relay-publish")
    assert await worker.wait_exit(60) == -signal.SIGKILL, worker.tail()
    dead.append(worker)
    phase("crashed after_relay_publish:3")
    seen = await progress(migrated_database, org)
    assert seen is not None and seen.outbox > 0, "the relay crash left no published-but-undeleted outbox rows"
    await applied_but_uncommitted()

    # (a) SIGKILL at random moments while a worker drains: after a random number of further commands.
    for round_number in range(3):
        seen = await progress(migrated_database, org)
        assert seen is not None
        worker = launcher.start(env, name=f"random-kill-{round_number + 1}")
        await wait_for_progress(
            migrated_database, org, at_least=seen.processed + rng.randint(1, 400), workers=[worker], timeout=60
        )
        worker.kill()
        dead.append(worker)
        after = await progress(migrated_database, org)
        assert after is not None and after.processed < COMMANDS, "the backlog ran out before the kill"
        phase(f"killed {worker.name} at {after.processed} processed")
        await applied_but_uncommitted()

    # Two workers share the partitions; one is killed mid-drain and the survivor takes its partitions over.
    survivor = launcher.start(env, name="survivor")
    victim = launcher.start(env, name="victim")
    for process in (survivor, victim):  # ready = partitions assigned: both hold some
        await process.wait_http("/readyz", 200, timeout=60)
    seen = await progress(migrated_database, org)
    assert seen is not None
    await wait_for_progress(
        migrated_database, org, at_least=seen.processed + rng.randint(1, 300), workers=[survivor, victim], timeout=60
    )
    victim.kill()
    dead.append(victim)
    phase("killed the victim")
    await wait_for_completion(migrated_database, org, COMMANDS, workers=[survivor], timeout=120)

    phase("survivor completed")
    duplicates = await survivor.metric("commands_total", outcome="duplicate")
    survivor.terminate()
    assert await survivor.wait_exit(15) == 0, survivor.tail()

    events = await read_events(kafka_bootstrap, unique_topics["events"])
    outcome = await check_exactly_once(migrated_database, commands, events)
    assert outcome.republished > 0, "the relay crash should have republished events (same event_id)"
    assert not await read_records(kafka_bootstrap, unique_topics["dlq"], quiet=0.5)
    for process in [*dead, survivor]:
        process.log_records()  # structured stderr only, even for the killed ones (their last line aside)
    print(f"{outcome}; duplicates answered by the survivor: {duplicates:.0f}")

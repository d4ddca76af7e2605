"""SPEC §5 Shutdown: on SIGTERM or SIGINT the worker stops fetching, finishes or abandons the in-flight batch without
committing past it, flushes what it can of the outbox and exits 0 within `SHUTDOWN_TIMEOUT`."""

from __future__ import annotations

import random
import signal
import uuid

import pytest

from tests.harness.processes import (
    Launcher,
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

SHUTDOWN_TIMEOUT = 10.0
COMMANDS = 20_000
CUSTOMERS = 2_000


@pytest.mark.timeout(180)
async def test_sigterm_mid_drain_exits_0_in_time_and_a_restart_loses_nothing(
    kafka_bootstrap: str, unique_topics: dict[str, str], migrated_database: str, launcher: Launcher
) -> None:
    rng = random.Random()
    commands = make_commands(COMMANDS, CUSTOMERS, seed=rng.randrange(2**32))
    org = commands[0].organization_id
    group_id = f"faults-{uuid.uuid4().hex[:8]}"
    placements = await publish_commands(kafka_bootstrap, unique_topics["commands"], commands)
    env = worker_env(
        database_url=migrated_database,
        bootstrap=kafka_bootstrap,
        topics=unique_topics,
        group_id=group_id,
        SHUTDOWN_TIMEOUT=str(SHUTDOWN_TIMEOUT),
    )

    worker = launcher.start(env, name="terminated")
    await wait_for_progress(migrated_database, org, at_least=rng.randint(1_000, 6_000), workers=[worker], timeout=90)
    elapsed = await worker.stop(wait=SHUTDOWN_TIMEOUT + 5)
    assert elapsed < SHUTDOWN_TIMEOUT + 2, f"exit took {elapsed:.1f} s"
    events_logged = worker.events_logged()  # also: every stderr line is a JSON object, no raw traceback
    assert "worker_stopped" in events_logged

    at_exit = await progress(migrated_database, org)
    assert at_exit is not None
    assert at_exit.processed < COMMANDS, "the backlog was drained before SIGTERM: nothing was interrupted"
    assert at_exit.outbox == 0, f"{at_exit.outbox} committed events left unpublished after a clean shutdown"
    uncommitted = await check_commits_cover_only_applied(
        bootstrap=kafka_bootstrap,
        group_id=group_id,
        topic=unique_topics["commands"],
        dsn=migrated_database,
        placements=placements,
        organization_id=org,
    )

    restarted = launcher.start(env, name="restarted")
    await wait_for_completion(migrated_database, org, COMMANDS, workers=[restarted], timeout=120)
    await restarted.stop(wait=SHUTDOWN_TIMEOUT + 5)
    restarted.log_records()

    events = await read_events(kafka_bootstrap, unique_topics["events"])
    outcome = await check_exactly_once(migrated_database, commands, events)
    assert not await read_records(kafka_bootstrap, unique_topics["dlq"], quiet=0.5)
    print(
        f"SIGTERM after {at_exit.processed} commands: exit 0 in {elapsed:.2f} s, "
        f"{uncommitted} applied but uncommitted; {outcome}"
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_stop_signal_while_idle_exits_0_quickly(
    signum: signal.Signals,
    kafka_bootstrap: str,
    unique_topics: dict[str, str],
    migrated_database: str,
    launcher: Launcher,
) -> None:
    env = worker_env(
        database_url=migrated_database,
        bootstrap=kafka_bootstrap,
        topics=unique_topics,
        group_id=f"faults-{uuid.uuid4().hex[:8]}",
        SHUTDOWN_TIMEOUT=str(SHUTDOWN_TIMEOUT),
    )
    worker = launcher.start(env)
    await worker.wait_http("/readyz", 200, timeout=30)
    elapsed = await worker.stop(signum, wait=SHUTDOWN_TIMEOUT + 5)
    assert elapsed < SHUTDOWN_TIMEOUT / 2, f"an idle worker took {elapsed:.1f} s to stop"
    assert worker.events_logged()[-1] == "worker_stopped"
    print(f"idle {signum.name}: exit 0 in {elapsed:.2f} s")

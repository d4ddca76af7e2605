"""Issue 12: `WORKER_PROCESSES=2` runs two consumers of the group in one replica, under one HTTP endpoint whose
metrics add up both processes', and stops both cleanly on SIGTERM, with every command answered exactly once."""

from __future__ import annotations

import random
import time
import uuid

import pytest

from tests.harness.processes import (
    Launcher,
    check_exactly_once,
    make_commands,
    publish_commands,
    read_events,
    wait_for_completion,
    worker_env,
)

COMMANDS = 6_000
CUSTOMERS = 600
SHUTDOWN_TIMEOUT = 10.0


@pytest.mark.timeout(240)
async def test_two_processes_share_the_group_under_one_endpoint(
    kafka_bootstrap: str, unique_topics: dict[str, str], migrated_database: str, launcher: Launcher
) -> None:
    commands = make_commands(COMMANDS, CUSTOMERS, seed=random.randrange(2**32))
    org = commands[0].organization_id
    await publish_commands(kafka_bootstrap, unique_topics["commands"], commands)
    env = worker_env(
        database_url=migrated_database,
        bootstrap=kafka_bootstrap,
        topics=unique_topics,
        group_id=f"faults-{uuid.uuid4().hex[:8]}",
        SHUTDOWN_TIMEOUT=str(SHUTDOWN_TIMEOUT),
        BATCH_SIZE="100",
        WORKER_PROCESSES="2",
    )
    replica = launcher.start(env, name="replica")
    await replica.wait_http("/readyz", 200, timeout=60)
    await wait_for_completion(migrated_database, org, COMMANDS, workers=[replica], timeout=150)

    answered = 0.0
    for outcome in ("created", "updated", "skipped", "rejected"):
        answered += await replica.metric("commands_total", outcome=outcome)
    assert answered == COMMANDS, "the endpoint's counters are not the sum of both processes'"
    assert await replica.metric("ready") == 1.0

    replica.terminate()
    signalled = time.monotonic()
    assert await replica.wait_exit(SHUTDOWN_TIMEOUT + 5) == 0, replica.tail()
    assert time.monotonic() - signalled < SHUTDOWN_TIMEOUT + 2
    records = replica.log_records()  # every line of both processes is one JSON object
    applying = {record["process"] for record in records if record.get("event") == "batch_applied"}
    assert applying == {0, 1}, f"batches applied by processes {applying}: both should take part"
    assert sum(record.get("event") == "worker_stopped" for record in records) == 2

    events = await read_events(kafka_bootstrap, unique_topics["events"])
    await check_exactly_once(migrated_database, commands, events)

"""Issue 18, case 7 end to end: a worker process against a PostgreSQL incident, and against one slow record.

* A revoked grant (42501): the worker waits, not ready, counts the outage, dead-letters nothing, and applies
  everything once the grant is back. On main each command was dead-lettered as `processing_error`.
* One record slow enough to hit `statement_timeout` (a trigger sleeps for one customer's name): it is isolated by
  bisection and dead-lettered as `processing_error`; every other command is applied. On main the partition stalled
  for ever, retrying the batch as an outage.

The worker connects as a role of its own (a superuser ignores grants)."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest

from tests.harness.processes import (
    Launcher,
    WorkerProcess,
    check_exactly_once,
    make_commands,
    progress,
    publish_commands,
    read_events,
    read_records,
    wait_for_completion,
    worker_env,
)


@pytest.fixture
async def worker_role(migrated_database: str) -> AsyncIterator[tuple[str, str]]:
    """(role, the database's DSN as that role): every table's privileges, no superuser."""
    role = f"worker_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(migrated_database)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        await admin.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        await admin.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
        dsn = migrated_database.replace("postgres@", f"{role}@", 1).replace("postgres:@", f"{role}:@", 1)
        assert role in dsn
        yield role, dsn
        await admin.execute(f"DROP OWNED BY {role}")
        await admin.execute(f"DROP ROLE {role}")
    finally:
        await admin.close()


def _logged(worker: WorkerProcess, event: str) -> list[dict[str, object]]:
    return [record for record in worker.log_records() if record.get("event") == event]


@pytest.mark.timeout(150)
async def test_a_revoked_grant_is_waited_out_not_ready_and_nothing_is_dead_lettered(
    kafka_bootstrap: str,
    unique_topics: dict[str, str],
    migrated_database: str,
    worker_role: tuple[str, str],
    launcher: Launcher,
) -> None:
    role, dsn = worker_role
    commands = make_commands(60, 20, seed=random.randrange(2**32))
    org = commands[0].organization_id
    admin = await asyncpg.connect(migrated_database)
    try:
        await admin.execute(f"REVOKE INSERT, UPDATE ON customers FROM {role}")
        await publish_commands(kafka_bootstrap, unique_topics["commands"], commands, check_spread=False)
        env = worker_env(
            database_url=dsn,
            bootstrap=kafka_bootstrap,
            topics=unique_topics,
            group_id=f"faults-{uuid.uuid4().hex[:8]}",
            BATCH_SIZE="8",
            POISON_MAX_ATTEMPTS="3",
        )
        worker = launcher.start(env, name="revoked")
        deadline = time.monotonic() + 60
        while (
            len([r for r in _logged(worker, "dependency_retry") if r.get("error_type") == "InsufficientPrivilegeError"])
            < 5
        ):
            assert worker.alive, worker.tail()
            assert not worker.dead_letter_lines(), "a command was dead-lettered during the incident"
            assert time.monotonic() < deadline, worker.tail()
            await asyncio.sleep(0.2)
        # Visible: not ready, and counted as a PostgreSQL outage.
        assert await worker.http_status("/readyz") == 503
        assert await worker.metric("customer_worker_dependency_retries_total", dependency="postgres") >= 5
        assert not _logged(worker, "batch_failed"), "the incident was counted toward POISON_MAX_ATTEMPTS"
        seen = await progress(migrated_database, org)
        assert seen is not None and seen.processed == 0

        await admin.execute(f"GRANT INSERT, UPDATE ON customers TO {role}")
        await wait_for_completion(migrated_database, org, len(commands), workers=[worker], timeout=60)
        await worker.wait_http("/readyz", 200, timeout=15)
    finally:
        await admin.close()

    assert await read_records(kafka_bootstrap, unique_topics["dlq"], quiet=1.0) == []
    worker.terminate()
    assert await worker.wait_exit(20) == 0
    await check_exactly_once(
        migrated_database, commands, await read_events(kafka_bootstrap, unique_topics["events"], quiet=1.0)
    )


@pytest.mark.timeout(150)
async def test_one_record_hitting_statement_timeout_is_isolated_and_the_rest_applied(
    kafka_bootstrap: str,
    unique_topics: dict[str, str],
    migrated_database: str,
    worker_role: tuple[str, str],
    launcher: Launcher,
) -> None:
    role, dsn = worker_role
    commands = make_commands(60, 20, seed=random.randrange(2**32))
    org = commands[0].organization_id
    # As in test_failover's poison test: the last command of a customer, mid-stream, so that every batch holding it
    # writes its name, and only its.
    last = {command.external_id: index for index, command in enumerate(commands)}
    slow = commands[next(index for index in sorted(last.values()) if 15 <= index <= 45)]
    admin = await asyncpg.connect(migrated_database)
    try:
        await admin.execute(f"ALTER ROLE {role} SET statement_timeout = 300")
        await admin.execute(
            f"""
            CREATE FUNCTION slow_for_one() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.name = '{slow.name}' THEN PERFORM pg_sleep(5); END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER slow_for_one BEFORE INSERT OR UPDATE ON customers
                FOR EACH ROW EXECUTE FUNCTION slow_for_one();
            """
        )
    finally:
        await admin.close()
    await publish_commands(kafka_bootstrap, unique_topics["commands"], commands, check_spread=False)
    env = worker_env(
        database_url=dsn,
        bootstrap=kafka_bootstrap,
        topics=unique_topics,
        group_id=f"faults-{uuid.uuid4().hex[:8]}",
        BATCH_SIZE="8",
        POISON_MAX_ATTEMPTS="3",
    )
    worker = launcher.start(env, name="slow-record")

    deadline = time.monotonic() + 90
    while True:
        seen = await progress(migrated_database, org)
        if seen is not None and seen.processed >= len(commands) - 1 and seen.outbox == 0:
            break
        assert worker.alive, worker.tail()
        assert time.monotonic() < deadline, f"not complete: {seen}\n{worker.tail()}"
        await asyncio.sleep(0.2)

    letters = await read_records(kafka_bootstrap, unique_topics["dlq"], quiet=1.0)
    assert len(letters) == 1
    assert dict(letters[0].headers)["dlq-reason"] == b"processing_error"
    assert orjson.loads(letters[0].value)["message_id"] == slow.message_id
    timed_out = _logged(worker, "record_timed_out")
    assert [r.get("strikes") for r in timed_out if r.get("others_pass")][-3:] == [1, 2, None]

    worker.terminate()
    assert await worker.wait_exit(20) == 0
    events = await read_events(kafka_bootstrap, unique_topics["events"], quiet=1.0)
    assert {event.message_id for event in events} == {c.message_id for c in commands} - {slow.message_id}

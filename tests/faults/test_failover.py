"""Issue 9, outcome 7 end to end: PostgreSQL failures that say nothing about the record are waited out, and only a
failure caused by the record itself ends in the DLQ (as `processing_error`, after POISON_MAX_ATTEMPTS).

* Failover: the database answers read-only for 10 s mid-stream (`default_transaction_read_only`, what a demoted
  primary answers), its sessions ended at both transitions. Nothing may be dead-lettered, and everything is applied.
* Poison: a trigger created by the test raises a plain `RAISE EXCEPTION` (SQLSTATE P0001, not an outage) for one
  customer. That command goes to the DLQ as `processing_error` and the commands behind it are applied.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from urllib.parse import urlsplit

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
    wait_for_progress,
    worker_env,
)

READ_ONLY_SECONDS = 10.0


def _database(dsn: str) -> str:
    return urlsplit(dsn).path.lstrip("/")


async def _set_read_only(server_dsn: str, database: str, read_only: bool) -> int:
    """Switch the database's default and end its sessions, so that every new one gets it; returns how many were
    ended."""
    admin = await asyncpg.connect(server_dsn)
    try:
        setting = "SET default_transaction_read_only = on" if read_only else "RESET default_transaction_read_only"
        await admin.execute(f'ALTER DATABASE "{database}" {setting}')
        ended: int = await admin.fetchval(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()) AS ended",
            database,
        )
        return ended
    finally:
        await admin.close()


def _log_events(worker: WorkerProcess, name: str) -> list[dict[str, object]]:
    return [record for record in worker.log_records() if record.get("event") == name]


@pytest.mark.timeout(180)
async def test_outcome7_read_only_failover_for_10s_dead_letters_nothing_and_applies_everything(
    pg_dsn: str, kafka_bootstrap: str, unique_topics: dict[str, str], migrated_database: str, launcher: Launcher
) -> None:
    commands = make_commands(600, 150, seed=random.randrange(2**32))
    org = commands[0].organization_id
    # Half before, half during the outage: there is work to do while the database is read-only, however fast the
    # first half went.
    await publish_commands(kafka_bootstrap, unique_topics["commands"], commands[:300])
    env = worker_env(
        database_url=migrated_database,
        bootstrap=kafka_bootstrap,
        topics=unique_topics,
        group_id=f"faults-{uuid.uuid4().hex[:8]}",
        BATCH_SIZE="10",
        RELAY_BATCH_SIZE="40",
    )
    worker = launcher.start(env, name="failover")
    await wait_for_progress(migrated_database, org, at_least=50, workers=[worker], timeout=60)

    database = _database(migrated_database)
    ended = await _set_read_only(pg_dsn, database, read_only=True)
    started = time.monotonic()
    await publish_commands(kafka_bootstrap, unique_topics["commands"], commands[300:], check_spread=False)
    during = []
    while time.monotonic() - started < READ_ONLY_SECONDS:
        seen = await progress(migrated_database, org)
        if seen is not None:
            during.append(seen.processed)
        await asyncio.sleep(0.5)
    await _set_read_only(pg_dsn, database, read_only=False)

    await wait_for_completion(migrated_database, org, len(commands), workers=[worker], timeout=120)
    # The outage was real: the worker met read-only answers and retried them as a PostgreSQL outage, and nothing
    # was applied while it lasted (the first reading may precede the worker's first failed attempt).
    assert ended > 0
    retries = _log_events(worker, "dependency_retry")
    assert any(r.get("error_type") == "ReadOnlySQLTransactionError" for r in retries), retries[:5]
    assert all(r.get("dependency") in ("postgres", "kafka") for r in retries)
    assert len(set(during[1:])) <= 1, during
    assert not _log_events(worker, "batch_failed"), "a read-only answer was counted as a poison attempt"
    assert not _log_events(worker, "dead_lettered")

    worker.terminate()
    assert await worker.wait_exit(20) == 0
    events = await read_events(kafka_bootstrap, unique_topics["events"], quiet=1.0)
    outcome = await check_exactly_once(migrated_database, commands, events)
    # One answer per command; a relay round cut by the outage between publish and delete republishes its events
    # with the same event_id (at least once, SPEC §5), which check_exactly_once has checked.
    assert outcome.result_events - outcome.republished == len(commands)
    print(f"read-only for {READ_ONLY_SECONDS:.0f} s, {ended} sessions ended; {outcome}; {len(retries)} retries")


@pytest.mark.timeout(120)
async def test_outcome7_poison_record_is_dead_lettered_after_bounded_attempts_and_the_rest_applied(
    kafka_bootstrap: str, unique_topics: dict[str, str], migrated_database: str, launcher: Launcher
) -> None:
    commands = make_commands(60, 20, seed=random.randrange(2**32))
    org = commands[0].organization_id
    # The last command of a customer, in the middle of the stream: in every batch that holds it, it is the state
    # the batch writes for that customer (a batch folds a customer's commands into one row write), so the trigger,
    # matching its name (which encodes its position), refuses exactly this command.
    last = {command.external_id: index for index, command in enumerate(commands)}
    poison = commands[next(index for index in sorted(last.values()) if 15 <= index <= 45)]
    conn = await asyncpg.connect(migrated_database)
    try:
        await conn.execute(
            f"""
            CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.name = '{poison.name}' THEN
                    RAISE EXCEPTION 'refused by the test';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER refuse_poison BEFORE INSERT OR UPDATE ON customers
                FOR EACH ROW EXECUTE FUNCTION refuse_poison();
            """
        )
    finally:
        await conn.close()
    await publish_commands(kafka_bootstrap, unique_topics["commands"], commands, check_spread=False)
    env = worker_env(
        database_url=migrated_database,
        bootstrap=kafka_bootstrap,
        topics=unique_topics,
        group_id=f"faults-{uuid.uuid4().hex[:8]}",
        BATCH_SIZE="8",
        POISON_MAX_ATTEMPTS="3",
    )
    worker = launcher.start(env, name="poison")

    deadline = time.monotonic() + 90
    while True:
        seen = await progress(migrated_database, org)
        if seen is not None and seen.processed >= len(commands) - 1 and seen.outbox == 0:
            break
        assert worker.alive, worker.tail()
        assert time.monotonic() < deadline, f"not complete: {seen}"
        await asyncio.sleep(0.2)

    letters = await read_records(kafka_bootstrap, unique_topics["dlq"], quiet=1.0)
    assert len(letters) == 1
    headers = dict(letters[0].headers)
    assert headers["dlq-reason"] == b"processing_error"
    assert letters[0].value == poison.value()
    assert orjson.loads(letters[0].value)["message_id"] == poison.message_id
    # Bounded: the single record was tried POISON_MAX_ATTEMPTS times on its own (plus once in each batch that
    # contained it, while it was being isolated).
    single = [r for r in _log_events(worker, "batch_failed") if r.get("size") == 1]
    assert len(single) in (3, 6), single  # 6 when Kafka handed it over in a batch of its own

    worker.terminate()
    assert await worker.wait_exit(20) == 0
    events = await read_events(kafka_bootstrap, unique_topics["events"], quiet=1.0)
    answered = {event.message_id for event in events}
    assert poison.message_id not in answered
    assert answered == {command.message_id for command in commands} - {poison.message_id}

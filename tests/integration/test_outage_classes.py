"""Issue 18, case 7: timeouts isolate the record; a permissions or schema incident is waited out, not poison.

`BatchService.handle` against a real PostgreSQL with injected faults: a trigger that is slow for one customer only
(under `statement_timeout`, or asyncpg's `command_timeout`), a table lock everyone waits on, a revoked grant, a
renamed table. The worker connects as a role of its own (not a superuser), so that a REVOKE applies to it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest

from tests.harness.database import migrate_database
from tests.harness.records import RecordFactory, RecordingSink, command, encode
from worker.contract.connections import Connections
from worker.contract.decode import DecodeContext
from worker.outages import Dependency
from worker.security import SigningKeys
from worker.service import BatchService, Report
from worker.transport.raw import RawRecord

pytestmark = pytest.mark.timeout(90)

ORG = "org_outages"
SLOW_NAME = "Slow Ltd"
TIME_LIMIT_MS = 300


@dataclass
class Stack:
    admin: asyncpg.Connection[Any]
    role: str
    dsn: str  # the worker's role
    sink: RecordingSink = field(default_factory=RecordingSink)
    outages: list[tuple[Dependency, bool]] = field(default_factory=list)
    records: RecordFactory = field(default_factory=RecordFactory)

    def service(self, pool: asyncpg.Pool[asyncpg.Record]) -> BatchService:
        registry = Connections([])
        return BatchService(
            pool=pool,
            decode_context=DecodeContext(signing_keys=SigningKeys({}), connections=registry),
            connections=registry,
            dead_letters=self.sink,
            poison_max_attempts=3,
            on_outage=lambda dependency, available: self.outages.append((dependency, available)),
        )

    def batch(self, names: list[str]) -> list[RawRecord]:
        return [
            self.records.record(encode(command(ORG, {"external_id": f"cus_{index}", "name": name})))
            for index, name in enumerate(names)
        ]

    async def stored_names(self) -> set[str]:
        return {row["name"] for row in await self.admin.fetch("SELECT name FROM customers")}


@pytest.fixture
async def stack(fresh_database: str) -> AsyncIterator[Stack]:
    await migrate_database(fresh_database)
    role = f"worker_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(fresh_database)
    await admin.execute(f"CREATE ROLE {role} LOGIN")
    await admin.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
    await admin.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
    await admin.execute(
        f"""
        CREATE FUNCTION slow_for_one() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.name = '{SLOW_NAME}' THEN PERFORM pg_sleep(3); END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER slow_for_one BEFORE INSERT OR UPDATE ON customers
            FOR EACH ROW EXECUTE FUNCTION slow_for_one();
        """
    )
    dsn = fresh_database.replace("postgres@", f"{role}@", 1).replace("postgres:@", f"{role}:@", 1)
    assert role in dsn
    try:
        yield Stack(admin=admin, role=role, dsn=dsn)
    finally:
        await admin.execute(f"DROP OWNED BY {role}")
        await admin.close()
        # The pools are closed by now; the role can go (it is the server's, not the database's).
        server = await asyncpg.connect(fresh_database)
        try:
            await server.execute(f"DROP ROLE {role}")
        finally:
            await server.close()


async def _pool(stack: Stack, **options: Any) -> asyncpg.Pool[asyncpg.Record]:
    pool = await asyncpg.create_pool(stack.dsn, min_size=0, max_size=2, **options)
    assert pool is not None
    return pool


GOOD = [f"Good {index}" for index in range(6)]
WITH_SLOW = [*GOOD[:3], SLOW_NAME, *GOOD[3:]]


def _assert_slow_one_dead_lettered(stack: Stack, records: list[RawRecord]) -> None:
    assert [(record, letter.reason.value) for record, letter in stack.sink.letters] == [
        (records[WITH_SLOW.index(SLOW_NAME)], "processing_error")
    ]
    assert "timed out alone" in stack.sink.letters[0][1].error


@pytest.mark.parametrize("setting", ["statement_timeout", "transaction_timeout"])
async def test_server_timeout_on_one_record_isolates_it_and_applies_the_others(stack: Stack, setting: str) -> None:
    """Main: 57014 and a connection closed for `transaction_timeout` (PostgreSQL 17+) are outages, so the batch is
    retried for ever and no record is answered."""
    if setting == "transaction_timeout" and stack.admin.get_server_version().major < 17:
        pytest.skip("transaction_timeout is PostgreSQL 17+")
    await stack.admin.execute(f"ALTER ROLE {stack.role} SET {setting} = {TIME_LIMIT_MS}")
    pool = await _pool(stack)
    try:
        records = stack.batch(WITH_SLOW)
        report = await asyncio.wait_for(stack.service(pool).handle(records), timeout=45)
    finally:
        await pool.close()
    _assert_slow_one_dead_lettered(stack, records)
    assert await stack.stored_names() == set(GOOD)
    assert report.summary.created == len(GOOD)


async def test_a_slow_record_in_a_batch_of_its_own_is_dead_lettered(stack: Stack) -> None:
    """No other record in the batch to pass: the probe of others' writes is what tells the record's timeout from
    the server's."""
    await stack.admin.execute(f"ALTER ROLE {stack.role} SET statement_timeout = {TIME_LIMIT_MS}")
    pool = await _pool(stack)
    try:
        (record,) = stack.batch([SLOW_NAME])
        await asyncio.wait_for(stack.service(pool).handle([record]), timeout=45)
    finally:
        await pool.close()
    assert [(letter_record, letter.reason.value) for letter_record, letter in stack.sink.letters] == [
        (record, "processing_error")
    ]
    assert await stack.stored_names() == set()


async def test_command_timeout_on_one_record_isolates_it_and_applies_the_others(stack: Stack) -> None:
    """asyncpg's `command_timeout` (a TimeoutError on the client, the server's statement cancelled); main: retried
    for ever as an outage."""
    pool = await _pool(stack, command_timeout=TIME_LIMIT_MS / 1000)
    try:
        records = stack.batch(WITH_SLOW)
        await asyncio.wait_for(stack.service(pool).handle(records), timeout=45)
    finally:
        await pool.close()
    _assert_slow_one_dead_lettered(stack, records)
    assert await stack.stored_names() == set(GOOD)


async def test_a_timeout_every_record_meets_is_waited_out_not_poison(stack: Stack) -> None:
    """A migration holding the table: each record times out alone, but so do the others' writes: an outage."""
    await stack.admin.execute(f"ALTER ROLE {stack.role} SET statement_timeout = {TIME_LIMIT_MS}")
    pool = await _pool(stack)
    holder = stack.admin.transaction()
    await holder.start()
    await stack.admin.execute("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE")
    try:
        records = stack.batch(GOOD[:3])
        handling = asyncio.ensure_future(stack.service(pool).handle(records))
        # Several timeouts of the record and of the probe of others' writes, each waited out.
        await _until(lambda: stack.outages.count(("postgres", False)) >= 3, handling)
        assert stack.sink.letters == []
        await holder.rollback()
        await asyncio.wait_for(handling, timeout=30)
    finally:
        await pool.close()
    assert stack.sink.letters == []
    assert await stack.stored_names() == set(GOOD[:3])
    assert stack.outages[-1] == ("postgres", True)


@pytest.mark.parametrize(
    ("break_it", "repair_it"),
    [
        pytest.param(
            "REVOKE INSERT, UPDATE ON customers FROM {role}",
            "GRANT INSERT, UPDATE ON customers TO {role}",
            id="revoked-grant-42501",
        ),
        pytest.param(
            "ALTER TABLE customers RENAME TO customers_moved",
            "ALTER TABLE customers_moved RENAME TO customers",
            id="renamed-table-42P01",
        ),
    ],
)
async def test_an_incident_is_waited_out_and_nothing_is_dead_lettered(
    stack: Stack, break_it: str, repair_it: str
) -> None:
    """Main: 42501 and 42P01 count as poison, so every command of the incident is dead-lettered."""
    pool = await _pool(stack)
    try:
        await stack.admin.execute(break_it.format(role=stack.role))
        records = stack.batch(GOOD)
        handling = asyncio.ensure_future(stack.service(pool).handle(records))
        await _until(lambda: stack.outages.count(("postgres", False)) >= 3, handling)
        assert stack.sink.letters == []
        await stack.admin.execute(repair_it.format(role=stack.role))
        report: Report = await asyncio.wait_for(handling, timeout=30)
    finally:
        await pool.close()
    assert stack.sink.letters == []
    assert report.summary.created == len(GOOD)
    assert await stack.stored_names() == set(GOOD)


async def _until(condition: Callable[[], bool], handling: asyncio.Future[Any]) -> None:
    """Polls `condition` while the batch is being handled, for 20 s at most; fails if the batch ends first (it
    answered records during the incident)."""
    deadline = asyncio.get_running_loop().time() + 20
    while not condition():
        if handling.done():
            handling.result()
            raise AssertionError("the batch was answered during the incident")
        assert asyncio.get_running_loop().time() < deadline, "the condition never held"
        await asyncio.sleep(0.05)

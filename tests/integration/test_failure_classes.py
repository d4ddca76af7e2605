"""Issue 9, outcome 7: which failures are outages (waited out) and which count toward POISON_MAX_ATTEMPTS.

The errors are raised by a real PostgreSQL server and the real asyncpg client wherever the server can be made to
produce them on demand; the rest of the SQLSTATE table goes through asyncpg's own code-to-exception mapping."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from asyncpg.exceptions._base import PostgresMessage

from worker.outages import OUTAGES, TimeoutStrikes, is_outage, is_timeout, is_waited_out, rejected_setting

pytestmark = pytest.mark.timeout(60)


def server_error(sqlstate: str, message: str = "server message") -> Exception:
    """The exception asyncpg raises for an ErrorResponse with this SQLSTATE (its own mapping, unknown codes too)."""
    kind: type[Exception] = PostgresMessage._get_error_class({"C": sqlstate})  # type: ignore[attr-defined]
    exc = kind(message)
    exc.sqlstate = sqlstate  # type: ignore[attr-defined]  # as asyncpg sets it from the server's fields
    return exc


@pytest.fixture
async def conn(fresh_database: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    connection = await asyncpg.connect(fresh_database)
    try:
        await connection.execute("CREATE TABLE t (id int PRIMARY KEY, n int)")
        await connection.execute("INSERT INTO t VALUES (1, 1)")
        yield connection
    finally:
        await connection.close()


async def raised(operation: Callable[[], Awaitable[Any]]) -> BaseException:
    try:
        await operation()
    except Exception as exc:  # noqa: BLE001 - the exception is what the test looks at
        return exc
    raise AssertionError("the operation did not fail")


async def test_read_only_transaction_is_an_outage(conn: asyncpg.Connection[Any]) -> None:
    """What a demoted primary (or `default_transaction_read_only`) answers a write."""

    async def write() -> None:
        async with conn.transaction(readonly=True):
            await conn.execute("UPDATE t SET n = n + 1")

    exc = await raised(write)
    assert isinstance(exc, asyncpg.ReadOnlySQLTransactionError)
    assert is_outage(exc)


async def test_statement_cancelled_is_an_outage(conn: asyncpg.Connection[Any]) -> None:
    await conn.execute("SET statement_timeout = 50")
    exc = await raised(lambda: conn.execute("SELECT pg_sleep(5)"))
    assert getattr(exc, "sqlstate", None) == "57014"
    assert is_outage(exc)
    # Issue 18, case 7: applying a batch, a timeout is isolated by bisection instead of waited out.
    assert is_timeout(exc) and not is_waited_out(exc)


async def test_a_cancel_by_an_administrator_is_no_timeout(conn: asyncpg.Connection[Any], fresh_database: str) -> None:
    """Same SQLSTATE as a statement timeout (57014), but nothing about the statement: waited out everywhere."""
    victim = await asyncpg.connect(fresh_database)
    try:
        sleeping = asyncio.ensure_future(victim.execute("SELECT pg_sleep(5)"))
        pid = victim.get_server_pid()
        while not await conn.fetchval(  # noqa: ASYNC110 - polling the server until the sleep has started
            "SELECT pg_cancel_backend($1) FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'PgSleep'", pid
        ):
            await asyncio.sleep(0.02)
        exc = await raised(lambda: sleeping)
        assert getattr(exc, "sqlstate", None) == "57014"
        assert is_outage(exc) and is_waited_out(exc) and not is_timeout(exc)
    finally:
        await victim.close()


async def test_command_timeout_and_transaction_timeout_are_timeouts(fresh_database: str) -> None:
    client = await asyncpg.connect(fresh_database, command_timeout=0.05)
    try:
        exc = await raised(lambda: client.execute("SELECT pg_sleep(5)"))
        assert isinstance(exc, TimeoutError) and is_timeout(exc) and not is_waited_out(exc)
    finally:
        await client.close()
    server = await asyncpg.connect(fresh_database)
    try:
        if server.get_server_version().major < 17:
            pytest.skip("transaction_timeout is PostgreSQL 17+")
        await server.execute("SET transaction_timeout = 100")

        async def long_transaction() -> None:
            async with server.transaction():
                await server.execute("SELECT pg_sleep(5)")

        # The server ends the session: asyncpg reports a lost connection with the server's reason, and in a
        # transaction block, the failed rollback, with the lost connection as its context.
        exc = await raised(long_transaction)
        assert isinstance(exc, asyncpg.InterfaceError)
        assert is_outage(exc) and is_timeout(exc) and not is_waited_out(exc), (type(exc), exc)
        assert is_timeout(exc.__context__)  # type: ignore[arg-type]
    finally:
        await server.close()


async def test_idle_in_transaction_timeout_is_an_outage(conn: asyncpg.Connection[Any]) -> None:
    """What an inline provider call that ran long leaves: the server ended the session meanwhile."""
    await conn.execute("SET idle_in_transaction_session_timeout = 50")
    transaction = conn.transaction()
    await transaction.start()
    await conn.execute("SELECT 1")
    await asyncio.sleep(0.3)  # idle past the server's limit, as during a slow call
    exc = await raised(lambda: conn.execute("SELECT 1"))
    assert is_outage(exc) and not is_timeout(exc), (type(exc), exc)


def test_timeout_strikes_count_only_when_others_pass() -> None:
    strikes = TimeoutStrikes(limit=3)
    assert strikes.timed_out("a", others_pass=False) == 0  # everyone times out: the server's, not the record's
    assert strikes.timed_out("a", others_pass=True) == 1
    assert strikes.timed_out("b", others_pass=True) == 1  # per record
    assert strikes.timed_out("a", others_pass=False) == 1
    assert strikes.timed_out("a", others_pass=True) == 2
    assert strikes.timed_out("a", others_pass=True) is None  # poison


async def test_admin_shutdown_and_connection_loss_are_outages(
    conn: asyncpg.Connection[Any], fresh_database: str
) -> None:
    victim = await asyncpg.connect(fresh_database)
    pid = victim.get_server_pid()
    await conn.execute("SELECT pg_terminate_backend($1)", pid)
    first = await raised(lambda: victim.fetchval("SELECT 1"))
    assert is_outage(first), type(first)
    second = await raised(lambda: victim.fetchval("SELECT 1"))  # on the now closed connection
    assert is_outage(second), type(second)
    await victim.close()


async def test_too_many_connections_is_an_outage(conn: asyncpg.Connection[Any], fresh_database: str) -> None:
    role = f"limited_{uuid.uuid4().hex[:8]}"
    await conn.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 0")
    try:
        dsn = fresh_database.replace("postgres@", f"{role}@", 1).replace("postgres:@", f"{role}:@", 1)
        assert role in dsn
        exc = await raised(lambda: asyncpg.connect(dsn))
        assert getattr(exc, "sqlstate", None) == "53300"
        assert is_outage(exc)
    finally:
        await conn.execute(f"DROP ROLE {role}")


async def test_deadlock_is_an_outage(conn: asyncpg.Connection[Any], fresh_database: str) -> None:
    await conn.execute("INSERT INTO t VALUES (2, 2)")
    other = await asyncpg.connect(fresh_database)
    try:
        first = conn.transaction()
        second = other.transaction()
        await first.start()
        await second.start()
        await conn.execute("UPDATE t SET n = 0 WHERE id = 1")
        await other.execute("UPDATE t SET n = 0 WHERE id = 2")
        results = await asyncio.gather(
            conn.execute("UPDATE t SET n = 0 WHERE id = 2"),
            other.execute("UPDATE t SET n = 0 WHERE id = 1"),
            return_exceptions=True,
        )
        failures = [result for result in results if isinstance(result, BaseException)]
        assert len(failures) == 1 and isinstance(failures[0], asyncpg.DeadlockDetectedError)
        assert is_outage(failures[0])
        for transaction in (first, second):
            await transaction.rollback()
    finally:
        await other.close()


async def test_serialization_failure_is_an_outage(conn: asyncpg.Connection[Any], fresh_database: str) -> None:
    other = await asyncpg.connect(fresh_database)
    try:
        first = conn.transaction(isolation="serializable")
        second = other.transaction(isolation="serializable")
        await first.start()
        await second.start()
        await conn.fetchval("SELECT n FROM t WHERE id = 1")
        await other.fetchval("SELECT n FROM t WHERE id = 1")
        await conn.execute("UPDATE t SET n = 10 WHERE id = 1")
        await first.commit()
        exc = await raised(lambda: other.execute("UPDATE t SET n = 20 WHERE id = 1"))
        assert isinstance(exc, asyncpg.SerializationError)
        assert is_outage(exc)
        await second.rollback()
    finally:
        await other.close()


@pytest.mark.parametrize(
    ("sql", "args"),
    [
        pytest.param("INSERT INTO t VALUES (1, 1)", (), id="unique-violation-23505"),
        pytest.param("SELECT 'abc'::int", (), id="invalid-text-22P02"),
        pytest.param("DO $$ BEGIN RAISE EXCEPTION 'boom'; END $$", (), id="raise-P0001"),
        pytest.param("SELECT $1::int4", (2**40,), id="client-data-error"),
        pytest.param("SELECT $1::text", (b"\xff",), id="client-wrong-type"),
    ],
)
async def test_record_caused_failures_are_not_outages(
    conn: asyncpg.Connection[Any], sql: str, args: tuple[Any, ...]
) -> None:
    exc = await raised(lambda: conn.execute(sql, *args))
    assert not is_outage(exc), type(exc)
    assert not isinstance(exc, OUTAGES)


@pytest.mark.parametrize(
    ("sqlstate", "outage"),
    [
        ("08000", True),
        ("08006", True),
        ("08P01", True),
        ("53100", True),  # disk full
        ("53200", True),  # out of memory
        ("53300", True),
        ("53999", True),  # a code asyncpg has no class for, in an outage class
        ("57000", True),
        ("57014", True),
        ("57P01", True),  # admin shutdown
        ("57P02", True),
        ("57P03", True),
        ("58030", True),  # I/O error
        ("40001", True),
        ("40P01", True),
        ("40003", True),
        ("40002", False),  # a deferred constraint: the record's
        ("25006", True),  # read-only transaction
        ("25P04", True),
        ("25P03", True),  # idle-in-transaction timeout (an inline call that ran long)
        ("55P03", True),  # lock not available
        ("42501", True),  # a revoked grant
        ("42P01", True),  # a renamed or dropped table
        ("XX000", True),  # internal error
        ("XX001", True),  # data corrupted
        ("XX002", True),  # index corrupted
        ("23505", False),
        ("23502", False),
        ("22001", False),
        ("54000", False),  # program limit exceeded (a row too big for an index): the record's
        ("P0001", False),
        ("42601", False),  # a syntax error: the code's
        ("42703", False),  # undefined column
        ("28P01", True),  # wrong password: while running (a rotated password) an outage; at start, exit 2
        ("3D000", True),
    ],
)
def test_sqlstate_table(sqlstate: str, outage: bool) -> None:
    exc = server_error(sqlstate)
    assert is_outage(exc) is outage
    # The tuple for `except` clauses never catches what `is_outage` says is not an outage.
    if not outage:
        assert not isinstance(exc, OUTAGES)


def test_rejected_credentials_name_the_setting() -> None:
    exc = server_error("28P01", "password authentication failed for user x")
    message = rejected_setting(exc)
    assert message is not None and message.startswith("DATABASE_URL")
    assert "password authentication failed" not in message
    assert rejected_setting(asyncpg.DataError("x")) is None


def test_the_except_tuple_agrees_with_is_outage_for_every_asyncpg_server_error() -> None:
    """`OUTAGES` (for `except` clauses) and `is_outage` (the rule) place every SQLSTATE asyncpg knows alike, but
    one."""
    disagreements = []
    for name in dir(asyncpg.exceptions):
        kind = getattr(asyncpg.exceptions, name)
        sqlstate = getattr(kind, "sqlstate", None)
        if not (isinstance(kind, type) and issubclass(kind, asyncpg.PostgresError) and isinstance(sqlstate, str)):
            continue
        exc = server_error(sqlstate) if type(server_error(sqlstate)) is kind else kind("server message")
        if is_outage(exc) != isinstance(exc, OUTAGES):
            disagreements.append((name, sqlstate, is_outage(exc)))
    # 40000 itself is an outage, but its class is also the base of 40002 (a deferred constraint, the record's): the
    # tuple cannot hold it without catching 40002 too. `is_outage` has it right.
    assert disagreements == [("TransactionRollbackError", "40000", True)]

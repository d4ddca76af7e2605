"""Issue 12, cold start: the worker readies PostgreSQL and Kafka side by side, joins the group only once both are
ready, logs where its start-up went (which the bench reads), and an untraced worker without provider connections
imports neither the tracing SDK nor a provider SDK."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from pydantic import SecretStr
from structlog.testing import capture_logs

from tests.harness.in_process import RunningWorker, running_worker
from worker.app import EXIT_PENDING_MIGRATIONS, Configuration, Worker
from worker.contract.connections import Connections
from worker.security import SigningKeys
from worker.settings import Settings
from worker_bench.start import start_breakdown


class _GatedPool:
    """The real pool, except that the database check waits until the producer has been started."""

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record], gate: asyncio.Event) -> None:
        self._pool = pool
        self._gate = gate

    async def fetchval(self, query: str) -> Any:
        await self._gate.wait()
        return await self._pool.fetchval(query)

    def acquire(self) -> Any:
        return self._pool.acquire()


class _Producer:
    def __init__(self, started: asyncio.Event) -> None:
        self._started = started
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1
        self._started.set()


def _worker(dsn: str) -> Worker:
    settings = Settings(database_url=SecretStr(dsn), kafka_bootstrap_servers="127.0.0.1:9", http_port=0)
    return Worker(Configuration(settings=settings, connections=Connections.empty(), signing_keys=SigningKeys({})))


async def test_database_and_broker_are_readied_side_by_side(pool: asyncpg.Pool[asyncpg.Record]) -> None:
    # The database check can only finish once the producer started: one step after the other would never end.
    started = asyncio.Event()
    producer = _Producer(started)
    worker = _worker("postgresql://unused@127.0.0.1:9/x")
    outcome = await asyncio.wait_for(
        worker._startup.ready(_GatedPool(pool, started), producer),  # type: ignore[arg-type]
        timeout=20,
    )
    assert outcome is None
    assert producer.starts == 1
    assert worker.health.database_ok


async def test_pending_migrations_exit_without_waiting_for_the_broker(fresh_database: str) -> None:
    # The producer never starts (as with a broker that is down): exit 3 comes from the database side regardless.
    never = asyncio.Event()

    class _Down:
        async def start(self) -> None:
            await never.wait()

    worker = _worker(fresh_database)
    pool = await asyncpg.create_pool(fresh_database, min_size=0, max_size=2)
    try:
        with capture_logs() as logs:
            outcome = await asyncio.wait_for(worker._startup.ready(pool, _Down()), timeout=20)  # type: ignore[arg-type]
    finally:
        await pool.close()
    assert outcome == EXIT_PENDING_MIGRATIONS
    assert [entry["event"] for entry in logs if entry["log_level"] == "error"] == ["migrations_pending"]


def test_untraced_worker_without_connections_loads_no_sdk() -> None:
    probe = (
        "import sys, worker.app, worker.cli.commands, worker.tracing;"
        "print(sorted(m for m in ('stripe', 'Adyen', 'gocardless_pro', 'opentelemetry.sdk.trace') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
    # Building an adapter loads its SDK, and only its own.
    probe = (
        "import sys; from worker.providers.factory import AdapterFactory;"
        "from pydantic import SecretStr;"
        "from worker.contract.connections import Connection, ConnectionConfig;"
        "config = ConnectionConfig(organization_id='org', code='main', provider='stripe', secret_env='KEY');"
        "AdapterFactory().adapter_for(Connection(config=config, secret=SecretStr('sk_test_x')));"
        "print(sorted(m for m in ('stripe', 'Adyen', 'gocardless_pro') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "['stripe']"


async def test_start_up_logs_where_its_time_went_and_the_bench_reads_it(
    pg_dsn: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    with capture_logs() as logs:
        async with running_worker(
            pg_dsn, kafka_bootstrap, "startup", kind=RunningWorker, extra_env={"KAFKA_SESSION_TIMEOUT_MS": "2000"}
        ):
            pass
    starting = next(entry for entry in logs if entry["event"] == "worker_starting")
    started = next(entry for entry in logs if entry["event"] == "worker_started")
    assert starting["seconds_since_process_start"] > 0
    assert started["prepare_ms"] >= 0 and started["join_ms"] >= 0
    # The bench's cold-start breakdown reads the same lines from a worker's JSON log.
    log_path = tmp_path / "worker.log"
    log_path.write_bytes(b"not json\n" + b"\n".join(orjson.dumps(entry, default=str) for entry in logs) + b"\n")
    assert start_breakdown(log_path) == (
        starting["seconds_since_process_start"],
        started["prepare_ms"] / 1000,
        started["join_ms"] / 1000,
    )


def _retry_loops() -> list[asyncio.Task[Any]]:
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done() and getattr(task.get_coro(), "__qualname__", "") == "until_done"
    ]


async def test_a_worker_cancelled_while_waiting_for_its_dependencies_leaves_no_retry_loop() -> None:
    # Both dependencies unreachable: the worker waits for them in retry loops. Cancelling the worker (an embedding
    # program's shutdown, a test's timeout) must end those loops too, not leave them retrying for nobody.
    before = set(_retry_loops())
    worker = _worker("postgresql://unused@127.0.0.1:9/x")
    with capture_logs() as logs:
        task = asyncio.create_task(worker.run(install_signal_handlers=False))
        for _ in range(200):
            if any(entry["event"] == "dependency_retry" for entry in logs) and set(_retry_loops()) - before:
                break
            await asyncio.sleep(0.05)
        assert set(_retry_loops()) - before, "the worker never started waiting for its dependencies"
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await asyncio.sleep(0)  # let cancellations be delivered
    assert set(_retry_loops()) - before == set()

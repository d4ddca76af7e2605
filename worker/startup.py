"""The start race: the database (reachable, schema current) and the broker (credentials, producer) made ready side by
side, each waited for through outages, all of it given up as soon as a stop is requested."""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import Awaitable, Callable

import asyncpg
import structlog

from worker.errors import EXIT_OK, EXIT_PENDING_MIGRATIONS, ConfigurationError
from worker.observability import DependencyWatch, Health, HealthServer
from worker.outages import Dependency, rejected_setting
from worker.preflight import check_kafka_credentials
from worker.retries import until_done
from worker.settings import Settings
from worker.store import migrations
from worker.transport.producers import KafkaProducer

log = structlog.get_logger("worker.app")


async def start_http(http: HealthServer, port: int) -> None:
    """The health endpoints first, so that a port in use stops the worker before it connects to anything."""
    try:
        await http.start()
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise ConfigurationError(
            f"HTTP_PORT: port {port} is already in use (another worker or `customer-worker dev`?); "
            "set HTTP_PORT to a free port"
        ) from None


class Startup:
    def __init__(self, settings: Settings, health: Health, watch: DependencyWatch, stop: asyncio.Event) -> None:
        self._settings = settings
        self._health = health
        self._watch = watch
        self._stop = stop

    async def ready(self, pool: asyncpg.Pool[asyncpg.Record], producer: KafkaProducer) -> int | None:
        """None once both dependencies are ready; otherwise the exit code. Start-up costs the slower of the two, not
        their sum. The group is joined only after both: a replica whose database is down or behind must not take
        partitions it cannot serve (nor make the group rebalance twice on its way to exit 3)."""
        waiting = {
            asyncio.create_task(self._database_ready(pool), name="start-postgres"),
            asyncio.create_task(self._broker_ready(producer), name="start-kafka"),
        }
        try:
            while waiting:
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    exit_code = task.result()  # a refused setting raises ConfigurationError at once (exit 2)
                    if exit_code is not None:
                        return exit_code
            return None
        finally:
            for task in waiting:
                task.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)

    async def until_or_stopped(self, operation: Callable[[], Awaitable[None]], dependency: Dependency) -> bool:
        """Wait for a dependency through outages (not ready meanwhile); False when a stop came first."""
        task = asyncio.ensure_future(until_done(operation, dependency, self._watch))
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            done, _ = await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when this wait is cancelled: a retry loop left behind would retry for nobody
            stop.cancel()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return task in done and task.result() is None

    async def _database_ready(self, pool: asyncpg.Pool[asyncpg.Record]) -> int | None:
        if not await self.until_or_stopped(lambda: self._check_database(pool), "postgres"):
            return EXIT_OK
        async with pool.acquire() as conn:
            waiting = await migrations.pending(conn)
        if waiting:
            pending = [f"{m.version:04d}_{m.name}" for m in waiting]
            log.error("migrations_pending", pending=pending, hint="run `customer-worker migrate` first")
            return EXIT_PENDING_MIGRATIONS
        return None

    async def _broker_ready(self, producer: KafkaProducer) -> int | None:
        if not await self.until_or_stopped(lambda: check_kafka_credentials(self._settings), "kafka"):
            return EXIT_OK
        return None if await self.until_or_stopped(producer.start, "kafka") else EXIT_OK

    async def _check_database(self, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        try:
            await pool.fetchval("SELECT 1")
        except Exception as exc:
            # At start, a server that answers but refuses the settings is not waited for (SPEC §12 Settings).
            refused = rejected_setting(exc)
            if refused is not None:
                raise ConfigurationError(f"configuration error: {refused}") from None
            raise
        self._health.database_ok = True

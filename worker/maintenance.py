"""The maintenance loop: inbox retention, the backlog gauges (outbox, provider jobs) read from PostgreSQL, and the
console's heartbeat of this process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Final

import asyncpg
import structlog

from worker.observability import Health, Metrics
from worker.observability.liveness import ConsumerProgress
from worker.store.maintenance import console_heartbeat, open_provider_jobs, outbox_backlog, prune_retained

log = structlog.get_logger("worker.app")

INTERVAL: Final = 5.0


class Maintenance:
    def __init__(
        self,
        pool: asyncpg.Pool[asyncpg.Record],
        metrics: Metrics,
        health: Health,
        progress: ConsumerProgress,
        held: Callable[[], set[int]],
        *,
        retention_days: float,
    ) -> None:
        """`held()`: the partitions this process holds, for the console's heartbeat."""
        self._pool = pool
        self._metrics = metrics
        self._health = health
        self._progress = progress
        self._held = held
        self._retention = timedelta(days=retention_days)

    async def run(self) -> None:
        while True:
            await self.once()
            await asyncio.sleep(INTERVAL)

    async def once(self) -> None:
        pool = self._pool
        try:
            await prune_retained(pool, self._retention)
            backlog = await outbox_backlog(pool)
            self._metrics.set_outbox(backlog.rows, backlog.oldest_seconds)
            self._metrics.set_provider_jobs(await open_provider_jobs(pool, statement_timeout=INTERVAL))
            await console_heartbeat(pool, self._held())
            self._health.database_ok = True
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self._health.database_ok = False
            self._progress.outage()  # a consumer waiting for PostgreSQL meanwhile is not stalled
            log.warning("maintenance_failed", error_type=type(exc).__name__)

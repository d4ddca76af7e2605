"""Housekeeping queries the worker runs every few seconds: retention pruning and the backlog figures of the metrics.

Pruning deletes in chunks (each its own short statement), so a large backlog of old rows never holds locks or
bloats one transaction.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from datetime import timedelta
from typing import Final, NamedTuple

import asyncpg

from worker.store.console import COUNTS_KEPT, HEARTBEAT, PRUNE_CONSOLE, WORKERS_KEPT, worker_id, worker_version
from worker.store.jobs import Pool, prune_finished

PRUNE_CHUNK: Final = 10_000

_PRUNE_PROCESSED: Final = (
    "DELETE FROM processed_messages WHERE ctid = ANY(ARRAY(SELECT ctid FROM processed_messages "
    "WHERE processed_at < now() - $1::interval LIMIT $2))"
)
_OUTBOX_BACKLOG: Final = (
    "SELECT count(*) AS backlog, coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS age FROM outbox"
)
# Open jobs only: both statuses have a partial index, so the cost follows the backlog, not the table, and stays
# small with many replicas each asking every few seconds. Finished jobs are counted by the provider call counters.
_OPEN_JOBS: Final = (
    "SELECT status, count(*) AS n FROM provider_jobs WHERE status IN ('pending', 'running') GROUP BY status"
)


class OutboxBacklog(NamedTuple):
    rows: int
    oldest_seconds: float


async def prune_retained(pool: Pool, retention: timedelta, *, chunk: int = PRUNE_CHUNK) -> None:
    """Delete what is older than `retention`: settled message ids (`processed_messages`) and finished jobs."""
    while True:
        deleted = await pool.execute(_PRUNE_PROCESSED, retention, chunk)
        if int(deleted.split()[-1]) < chunk:
            break
    await prune_finished(pool, retention, chunk=chunk)


async def outbox_backlog(pool: Pool) -> OutboxBacklog:
    row: asyncpg.Record | None = await pool.fetchrow(_OUTBOX_BACKLOG)
    assert row is not None  # an aggregate without GROUP BY always returns one row
    return OutboxBacklog(row["backlog"], row["age"])


async def open_provider_jobs(pool: Pool, *, statement_timeout: float) -> dict[str, int]:
    """Open provider jobs per status (`pending`, `running`)."""
    rows = await pool.fetch(_OPEN_JOBS, timeout=statement_timeout)
    return {row["status"]: row["n"] for row in rows}


async def console_heartbeat(
    pool: Pool,
    partitions: Iterable[int],
    *,
    counts_kept: timedelta = COUNTS_KEPT,
    workers_kept: timedelta = WORKERS_KEPT,
) -> None:
    """Say this process is alive with the partitions it holds (the console lists workers from the database, not
    from one process's memory), and forget counts and workers older than what the console shows."""
    await pool.execute(HEARTBEAT, worker_id(), socket.gethostname(), os.getpid(), sorted(partitions), worker_version())
    await pool.execute(PRUNE_CONSOLE, counts_kept, workers_kept)

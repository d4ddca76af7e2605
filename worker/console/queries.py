"""The console's reads: SQL only, metadata only. No query selects a command's value, an event's payload or a
customer's personal column; lists are keyset pages, counts come from indexes or the per-minute aggregates and are
capped where a table can be large."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg

from worker.console.filters import DeadLetterQuery, ParkedQuery, ProviderJobQuery, RejectionQuery
from worker.store.db import Conn
from worker.store.jobs import Pool

PAGE: Final = 50
CAP: Final = 100_000  # a count beyond this shows as "100,000+"
Rows = list[asyncpg.Record]


async def gather(pool: Pool, *reads: Callable[[Conn], Awaitable[Any]]) -> list[Any]:
    """Independent reads on separate connections, at once: a page costs its slowest query, not their sum."""

    async def one(read: Callable[[Conn], Awaitable[Any]]) -> Any:
        async with pool.acquire() as conn:
            return await read(conn)

    return list(await asyncio.gather(*(one(read) for read in reads)))


def capped(sql_from_where: str) -> str:
    return f"SELECT count(*) FROM (SELECT 1 FROM {sql_from_where} LIMIT {CAP + 1}) AS capped"


# --- overview -------------------------------------------------------------------------------------------------


async def answers_per_minute(conn: Conn, since: datetime) -> Rows:
    return await conn.fetch(
        "SELECT minute, outcome, sum(count)::bigint AS count FROM answer_counts WHERE minute >= $1 "
        "GROUP BY minute, outcome ORDER BY minute",
        since,
    )


async def outbox_backlog(conn: Conn) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT ({capped('outbox')}) AS count, (SELECT created_at FROM outbox ORDER BY id LIMIT 1) AS oldest"
    )


async def parked_by_reason(conn: Conn) -> Rows:
    return await conn.fetch(
        "SELECT reason, event_type, count(*) AS count, min(parked_at) AS oldest FROM parked_events "
        "GROUP BY reason, event_type ORDER BY count(*) DESC"
    )


async def provider_job_states(conn: Conn) -> Rows:
    """Jobs by connection, state and last error code; finished ones (done, skipped, cancelled) only from the last
    hour (they are kept until pruned, and only show what a connection did lately)."""
    return await conn.fetch(
        "SELECT connection_code, provider, "
        "CASE WHEN status = 'pending' THEN 'waiting' "
        "     WHEN status = 'running' AND lease_until < now() THEN 'stuck' ELSE status END AS state, "
        "last_error->>'error_code' AS error_code, count(*) AS count, max(updated_at) AS last_at "
        "FROM provider_jobs "
        "WHERE status NOT IN ('done', 'skipped', 'cancelled') OR updated_at > now() - interval '1 hour' "
        "GROUP BY 1, 2, 3, 4"
    )


async def workers_seen(conn: Conn) -> Rows:
    return await conn.fetch(
        "SELECT worker_id, host, pid, started_at, last_seen_at, partitions, version, "
        "now() - last_seen_at AS silent_for FROM workers_seen ORDER BY last_seen_at DESC LIMIT 50"
    )


async def dead_letter_states(conn: Conn) -> Rows:
    return await conn.fetch(
        "SELECT replay_state, count(*) AS count FROM dead_letters GROUP BY replay_state ORDER BY replay_state"
    )


async def rejections_since(conn: Conn, since: datetime) -> int:
    value = await conn.fetchval(
        "SELECT coalesce(sum(count), 0)::bigint FROM rejection_counts WHERE minute >= $1", since
    )
    return int(value or 0)


async def open_operator_jobs(conn: Conn) -> Rows:
    return await conn.fetch(
        "SELECT id, kind, state, total, done_count, failed_count, skipped_count, returned_count, created_by, "
        "created_at FROM operator_jobs WHERE state IN ('pending', 'running') ORDER BY id LIMIT 20"
    )


# --- dead letters ---------------------------------------------------------------------------------------------

_DLQ_COLUMNS: Final = (
    "id, dlq_topic, dlq_partition, dlq_offset, source_topic, source_partition, source_offset, reason, codes, paths, "
    "organization_id, message_id, value_size, encode(value_sha256, 'hex') AS value_sha256, failed_at, replay_state, "
    "replayed_at, replay_job_id, returned_from_job_id"
)


async def dead_letter_page(conn: Conn, query: DeadLetterQuery, after: tuple[datetime, int] | None) -> Rows:
    where = query.where()
    if after is not None:
        where.keyset("(failed_at, id) < ({}::timestamptz, {}::bigint)", after)
    return await conn.fetch(
        f"SELECT {_DLQ_COLUMNS} FROM dead_letters WHERE {where.sql()} ORDER BY failed_at DESC, id DESC LIMIT {PAGE}",
        *where.args,
    )


async def dead_letter_one(conn: Conn, ident: int) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {_DLQ_COLUMNS} FROM dead_letters WHERE id = $1", ident)


async def dead_letter_count(conn: Conn, query: DeadLetterQuery) -> int:
    where = query.where()
    return int(await conn.fetchval(capped(f"dead_letters WHERE {where.sql()}"), *where.args))


async def dead_letter_buckets(conn: Conn, query: DeadLetterQuery) -> Rows:
    where = query.where()
    bucket = "hour" if query.window in ("1h", "6h", "24h") else "day"
    return await conn.fetch(
        f"SELECT date_trunc('{bucket}', failed_at) AS at, reason, count(*) AS count FROM dead_letters "
        f"WHERE {where.sql()} GROUP BY 1, 2 ORDER BY 1",
        *where.args,
    )


async def dead_letter_top(conn: Conn, query: DeadLetterQuery, column: str) -> Rows:
    """Top values of `reason`, `organization_id` or a validation code within the filter."""
    where = query.where()
    expression = {"reason": "reason", "organization_id": "organization_id", "code": "unnest(codes)"}[column]
    return await conn.fetch(
        f"SELECT {expression} AS value, count(*) AS count FROM dead_letters WHERE {where.sql()} "
        "GROUP BY 1 ORDER BY 2 DESC LIMIT 10",
        *where.args,
    )


# --- parked events and provider jobs --------------------------------------------------------------------------


async def parked_page(conn: Conn, query: ParkedQuery, after: int | None) -> Rows:
    where = query.where()
    if after is not None:
        where.add("id < {}", after)
    return await conn.fetch(
        "SELECT id, event_id, event_type, octet_length(payload) AS size, reason, error, created_at, parked_at "
        f"FROM parked_events WHERE {where.sql()} ORDER BY id DESC LIMIT {PAGE}",
        *where.args,
    )


async def parked_count(conn: Conn, query: ParkedQuery) -> int:
    where = query.where()
    return int(await conn.fetchval(capped(f"parked_events WHERE {where.sql()}"), *where.args))


async def provider_job_page(conn: Conn, query: ProviderJobQuery, after: int | None) -> Rows:
    """Oldest first (the id order is the creation order)."""
    where = query.where()
    if after is not None:
        where.add("id > {}", after)
    return await conn.fetch(
        "SELECT id, organization_id, kind, provider, connection_code, status, attempts, next_attempt_at, "
        "lease_until, (status = 'running' AND lease_until < now()) AS stuck, last_error->>'error_code' AS error_code, "
        "last_error->>'http_status' AS http_status, last_error->>'skipped' AS skipped, created_at, updated_at "
        f"FROM provider_jobs WHERE {where.sql()} ORDER BY id LIMIT {PAGE}",
        *where.args,
    )


async def provider_job_count(conn: Conn, query: ProviderJobQuery) -> int:
    where = query.where()
    return int(await conn.fetchval(capped(f"provider_jobs WHERE {where.sql()}"), *where.args))


async def provider_job_errors(conn: Conn, query: ProviderJobQuery) -> Rows:
    where = query.where()
    return await conn.fetch(
        "SELECT connection_code, last_error->>'error_code' AS error_code, count(*) AS count, min(created_at) AS oldest "
        f"FROM provider_jobs WHERE {where.sql()} AND status NOT IN ('done', 'skipped', 'cancelled') GROUP BY 1, 2 "
        "ORDER BY 3 DESC LIMIT 20",
        *where.args,
    )


# --- rejections, audit, operator jobs -------------------------------------------------------------------------


async def rejection_top(conn: Conn, query: RejectionQuery) -> Rows:
    where = query.where()
    return await conn.fetch(
        "SELECT organization_id, code, path, sum(count)::bigint AS count, max(minute) AS last_minute "
        f"FROM rejection_counts WHERE {where.sql()} GROUP BY 1, 2, 3 ORDER BY 4 DESC LIMIT 100",
        *where.args,
    )


async def rejection_buckets(conn: Conn, query: RejectionQuery) -> Rows:
    where = query.where()
    bucket = "hour" if query.window in ("1h", "6h", "24h") else "day"
    return await conn.fetch(
        f"SELECT date_trunc('{bucket}', minute) AS at, code, sum(count)::bigint AS count FROM rejection_counts "
        f"WHERE {where.sql()} GROUP BY 1, 2 ORDER BY 1",
        *where.args,
    )


async def audit_page(conn: Conn, after: tuple[datetime, int] | None, actor: str | None) -> Rows:
    conditions: list[str] = []
    args: list[Any] = []
    if actor:
        args.append(actor)
        conditions.append(f"actor = ${len(args)}")
    if after is not None:
        args.extend(after)
        conditions.append(f"(at, id) < (${len(args) - 1}::timestamptz, ${len(args)}::bigint)")
    where = " AND ".join(conditions) or "true"
    return await conn.fetch(
        "SELECT id, at, actor, role, action, filter::text AS filter, count, outcome, remote_addr, job_id "
        f"FROM audit_log WHERE {where} ORDER BY at DESC, id DESC LIMIT {PAGE}",
        *args,
    )


async def operator_jobs(conn: Conn) -> Rows:
    return await conn.fetch(
        "SELECT id, kind, state, total, done_count, failed_count, skipped_count, returned_count, created_by, "
        "created_at, finished_at, cancel_requested FROM operator_jobs ORDER BY created_at DESC, id DESC LIMIT 50"
    )


async def operator_job(conn: Conn, ident: int) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT id, kind, state, filter::text AS filter, total, done_count, failed_count, skipped_count, "
        "returned_count, created_by, created_at, started_at, finished_at, cancel_requested, rate_per_second, "
        "last_error FROM operator_jobs WHERE id = $1",
        ident,
    )


async def operator_job_items(conn: Conn, ident: int) -> Rows:
    """The items that did not simply go through (failed, skipped, came back), first 100."""
    return await conn.fetch(
        "SELECT item_id, result, detail, at FROM operator_job_items WHERE job_id = $1 AND result <> 'sent' "
        "ORDER BY item_id LIMIT 100",
        ident,
    )


@dataclass(frozen=True, slots=True)
class Series:
    """Counts per bucket and label, for the SVG charts."""

    buckets: list[datetime]
    labels: list[str]
    values: dict[str, list[int]]


def series(rows: Rows, key: str, since: datetime | None = None, step_seconds: int | None = None) -> Series:
    """Rows of (at, <key>, count) as a series; with `since` and `step_seconds`, missing buckets count zero."""
    labels = sorted({str(row[key]) for row in rows})
    if since is not None and step_seconds is not None:
        start = int(since.timestamp()) // step_seconds * step_seconds
        last = max((int(row[0].timestamp()) for row in rows), default=start)
        stamps = list(range(start, max(last, start) + 1, step_seconds))
        buckets = [datetime.fromtimestamp(stamp, tz=since.tzinfo) for stamp in stamps]
    else:
        buckets = sorted({row[0] for row in rows})
    index = {int(at.timestamp()): position for position, at in enumerate(buckets)}
    values = {label: [0] * len(buckets) for label in labels}
    for row in rows:
        position = index.get(int(row[0].timestamp()))
        if position is not None:
            values[str(row[key])][position] += int(row["count"])
    return Series(buckets, labels, values)

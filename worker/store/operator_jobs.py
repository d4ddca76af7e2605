"""SQL of the operators' bulk jobs (issue 20): `operator_jobs`, their items, the audit log, and the rows each kind
of job acts on (dead letters, parked events, provider jobs). The rules are in `worker.ops.jobs`.

A job's selection is frozen when it is created: explicit ids, or the operator's filter bounded by the table's
highest id at that moment (`max_id`), so rows written afterwards (a replayed record that came straight back to the
DLQ, a new failure) are never part of it. Items are taken in id order after the last one recorded, so a job that
resumes after a restart goes on where it stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import asyncpg
import orjson

from worker.store.db import Conn
from worker.store.jobs import Pool

KINDS: Final = ("dlq_replay", "parked_republish", "provider_jobs_retry", "provider_jobs_cancel")
TABLES: Final = {
    "dlq_replay": "dead_letters",
    "parked_republish": "parked_events",
    "provider_jobs_retry": "provider_jobs",
    "provider_jobs_cancel": "provider_jobs",
}
# Each filter key: the condition on the kind's table, `{}` standing for its parameter. Fixed text only.
_CONDITIONS: Final[dict[str, dict[str, str]]] = {
    "dead_letters": {
        "reason": "reason = {}",
        "organization_id": "organization_id = {}",
        "code": "{} = ANY(codes)",
        "replay_state": "replay_state = {}",
        "failed_from": "failed_at >= ({}::text)::timestamptz",
        "failed_to": "failed_at < ({}::text)::timestamptz",
        "partition": "dlq_partition = {}",
        "from_offset": "dlq_offset >= {}",
        "to_offset": "dlq_offset <= {}",
    },
    "parked_events": {
        "reason": "reason = {}",
        "event_type": "event_type = {}",
        "organization_id": "left(event_key, length({0}) + 1) = {0} || ':'",
    },
    "provider_jobs": {
        "state": "status = {}",
        "connection": "connection_code = {}",
        "error_code": "last_error->>'error_code' = {}",
        "organization_id": "organization_id = {}",
    },
}
# What each kind can act on at all, whatever the filter.
_ELIGIBLE: Final = {
    "dlq_replay": "replay_state = 'new'",  # a returned original is superseded by its new copy
    "parked_republish": "true",
    "provider_jobs_retry": "status IN ('failed', 'cancelled', 'pending')",
    "provider_jobs_cancel": "status IN ('pending', 'running')",
}
_JOB_COLUMNS: Final = (
    "id, kind, filter, selection, state, total, done_count, failed_count, skipped_count, returned_count, "
    "created_by, created_at, started_at, finished_at, cancel_requested, lease_owner, lease_until, rate_per_second, "
    "last_error"
)


def where(
    kind: str, filters: dict[str, Any], selection: dict[str, Any] | None, first: int = 1
) -> tuple[str, list[Any]]:
    """The WHERE clause of the rows `kind` would act on (eligible, matching, inside the frozen selection)."""
    table = TABLES[kind]
    explicit = selection is not None and selection.get("ids") is not None
    # Rows chosen one by one: a dead letter already replayed may be replayed again (the worker answers a command
    # it applied as a duplicate); by filter, only the ones never replayed.
    parts = ["true" if explicit and kind == "dlq_replay" else _ELIGIBLE[kind]]
    args: list[Any] = []
    for name, value in sorted(filters.items()):
        if value is None:
            continue
        condition = _CONDITIONS[table].get(name)
        if condition is None:
            raise ValueError(f"unknown filter {name!r} for {kind}")
        args.append(value)
        parts.append(condition.format(f"${first + len(args) - 1}"))
    if selection is not None:
        if selection.get("ids") is not None:
            args.append(list(selection["ids"]))
            parts.append(f"id = ANY(${first + len(args) - 1}::bigint[])")
        else:
            args.append(int(selection["max_id"]))
            parts.append(f"id <= ${first + len(args) - 1}")
    return " AND ".join(parts), args


async def count_matching(conn: Pool | Conn, kind: str, filters: dict[str, Any], ids: Sequence[int] | None) -> int:
    clause, args = where(kind, filters, {"ids": list(ids)} if ids is not None else None)
    count: int = await conn.fetchval(f"SELECT count(*) FROM {TABLES[kind]} WHERE {clause}", *args)
    return count


async def create_job(
    conn: Pool | Conn,
    kind: str,
    filters: dict[str, Any],
    ids: Sequence[int] | None,
    *,
    actor: str,
    rate_per_second: float,
) -> tuple[int, int]:
    """Freeze the selection, count it, write the job; (job id, total)."""
    if ids is not None:
        selection: dict[str, Any] = {"ids": sorted(set(ids))}
    else:
        top = await conn.fetchval(f"SELECT coalesce(max(id), 0) FROM {TABLES[kind]}")
        selection = {"max_id": top}
    clause, args = where(kind, filters, selection)
    total: int = await conn.fetchval(f"SELECT count(*) FROM {TABLES[kind]} WHERE {clause}", *args)
    job_id: int = await conn.fetchval(
        "INSERT INTO operator_jobs (kind, filter, selection, total, created_by, rate_per_second) "
        "VALUES ($1, $2::jsonb, $3::jsonb, $4, $5, $6) RETURNING id",
        kind,
        orjson.dumps(filters).decode(),
        orjson.dumps(selection).decode(),
        total,
        actor,
        rate_per_second,
    )
    return job_id, total


async def next_items(conn: Pool | Conn, job: asyncpg.Record, limit: int) -> list[int]:
    """The next ids to act on: after the last item recorded, never a record that came back from this job."""
    filters, selection = orjson.loads(job["filter"]), orjson.loads(job["selection"])
    clause, args = where(job["kind"], filters, selection, first=3)
    returned = " AND returned_from_job_id IS DISTINCT FROM $1" if job["kind"] == "dlq_replay" else ""
    rows = await conn.fetch(
        f"SELECT id FROM {TABLES[job['kind']]} WHERE {clause}{returned} AND id > coalesce("
        "(SELECT max(item_id) FROM operator_job_items WHERE job_id = $1), 0) ORDER BY id LIMIT $2",
        job["id"],
        limit,
        *args,
    )
    return [row["id"] for row in rows]


async def claim_job(pool: Pool, owner: str, lease_seconds: float, job_id: int | None = None) -> asyncpg.Record | None:
    """A pending job, or a running one whose lease ran out (its runner died): leased to `owner`."""
    row: asyncpg.Record | None = await pool.fetchrow(
        "WITH due AS (SELECT id FROM operator_jobs WHERE (state = 'pending' OR (state = 'running' AND "
        "lease_until < now())) AND ($3::bigint IS NULL OR id = $3) ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) "
        "UPDATE operator_jobs AS j SET state = 'running', lease_owner = $1, "
        "lease_until = now() + make_interval(secs => $2), started_at = coalesce(j.started_at, now()) "
        f"FROM due WHERE j.id = due.id RETURNING {', '.join('j.' + c for c in _JOB_COLUMNS.split(', '))}",
        owner,
        lease_seconds,
        job_id,
    )
    return row


async def renew_lease(pool: Pool, job_id: int, owner: str, lease_seconds: float) -> bool | None:
    """Extend the lease; the job's `cancel_requested`, or None when the lease was lost (another runner has it)."""
    cancel: bool | None = await pool.fetchval(
        "UPDATE operator_jobs SET lease_until = now() + make_interval(secs => $3) "
        "WHERE id = $1 AND lease_owner = $2 AND state = 'running' RETURNING cancel_requested",
        job_id,
        owner,
        lease_seconds,
    )
    return cancel


async def record_items(conn: Conn, job_id: int, owner: str, results: Sequence[tuple[int, str, str | None]]) -> bool:
    """Record each item's result and the job's counts (fenced by the lease); False if the lease was lost."""
    counted = await conn.fetchval(
        "UPDATE operator_jobs SET done_count = done_count + $3, failed_count = failed_count + $4, "
        "skipped_count = skipped_count + $5 WHERE id = $1 AND lease_owner = $2 AND state = 'running' RETURNING id",
        job_id,
        owner,
        sum(result == "sent" for _, result, _ in results),
        sum(result == "failed" for _, result, _ in results),
        sum(result == "skipped" for _, result, _ in results),
    )
    if counted is None:
        return False
    # A sent record that already came back (see `worker.store.console`) is recorded as returned.
    await conn.execute(
        "WITH ins AS (INSERT INTO operator_job_items (job_id, item_id, result, detail) "
        "SELECT $1, i, CASE WHEN r = 'sent' AND EXISTS (SELECT 1 FROM dead_letters AS c WHERE c.returned_from_id = i "
        "AND c.returned_from_job_id = $1) THEN 'returned' ELSE r END, d "
        "FROM unnest($2::bigint[], $3::text[], $4::text[]) AS x(i, r, d) "
        "ON CONFLICT (job_id, item_id) DO NOTHING RETURNING result) "
        "UPDATE operator_jobs SET returned_count = returned_count + (SELECT count(*) FROM ins WHERE result = "
        "'returned') WHERE id = $1",
        job_id,
        [item for item, _, _ in results],
        [result for _, result, _ in results],
        [detail for _, _, detail in results],
    )
    return True


# Records that came back while their send was being recorded (both transactions in flight) are settled here.
_SETTLE_RETURNED: Final = (
    "WITH r AS (UPDATE operator_job_items AS i SET result = 'returned', at = now() WHERE i.job_id = $1 AND "
    "i.result = 'sent' AND EXISTS (SELECT 1 FROM dead_letters AS c WHERE c.returned_from_id = i.item_id AND "
    "c.returned_from_job_id = $1) RETURNING 1) "
    "UPDATE operator_jobs SET returned_count = returned_count + (SELECT count(*) FROM r) WHERE id = $1"
)


async def finish_job(pool: Pool, job_id: int, owner: str, state: str, error: str | None = None) -> None:
    await pool.execute(_SETTLE_RETURNED, job_id)
    await pool.execute(
        "UPDATE operator_jobs SET state = $3, finished_at = now(), lease_owner = NULL, lease_until = NULL, "
        "last_error = coalesce($4, last_error), skipped_count = skipped_count + greatest(total - done_count - "
        "failed_count - skipped_count, 0) * (($3 = 'done')::int) WHERE id = $1 AND lease_owner = $2",
        job_id,
        owner,
        state,
        error,
    )


async def release_lease(pool: Pool, job_id: int, owner: str) -> None:
    """Give a running job back (a runner stopping): the next runner claims it at once and goes on."""
    await pool.execute(
        "UPDATE operator_jobs SET lease_until = now() WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
        job_id,
        owner,
    )


async def note_error(pool: Pool, job_id: int, error: str) -> None:
    await pool.execute("UPDATE operator_jobs SET last_error = $2 WHERE id = $1", job_id, error)


async def request_cancel(pool: Pool, job_id: int) -> str | None:
    """Ask a job to stop: a pending one is cancelled at once, a running one at its next chunk. Its state, or None."""
    state: str | None = await pool.fetchval(
        "UPDATE operator_jobs SET cancel_requested = true, "
        "state = CASE WHEN state = 'pending' THEN 'cancelled' ELSE state END, "
        "finished_at = CASE WHEN state = 'pending' THEN now() ELSE finished_at END "
        "WHERE id = $1 RETURNING state",
        job_id,
    )
    return state


async def fetch_job(pool: Pool | Conn, job_id: int) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await pool.fetchrow(f"SELECT {_JOB_COLUMNS} FROM operator_jobs WHERE id = $1", job_id)
    return row


async def list_jobs(pool: Pool, limit: int) -> list[asyncpg.Record]:
    return list(await pool.fetch(f"SELECT {_JOB_COLUMNS} FROM operator_jobs ORDER BY id DESC LIMIT $1", limit))


async def insert_audit(
    pool: Pool | Conn,
    *,
    actor: str,
    role: str,
    action: str,
    filters: dict[str, Any],
    count: int | None,
    outcome: str,
    remote_addr: str | None,
    job_id: int | None,
) -> None:
    await pool.execute(
        "INSERT INTO audit_log (actor, role, action, filter, count, outcome, remote_addr, job_id) "
        "VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8)",
        actor,
        role,
        action,
        orjson.dumps(filters).decode(),
        count,
        outcome,
        remote_addr,
        job_id,
    )

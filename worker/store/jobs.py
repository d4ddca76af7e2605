"""The `provider_jobs` queue: claiming with a lease, and recording each outcome with its events in one transaction.

A job row is written by the command's transaction (`worker.store.batch`), so a crash cannot lose it. A runner claims
due rows with `FOR UPDATE SKIP LOCKED` (replicas never wait for each other and never claim the same row), sets
`status = 'running'`, a lease (`lease_until`) and `attempts + 1`. A row whose lease ran out (its runner crashed or
hung) is claimable again; the provider call is then repeated with the same idempotency key, which the provider
answers with what the first call did.

`attempts`, as set by the claim, is the claim's fencing token: every later write of the runner requires
`status = 'running' AND attempts = <its claim's value>`. A runner that lost its lease to another replica therefore
writes nothing (no second link, no duplicate event), whatever it got back from the provider.

Statuses: `pending` (due at `next_attempt_at`), `running` (leased), then one of `done`, `skipped` (nothing left to do
when it ran, e.g. the customer was unlinked meanwhile; reason in `last_error.skipped`) or `failed` (final failure,
error in `last_error`). Finished rows are kept for inspection; `prune_finished` deletes old ones.
The rules deciding what a job still has to do are in `worker.domain.jobs`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Final, Protocol, TypeAlias

import asyncpg
import orjson
import structlog

from worker.domain.customer import COLUMNS, CustomerState
from worker.domain.events import OutboxEvent, provider_event
from worker.domain.jobs import (
    ClaimedJob,
    ConnectionTurn,
    JobResult,
    needs_checkout_after_create,
    needs_push,
    superseded_reason,
)
from worker.store.db import Conn
from worker.store.outbox import write_events
from worker.store.rows import state_from_json, state_from_row

log = structlog.get_logger("worker.providers")

Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"  # a string: asyncpg.Pool is generic for type checkers only

_RETURNING: Final = (
    "RETURNING j.id, j.organization_id, j.customer_id, j.message_id, j.kind, j.provider, j.connection_code, "
    "j.traceparent, j.attempts, j.request, j.last_error->>'error_code' AS last_error_code, "
    "extract(epoch FROM now() - j.search_missed_since)::float8 AS search_missed_for, j.search_misses, j.worker_faults"
)
# The connections this replica knows, as arrays (organization, code, provider, room, busy), less those paused on
# every replica (credentials refused until a test call succeeds; rate limited until Retry-After has passed).
_CONNECTIONS: Final = (
    "conn AS (SELECT c.* FROM unnest($3::text[], $4::text[], $5::text[], $6::int4[], $7::int4[]) "
    "AS c(organization_id, code, provider, room, busy) WHERE c.room > 0 AND NOT EXISTS (SELECT 1 FROM "
    "provider_connections AS s WHERE s.organization_id = c.organization_id AND s.code = c.code "
    "AND (s.state = 'credentials_refused' OR s.paused_until > now())))"
)
# Fair across connections (SPEC §9): each connection offers its due jobs oldest first, at most its `room`; a job's
# turn is its rank within its connection plus the jobs that connection already has in hand, and the claim takes
# the lowest turns. So a free slot goes to the least busy connection: one connection's backlog, slow calls or
# rate limit delays another's jobs by at most one call. A job of a connection this replica does not know is never
# claimed here (a replica that knows it takes it). One job at a time per customer, oldest first: a job is due only
# when no older job of its customer is pending or running, and no job of its customer is running (a push never
# overtakes a create, two replicas never call for one customer at once). Indexes: provider_jobs_connection_due_idx,
# provider_jobs_customer_active_idx.
_CLAIM_DUE: Final = (
    f"WITH {_CONNECTIONS}, picked AS (SELECT p.id, p.next_attempt_at, c.busy + row_number() OVER "
    "(PARTITION BY c.organization_id, c.code ORDER BY p.next_attempt_at, p.id) AS turn FROM conn AS c "
    "CROSS JOIN LATERAL (SELECT d.id, d.next_attempt_at FROM provider_jobs AS d "
    "WHERE d.organization_id = c.organization_id AND d.connection_code = c.code AND d.provider = c.provider "
    "AND d.status = 'pending' AND d.next_attempt_at <= now() "
    "AND NOT EXISTS (SELECT 1 FROM provider_jobs AS o WHERE o.customer_id = d.customer_id "
    "AND o.status IN ('pending', 'running') AND (o.id < d.id OR o.status = 'running')) "
    "ORDER BY d.next_attempt_at, d.id LIMIT least(c.room, $1) FOR UPDATE SKIP LOCKED) AS p), "
    "due AS (SELECT id FROM picked ORDER BY turn, next_attempt_at, id LIMIT $1) "
    "UPDATE provider_jobs AS j SET status = 'running', lease_until = now() + make_interval(secs => $2), "
    "attempts = j.attempts + 1, updated_at = now() FROM due WHERE j.id = due.id " + _RETURNING
)
# Leases that ran out: their runner died or hung, which counts as a worker fault. Run only every few seconds.
_CLAIM_EXPIRED: Final = (
    f"WITH {_CONNECTIONS}, due AS (SELECT d.id FROM provider_jobs AS d JOIN conn AS c "
    "ON d.organization_id = c.organization_id AND d.connection_code = c.code AND d.provider = c.provider "
    "WHERE d.status = 'running' AND d.lease_until < now() "
    "ORDER BY d.lease_until, d.id LIMIT $1 FOR UPDATE OF d SKIP LOCKED) "
    "UPDATE provider_jobs AS j SET lease_until = now() + make_interval(secs => $2), "
    "attempts = j.attempts + 1, worker_faults = j.worker_faults + 1, updated_at = now() "
    "FROM due WHERE j.id = due.id " + _RETURNING
)
_FENCE: Final = "id = $1 AND status = 'running' AND attempts = $2"
_FINISH: Final = (
    "UPDATE provider_jobs SET status = $3, lease_until = NULL, last_error = $4::jsonb, updated_at = now() "
    f"WHERE {_FENCE} RETURNING id"
)
# $5: the attempt searched after a dead end and missed; $6: it ended through a fault of the worker.
_RESCHEDULE: Final = (
    "UPDATE provider_jobs SET status = 'pending', lease_until = NULL, "
    "next_attempt_at = now() + make_interval(secs => $3), last_error = $4::jsonb, updated_at = now(), "
    "search_missed_since = CASE WHEN $5 THEN coalesce(search_missed_since, now()) ELSE search_missed_since END, "
    "search_misses = search_misses + $5::int, worker_faults = worker_faults + $6::int "
    f"WHERE {_FENCE} RETURNING id"
)
_CANCEL: Final = (
    "UPDATE provider_jobs SET status = 'cancelled', lease_until = NULL, updated_at = now(), "
    "last_error = coalesce(last_error, '{}'::jsonb) || jsonb_build_object('cancelled', true) "
    "WHERE id = ANY($1::bigint[]) AND status IN ('pending', 'running') RETURNING id"
)
_RELEASE: Final = (
    "UPDATE provider_jobs AS j SET status = 'pending', lease_until = NULL, next_attempt_at = now(), "
    "updated_at = now() FROM unnest($1::bigint[], $2::int4[]) AS r(id, attempts) "
    "WHERE j.id = r.id AND j.status = 'running' AND j.attempts = r.attempts"
)
_CUSTOMER: Final = f"SELECT {', '.join(COLUMNS)} FROM customers WHERE id = $1"
_CUSTOMER_FOR_UPDATE: Final = _CUSTOMER + " FOR UPDATE"
_SET_PROVIDER_CUSTOMER_ID: Final = "UPDATE customers SET provider_customer_id = $2, updated_at = $3 WHERE id = $1"
_INSERT_JOB: Final = (
    "INSERT INTO provider_jobs (organization_id, customer_id, message_id, kind, provider, connection_code, "
    "traceparent) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING"
)
_PRUNE: Final = (
    "DELETE FROM provider_jobs WHERE id = ANY(ARRAY(SELECT id FROM provider_jobs "
    "WHERE status IN ('done', 'skipped', 'failed', 'cancelled') AND updated_at < now() - $1::interval LIMIT $2))"
)


class FailureReport(Protocol):
    """What a final failure writes: the job's `last_error` record and the event's `provider_error` (a
    `worker.providers.base.ProviderError`; a protocol here, so the store does not depend on the adapters)."""

    def as_record(self) -> dict[str, Any]: ...

    def as_event(self) -> dict[str, Any]: ...


class LeaseLostError(Exception):
    """Another runner re-claimed the job (this one's lease ran out): nothing was written."""


def _job(row: asyncpg.Record) -> ClaimedJob:
    return ClaimedJob(
        id=row["id"],
        organization_id=row["organization_id"],
        customer_id=uuid.UUID(bytes=row["customer_id"].bytes),
        message_id=row["message_id"],
        kind=row["kind"],
        provider=row["provider"],
        connection_code=row["connection_code"],
        traceparent=row["traceparent"],
        attempts=row["attempts"],
        request=None if row["request"] is None else state_from_json(row["request"]),
        last_error_code=row["last_error_code"],
        search_missed_for=row["search_missed_for"],
        search_misses=row["search_misses"],
        worker_faults=row["worker_faults"],
    )


def _json(value: dict[str, Any] | None) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


async def claim_due(
    pool: Pool, limit: int, lease_seconds: float, connections: Sequence[ConnectionTurn]
) -> list[ClaimedJob]:
    """Up to `limit` due jobs of `connections`, fairly: round-robin by connection, least busy first."""
    return await _claim(pool, _CLAIM_DUE, limit, lease_seconds, connections)


async def claim_expired(
    pool: Pool, limit: int, lease_seconds: float, connections: Sequence[ConnectionTurn]
) -> list[ClaimedJob]:
    return await _claim(pool, _CLAIM_EXPIRED, limit, lease_seconds, connections)


async def _claim(
    pool: Pool, statement: str, limit: int, lease_seconds: float, connections: Sequence[ConnectionTurn]
) -> list[ClaimedJob]:
    if not connections or limit < 1:
        return []
    rows = await pool.fetch(
        statement,
        limit,
        lease_seconds,
        [turn.organization_id for turn in connections],
        [turn.code for turn in connections],
        [turn.provider for turn in connections],
        [turn.room for turn in connections],
        [turn.busy for turn in connections],
    )
    return sorted(map(_job, rows), key=lambda job: job.id)


async def load_customer(pool: Pool, customer_id: uuid.UUID) -> CustomerState | None:
    row = await pool.fetchrow(_CUSTOMER, customer_id)
    return None if row is None else state_from_row(row)


async def _fenced(conn: Conn, job: ClaimedJob, status: str, note: dict[str, Any] | None) -> None:
    if await conn.fetchval(_FINISH, job.id, job.attempts, status, _json(note)) is None:
        raise LeaseLostError


async def record_success(pool: Pool, job: ClaimedJob, result: JobResult, now: datetime) -> list[OutboxEvent]:
    """One transaction: lock the customer, finish the job (fenced), link the provider customer (create), write the
    events and, after a create that needs one, the follow-up `checkout` job. Returns the events written."""
    events: list[OutboxEvent] = []
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(_CUSTOMER_FOR_UPDATE, job.customer_id)
        state = None if row is None else state_from_row(row)
        # Re-checked under the lock: a command may have unlinked or relinked the customer during the call.
        reason = superseded_reason(job, state, result)
        if reason is None:
            await _fenced(conn, job, "done", None)
        else:
            await _fenced(conn, job, "skipped", {"skipped": reason})
        if reason is not None or state is None:
            if reason not in (None, "already_linked_same"):
                log.info("provider_result_superseded", job_id=job.id, kind=job.kind, reason=reason)
            return events
        if job.kind == "create" and result.provider_customer_id is not None:
            state = state._replace(provider_customer_id=result.provider_customer_id, updated_at=now)
            await conn.execute(_SET_PROVIDER_CUSTOMER_ID, state.id, result.provider_customer_id, now)
            events.append(provider_event(job, state, "customer.payment_provider_created", now))
            if result.checkout_url is not None:
                events.append(_checkout_event(job, state, result.checkout_url, now))
            elif needs_checkout_after_create(job.provider, state):
                await _follow_up(conn, job, "checkout")
            if job.request is not None and needs_push(job.provider, job.request, state):
                # Changed while the create was pending or in flight (merged commands included): pushed after it.
                await _follow_up(conn, job, "update")
        elif job.kind == "checkout" and result.checkout_url is not None:
            events.append(_checkout_event(job, state, result.checkout_url, now))
        await write_events(conn, events)
    return events


async def _follow_up(conn: Conn, job: ClaimedJob, kind: str) -> None:
    await conn.execute(
        _INSERT_JOB,
        job.organization_id,
        job.customer_id,
        job.message_id,
        kind,
        job.provider,
        job.connection_code,
        job.traceparent,
    )


def _checkout_event(job: ClaimedJob, state: CustomerState, url: str, now: datetime) -> OutboxEvent:
    return provider_event(job, state, "customer.checkout_url_generated", now, {"checkout_url": url})


async def record_failure(pool: Pool, job: ClaimedJob, error: FailureReport, now: datetime) -> list[OutboxEvent]:
    """Final failure: the job fails (fenced) and `customer.payment_provider_error` is written, in one transaction."""
    events: list[OutboxEvent] = []
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(_CUSTOMER_FOR_UPDATE, job.customer_id)
        await _fenced(conn, job, "failed", error.as_record())
        if row is not None:
            state = state_from_row(row)
            extra = {"provider_error": error.as_event()}
            events.append(provider_event(job, state, "customer.payment_provider_error", now, extra))
            await write_events(conn, events)
    return events


async def record_retry(
    pool: Pool,
    job: ClaimedJob,
    error: FailureReport,
    delay: float,
    *,
    search_missed: bool = False,
    worker_fault: bool = False,
) -> None:
    """The job waits `delay` seconds (fenced). `search_missed`: a search after a dead end found nothing;
    `worker_fault`: the attempt failed through a fault of the worker (counted against PROVIDER_MAX_ATTEMPTS)."""
    record = _json(error.as_record())
    if await pool.fetchval(_RESCHEDULE, job.id, job.attempts, delay, record, search_missed, worker_fault) is None:
        raise LeaseLostError


async def cancel_jobs(pool: Pool, job_ids: Sequence[int]) -> list[int]:
    """An operator's cancel: the jobs among `job_ids` still pending or running end as `cancelled`, without a call
    or an event (a running one's outcome is then not written: its fence fails). Returns the ids cancelled."""
    rows = await pool.fetch(_CANCEL, list(job_ids))
    return sorted(row["id"] for row in rows)


async def record_skip(pool: Pool, job: ClaimedJob, reason: str) -> None:
    async with pool.acquire() as conn:
        await _fenced(conn, job, "skipped", {"skipped": reason})


async def release(pool: Pool, jobs: Sequence[ClaimedJob]) -> None:
    """Give claimed jobs back (graceful stop): due now, attempts kept (a call may have gone out)."""
    if jobs:
        await pool.execute(_RELEASE, [job.id for job in jobs], [job.attempts for job in jobs])


async def prune_finished(pool: Pool, older_than: timedelta, *, chunk: int = 10_000) -> int:
    """Delete finished jobs (`done`, `skipped`, `failed`, `cancelled`) last changed before `older_than`; returns how
    many."""
    total = 0
    while True:
        deleted = int((await pool.execute(_PRUNE, older_than, chunk)).split()[-1])
        total += deleted
        if deleted < chunk:
            return total

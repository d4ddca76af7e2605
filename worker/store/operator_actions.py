"""What the table-only operator jobs do to a chunk of rows, each chunk in the caller's transaction: parked events
back to the outbox, provider jobs retried or cancelled. Each statement returns the ids it acted on; the rest of the
chunk had changed meanwhile (republished, finished) and is reported as skipped."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from worker.store.db import Conn

# Back to the outbox's end, in parked order: a running worker's relay publishes them (or parks them again).
_REPUBLISH: Final = (
    "WITH chosen AS (DELETE FROM parked_events WHERE id = ANY($1::bigint[]) "
    "RETURNING id, event_id, event_key, event_type, traceparent, payload, schema_id), "
    "moved AS (INSERT INTO outbox (event_id, event_key, event_type, traceparent, payload, schema_id) "
    "SELECT event_id, event_key, event_type, traceparent, payload, schema_id FROM chosen ORDER BY id) "
    "SELECT id FROM chosen"
)
# A failed (or cancelled) job is due again now, its worker faults forgiven (they are what PROVIDER_MAX_ATTEMPTS
# bounds); `attempts` stays, being the claims' fencing token. A pending one is only made due now. Running jobs are
# left alone: a call may be in flight (an expired lease is the runner's to reclaim).
_RETRY: Final = (
    "UPDATE provider_jobs SET status = 'pending', next_attempt_at = now(), lease_until = NULL, worker_faults = 0, "
    "updated_at = now(), last_error = coalesce(last_error, '{}'::jsonb) || "
    "jsonb_build_object('retried_by_operator_job', $2::bigint) "
    "WHERE id = ANY($1::bigint[]) AND status IN ('failed', 'cancelled', 'pending') RETURNING id"
)
# As `worker.store.jobs.cancel_jobs` (the provider runner's own rule): pending and running jobs end as `cancelled`,
# without a call or an event; a running one's outcome is then not written (its fence fails).
_CANCEL: Final = (
    "UPDATE provider_jobs SET status = 'cancelled', lease_until = NULL, updated_at = now(), "
    "last_error = coalesce(last_error, '{}'::jsonb) || jsonb_build_object('cancelled', true, 'operator_job', "
    "$2::bigint) WHERE id = ANY($1::bigint[]) AND status IN ('pending', 'running') RETURNING id"
)
STATEMENTS: Final = {"parked_republish": _REPUBLISH, "provider_jobs_retry": _RETRY, "provider_jobs_cancel": _CANCEL}


async def act_on_rows(conn: Conn, kind: str, ids: Sequence[int], job_id: int) -> set[int]:
    """Apply `kind` to the rows `ids`; the ids it acted on."""
    statement = STATEMENTS[kind]
    args = (list(ids),) if kind == "parked_republish" else (list(ids), job_id)
    return {row[0] for row in await conn.fetch(statement, *args)}


async def mark_replayed(conn: Conn, ids: Sequence[int], job_id: int) -> None:
    """Dead letters whose republish the broker acknowledged (one that already came back from this job stays
    'returned': see `worker.store.console`)."""
    await conn.execute(
        "UPDATE dead_letters SET replayed_at = now(), replay_state = CASE WHEN replay_state = 'returned' AND "
        "replay_job_id = $2 THEN 'returned' ELSE 'replayed' END, replay_job_id = $2 WHERE id = ANY($1::bigint[])",
        list(ids),
        job_id,
    )

"""Operators' bulk jobs (issue 20): DLQ replay, parked events republish, provider jobs retry and cancel. One
implementation for the console and the command line.

A job is a row of `operator_jobs` with its selection frozen at creation (explicit ids, or a filter bounded by the
table's highest id then). A `JobRunner` claims it with a lease, acts on its rows in id order, chunk by chunk at the
job's rate, records a result per row with the job's counts (fenced by the lease), renews the lease and reads
`cancel_requested` between chunks. A runner that dies leaves a lease that runs out; another runner (or the same
after a restart) claims the job and goes on after the last item recorded. A dependency outage (the broker, the
database) is waited out with backoff and shown in `last_error`, never recorded as an item's failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Final, Literal, Protocol

import asyncpg
import structlog

from worker.observability import safe_message
from worker.ops.replay_job import ReplayChunks
from worker.outages import is_outage
from worker.settings import KafkaSettings
from worker.store import operator_jobs as sql
from worker.store.jobs import Pool
from worker.store.operator_actions import act_on_rows

log = structlog.get_logger("worker.ops.jobs")

JobKind = Literal["dlq_replay", "parked_republish", "provider_jobs_retry", "provider_jobs_cancel"]
DEFAULT_RATE: Final = 200.0
LEASE_SECONDS: Final = 30.0
_MAX_CHUNK: Final = 500
_BACKOFF_MAX: Final = 5.0


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    reason: str | None = None
    organization_id: str | None = None
    code: str | None = None
    failed_from: datetime | None = None
    failed_to: datetime | None = None
    partition: int | None = None
    from_offset: int | None = None
    to_offset: int | None = None


@dataclass(frozen=True, slots=True)
class ParkedFilter:
    reason: str | None = None
    event_type: str | None = None
    organization_id: str | None = None


@dataclass(frozen=True, slots=True)
class ProviderJobFilter:
    state: str | None = None
    connection: str | None = None
    error_code: str | None = None
    organization_id: str | None = None


@dataclass(frozen=True, slots=True)
class Ids:
    """Explicit rows: `dead_letters.id`, `parked_events.id` or `provider_jobs.id` by the job's kind."""

    ids: tuple[int, ...]


Selection = Ids | DeadLetterFilter | ParkedFilter | ProviderJobFilter


@dataclass(frozen=True, slots=True)
class JobStatus:
    id: int
    kind: str
    state: str
    total: int
    done: int
    failed: int
    skipped: int
    returned: int
    cancel_requested: bool
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    last_error: str | None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "cancelled", "failed")


def filter_of(selection: Selection) -> dict[str, Any]:
    """The filter as stored (JSON): explicit ids store an empty filter."""
    if isinstance(selection, Ids):
        return {}
    values = {name: value for name, value in asdict(selection).items() if value is not None}
    return {name: value.isoformat() if isinstance(value, datetime) else value for name, value in values.items()}


def _ids(selection: Selection) -> tuple[int, ...] | None:
    return selection.ids if isinstance(selection, Ids) else None


async def dry_run(pool: Pool, kind: JobKind, selection: Selection) -> int:
    """How many rows a job of `kind` would act on now."""
    return await sql.count_matching(pool, kind, filter_of(selection), _ids(selection))


async def start_job(
    pool: Pool, kind: JobKind, selection: Selection, *, actor: str, rate_per_second: float = DEFAULT_RATE
) -> int:
    """Freeze the selection and write the job (pending: a runner takes it); its id. Audited as `started`."""
    if rate_per_second <= 0:
        raise ValueError("rate_per_second must be positive")
    async with pool.acquire() as conn, conn.transaction():
        job_id, total = await sql.create_job(
            conn,
            kind,
            filter_of(selection),
            _ids(selection),
            actor=actor,
            rate_per_second=rate_per_second,
        )
    log.info("operator_job_created", job_id=job_id, kind=kind, total=total, actor=actor)
    return job_id


async def cancel_job(pool: Pool, job_id: int, *, actor: str) -> bool:
    """Ask a job to stop; False if there is no such job or it had already finished."""
    job = await sql.fetch_job(pool, job_id)
    if job is None or job["state"] in ("done", "cancelled", "failed"):
        return False
    await sql.request_cancel(pool, job_id)
    return True


async def job_status(pool: Pool | asyncpg.Connection[asyncpg.Record], job_id: int) -> JobStatus | None:
    row = await sql.fetch_job(pool, job_id)
    return None if row is None else status_of(row)


def status_of(row: asyncpg.Record) -> JobStatus:
    return JobStatus(
        id=row["id"],
        kind=row["kind"],
        state=row["state"],
        total=row["total"],
        done=row["done_count"],
        failed=row["failed_count"],
        skipped=row["skipped_count"],
        returned=row["returned_count"],
        cancel_requested=row["cancel_requested"],
        created_by=row["created_by"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        last_error=row["last_error"],
    )


async def record_audit(
    pool: Pool,
    *,
    actor: str,
    role: str,
    action: str,
    filter: Mapping[str, Any],
    count: int | None,
    outcome: Literal["done", "refused", "failed", "started"],
    remote_addr: str | None = None,
    job_id: int | None = None,
) -> None:
    """One audit row: who did what, on which filter, how many, and how it ended. Never payloads."""
    await sql.insert_audit(
        pool,
        actor=actor,
        role=role,
        action=action,
        filters=dict(filter),
        count=count,
        outcome=outcome,
        remote_addr=remote_addr,
        job_id=job_id,
    )


class ChunkResult(Protocol):
    """What a kind does with a chunk of ids: a result per id, recorded in the given transaction."""

    async def __call__(
        self, pool: Pool, job: asyncpg.Record, ids: list[int], owner: str
    ) -> bool: ...  # False: the lease was lost


async def _table_chunk(pool: Pool, job: asyncpg.Record, ids: list[int], owner: str) -> bool:
    async with pool.acquire() as conn, conn.transaction():
        acted = await act_on_rows(conn, job["kind"], ids, job["id"])
        results = [(item, "sent" if item in acted else "skipped", None if item in acted else "changed") for item in ids]
        return await sql.record_items(conn, job["id"], owner, results)


def runner_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class JobRunner:
    """Claims pending jobs (and jobs whose lease ran out) and runs them, one at a time. `run` is the supervised
    loop of the console; `run_job` runs one job to its end (the command line)."""

    def __init__(
        self,
        pool: Pool,
        settings: KafkaSettings | None,
        *,
        lease_seconds: float = LEASE_SECONDS,
        poll_seconds: float = 1.0,
        owner: str | None = None,
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._lease = lease_seconds
        self._poll = poll_seconds
        self.owner = owner or runner_owner()
        self._stopping = asyncio.Event()

    async def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                job = await sql.claim_job(self._pool, self.owner, self._lease)
                if job is not None:
                    await self._run_claimed(job)
                    continue
            except Exception as exc:  # noqa: BLE001 - the loop outlives any one failure; it is logged
                log.warning("operator_job_loop_failed", error_type=type(exc).__name__, error=safe_message(exc))
            await self._sleep(self._poll)

    async def run_job(self, job_id: int) -> JobStatus | None:
        """Claim `job_id` and run it to its end (or until `stop`); if another runner holds it, follow it."""
        while not self._stopping.is_set():
            job = await sql.claim_job(self._pool, self.owner, self._lease, job_id)
            if job is not None:
                await self._run_claimed(job)
            status = await job_status(self._pool, job_id)
            if status is None or status.finished:
                return status
            await self._sleep(self._poll)
        return await job_status(self._pool, job_id)

    async def _run_claimed(self, job: asyncpg.Record) -> None:
        """Run a claimed job to a final state; a failure that is not an outage ends it as `failed` (it would fail
        the same way for every runner that claimed it again)."""
        log.info("operator_job_running", job_id=job["id"], kind=job["kind"], total=job["total"])
        error: str | None = None
        replay = ReplayChunks(self._settings) if job["kind"] == "dlq_replay" and self._settings else None
        try:
            if job["kind"] == "dlq_replay" and replay is None:
                raise ValueError("a DLQ replay job needs the Kafka settings")
            state = await self._chunks(job, replay if replay is not None else _table_chunk)
        except Exception as exc:  # noqa: BLE001 - recorded on the job (no payload in it), then logged
            if is_outage(exc):
                state = None  # the database went away while stopping: the lease runs out, the job resumes
            else:
                state, error = "failed", f"{type(exc).__name__}: {safe_message(exc)}"
                log.error("operator_job_failed", job_id=job["id"], kind=job["kind"], error_type=type(exc).__name__)
        finally:
            if replay is not None:
                await replay.close()
        if state is None:
            # Stopped (the console or the command line ends): resumable at once by the next runner.
            await _quietly(sql.release_lease(self._pool, job["id"], self.owner))
            return
        await sql.finish_job(self._pool, job["id"], self.owner, state, error)
        log.info("operator_job_finished", job_id=job["id"], kind=job["kind"], state=state)

    async def _chunks(self, job: asyncpg.Record, act: ChunkResult) -> str | None:
        """Run until done or cancelled (the final state), or None when stopped or the lease was lost."""
        rate = float(job["rate_per_second"])
        size = max(1, min(_MAX_CHUNK, int(rate)))
        failures = 0
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                cancel = await sql.renew_lease(self._pool, job["id"], self.owner, self._lease)
                if cancel is None:
                    return None  # another runner has it now
                if cancel:
                    return "cancelled"
                ids = await sql.next_items(self._pool, job, size)
                if not ids:
                    return "done"
                if not await act(self._pool, job, ids, self.owner):
                    return None
                failures = 0
            except Exception as exc:
                if not is_outage(exc):
                    raise
                failures += 1
                note = f"waiting for {type(exc).__name__} (attempt {failures})"
                log.warning("operator_job_waiting", job_id=job["id"], error_type=type(exc).__name__)
                await _quietly(sql.note_error(self._pool, job["id"], note))
                await self._sleep(min(0.2 * 2**failures, _BACKOFF_MAX))
                continue
            # The rate: a chunk of n items takes at least n / rate seconds.
            await self._sleep(len(ids) / rate - (time.monotonic() - started))
        # Stopping: a cancel asked meanwhile (the command line's Ctrl-C) ends the job here.
        return "cancelled" if await sql.renew_lease(self._pool, job["id"], self.owner, self._lease) else None

    async def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=seconds)


async def _quietly(work: Any) -> None:
    try:
        await work
    except Exception as exc:  # noqa: BLE001 - a note during an outage may fail too
        log.debug("operator_job_note_failed", error_type=type(exc).__name__)

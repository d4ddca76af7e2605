"""The command line's side of the operators' jobs (issue 20): dry run, or create the job, audit it, run it in this
process with progress, audit how it ended. The console creates the same jobs; its runner runs them.

Ctrl-C / SIGTERM cancels the job (nothing resumes it behind the operator's back) and exits 130.
"""

from __future__ import annotations

import asyncio
import getpass
import socket
from collections.abc import Sequence
from typing import Any, Final

import asyncpg
import orjson
from pydantic import SecretStr

from worker.ops.jobs import (
    Ids,
    JobKind,
    JobRunner,
    JobStatus,
    Selection,
    cancel_job,
    dry_run,
    filter_of,
    job_status,
    record_audit,
    start_job,
)
from worker.ops.progress import ProgressReporter
from worker.settings import KafkaSettings
from worker.store.db import create_pool
from worker.store.operator_jobs import where

EXIT_FAILED: Final = 1
EXIT_INTERRUPTED: Final = 130
_POLL: Final = 0.5
_PROVIDER_JOB_COLUMNS: Final = (
    "id, organization_id, customer_id, kind, provider, connection_code, status, attempts, next_attempt_at, "
    "lease_until, last_error->>'error_code' AS error_code, created_at, updated_at"
)


def cli_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


def audit_filter(selection: Selection) -> dict[str, Any]:
    return {"ids": list(selection.ids)} if isinstance(selection, Ids) else filter_of(selection)


async def run_from_cli(
    dsn: SecretStr | str,
    kind: JobKind,
    selection: Selection,
    *,
    verb: str,
    noun: str,
    stop: asyncio.Event,
    kafka: KafkaSettings | None = None,
    dry: bool = False,
    rate_per_second: float = 1000.0,
) -> int:
    """Dry run (print the count) or run a job to its end; prints a summary line; the exit status."""
    pool = await create_pool(dsn, size=3)
    try:
        if dry:
            print(f"dry run: would {verb} {await dry_run(pool, kind, selection)} {noun}", flush=True)
            return 0
        status = await run_job_here(pool, kind, selection, kafka=kafka, stop=stop, rate_per_second=rate_per_second)
        print(summary(status, verb, noun), flush=True)
        if status.state not in ("done", "cancelled", "failed"):
            return EXIT_INTERRUPTED
        return 0 if status.state == "done" and not status.failed else EXIT_FAILED
    finally:
        await pool.close()


async def run_job_here(
    pool: asyncpg.Pool[asyncpg.Record],
    kind: JobKind,
    selection: Selection,
    *,
    kafka: KafkaSettings | None,
    stop: asyncio.Event,
    rate_per_second: float,
) -> JobStatus:
    """Create, audit and run one job in this process; cancelled if `stop` is set meanwhile."""
    actor = cli_actor()
    job_id = await start_job(pool, kind, selection, actor=actor, rate_per_second=rate_per_second)
    first = await job_status(pool, job_id)
    assert first is not None
    await record_audit(
        pool,
        actor=actor,
        role="cli",
        action=kind,
        filter=audit_filter(selection),
        count=first.total,
        outcome="started",
        job_id=job_id,
    )
    runner = JobRunner(pool, kafka)
    running = asyncio.create_task(runner.run_job(job_id))
    with ProgressReporter(f"{kind} job {job_id}", first.total) as progress:
        while not running.done():
            await asyncio.wait(
                [running, asyncio.ensure_future(stop.wait())], timeout=_POLL, return_when="FIRST_COMPLETED"
            )
            now = await job_status(pool, job_id)
            if now is not None:
                progress.advance(now.done + now.failed + now.skipped - progress.done)
            if stop.is_set() and not running.done():
                await cancel_job(pool, job_id, actor=actor)
                await runner.stop()
        await running
    status = await job_status(pool, job_id)
    assert status is not None
    await record_audit(
        pool,
        actor=actor,
        role="cli",
        action=kind,
        filter=audit_filter(selection),
        count=status.done,
        outcome="done" if status.state == "done" else "failed",
        job_id=job_id,
    )
    return status


def summary(status: JobStatus, verb: str, noun: str) -> str:
    text = (
        f"job {status.id} ({status.kind}) {status.state}: {verb} {status.done} {noun} of {status.total}, "
        f"failed {status.failed}, skipped {status.skipped}"
    )
    if status.returned:
        text += f", came back to the DLQ {status.returned}"
    if status.last_error:
        text += f"; last error: {status.last_error}"
    return text


async def list_provider_jobs(
    dsn: SecretStr | str, filters: dict[str, Any], ids: Sequence[int] | None, limit: int
) -> list[str]:
    """Provider jobs, oldest first, one JSON object per line: states, connection, error code; never the request
    (it holds the customer's data) nor the provider's error text."""
    clause, args = where("provider_jobs_retry", filters, {"ids": list(ids)} if ids else None)
    clause = clause.replace("status IN ('failed', 'cancelled', 'pending')", "true", 1)  # listing shows every state
    pool = await create_pool(dsn, size=1)
    try:
        rows = await pool.fetch(
            f"SELECT {_PROVIDER_JOB_COLUMNS} FROM provider_jobs WHERE {clause} "
            f"ORDER BY created_at, id LIMIT ${len(args) + 1}",
            *args,
            limit,
        )
    finally:
        await pool.close()
    return [orjson.dumps(dict(row.items()), default=str).decode() for row in rows]

"""What the worker records for the operator console (issue 20): dead letters, answer and rejection counts per minute,
and a heartbeat per process. Metadata only: codes, field paths, organization ids, sizes, hashes; never a value.

Counts are keyed by the writing process (`worker_id`), so each process upserts only rows of its own in its batch's
transaction: concurrent batches of different processes never wait on each other's row locks. Readers sum.
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Final, NamedTuple

import orjson

from worker.contract.decode import Command, Rejection
from worker.domain.fold import Outcome, Rejected
from worker.store.db import Conn
from worker.store.jobs import Pool


class DeadLetterRow(NamedTuple):
    """One `dead_letters` row: where the copy is, where it came from, why, and what is known without the value."""

    dlq_topic: str
    dlq_partition: int
    dlq_offset: int
    source_topic: str
    source_partition: int
    source_offset: int
    reason: str
    codes: Sequence[str]
    paths: Sequence[str]
    organization_id: str | None
    message_id: str | None
    value_size: int
    value_sha256: bytes | None
    truncated: bool
    returned_from_job_id: int | None
    returned_from_id: int | None
    failed_at: datetime | None = None


# Idempotent on the DLQ coordinates (a retried recording writes nothing twice). A record that a replay job sent and
# that came back marks its original row and the job's item as returned, and counts as dead-lettered, in the same
# statement. It can come back before the job has recorded its send (the worker is quick): the job's own writes
# (`mark_replayed`, `record_items`, `finish_job`) then see this row and keep or set 'returned' themselves.
_DEAD_LETTERS: Final = (
    "WITH x AS (SELECT * FROM unnest($1::text[], $2::int4[], $3::int8[], $4::text[], $5::int4[], $6::int8[], "
    "$7::text[], $8::jsonb[], $9::jsonb[], $10::text[], $11::text[], $12::int4[], $13::bytea[], $14::bool[], "
    "$15::int8[], $16::int8[], $19::timestamptz[]) AS x(dt, dp, doff, st, sp, so, reason, codes, paths, org, mid, "
    "size, sha, trunc, job, orig, fa)), "
    "ins AS (INSERT INTO dead_letters (dlq_topic, dlq_partition, dlq_offset, source_topic, source_partition, "
    "source_offset, reason, codes, paths, organization_id, message_id, value_size, value_sha256, truncated, "
    "returned_from_job_id, returned_from_id, failed_at) "
    "SELECT dt, dp, doff, st, sp, so, reason, ARRAY(SELECT jsonb_array_elements_text(codes)), "
    "ARRAY(SELECT jsonb_array_elements_text(paths)), org, mid, size, sha, trunc, job, orig, coalesce(fa, now()) "
    "FROM x ORDER BY dp, doff "
    "ON CONFLICT (dlq_topic, dlq_partition, dlq_offset) DO NOTHING RETURNING returned_from_job_id, returned_from_id), "
    "orig AS (UPDATE dead_letters AS d SET replay_state = 'returned', replay_job_id = ins.returned_from_job_id "
    "FROM ins WHERE d.id = ins.returned_from_id AND ins.returned_from_job_id IS NOT NULL RETURNING d.id), "
    "items AS (UPDATE operator_job_items AS i SET result = 'returned', at = now() FROM ins "
    "WHERE i.job_id = ins.returned_from_job_id AND i.item_id = ins.returned_from_id AND i.result = 'sent' "
    "RETURNING i.job_id), "
    "jobs AS (UPDATE operator_jobs AS j SET returned_count = j.returned_count + r.n "
    "FROM (SELECT job_id, count(*) AS n FROM items GROUP BY job_id) AS r WHERE j.id = r.job_id RETURNING j.id), "
    "counted AS (INSERT INTO answer_counts (minute, outcome, worker_id, count) "
    "SELECT date_trunc('minute', now()), 'dead_lettered', $17, count(*) FROM ins HAVING $18 AND count(*) > 0 "
    "ON CONFLICT (minute, outcome, worker_id) DO UPDATE SET count = answer_counts.count + excluded.count) "
    "SELECT (SELECT count(*) FROM ins)"
)
_COUNTS: Final = (
    "WITH r AS (INSERT INTO rejection_counts (organization_id, code, path, minute, worker_id, count) "
    "SELECT o, c, p, $5, $6, n FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[]) AS x(o, c, p, n) "
    "ORDER BY o, c, p ON CONFLICT (organization_id, code, path, minute, worker_id) "
    "DO UPDATE SET count = rejection_counts.count + excluded.count) "
    "INSERT INTO answer_counts (minute, outcome, worker_id, count) "
    "SELECT $5, o, $6, n FROM unnest($7::text[], $8::int8[]) AS x(o, n) ORDER BY o "
    "ON CONFLICT (minute, outcome, worker_id) DO UPDATE SET count = answer_counts.count + excluded.count"
)
# `started_at` is the first heartbeat's time (a few seconds after the process started), kept by later ones.
HEARTBEAT: Final = (
    "INSERT INTO workers_seen (worker_id, host, pid, started_at, last_seen_at, partitions, version) "
    "VALUES ($1, $2, $3, now(), now(), $4, $5) ON CONFLICT (worker_id) DO UPDATE SET last_seen_at = now(), "
    "partitions = excluded.partitions, version = excluded.version"
)
PRUNE_CONSOLE: Final = (
    "WITH a AS (DELETE FROM answer_counts WHERE minute < now() - $1::interval), "
    "r AS (DELETE FROM rejection_counts WHERE minute < now() - $1::interval) "
    "DELETE FROM workers_seen WHERE last_seen_at < now() - $2::interval"
)
COUNTS_KEPT: Final = timedelta(days=14)
WORKERS_KEPT: Final = timedelta(days=1)

_process: dict[int, str] = {}


def worker_id() -> str:
    """This process's id in the console's tables: host and pid (a process spawned by `processes` has its own)."""
    pid = os.getpid()
    if pid not in _process:
        _process[pid] = f"{socket.gethostname()}:{pid}"
    return _process[pid]


async def record_dead_letters(pool: Pool | Conn, rows: Sequence[DeadLetterRow], *, count: bool = True) -> int:
    """Insert the `dead_letters` rows of DLQ copies the broker acknowledged; returns how many were new. `count`:
    also count them as answered (`dead_lettered`) this minute (not for rows of old records, indexed later)."""
    if not rows:
        return 0
    columns = list(zip(*rows, strict=True))
    codes = [orjson.dumps(list(value)).decode() for value in columns[7]]
    paths = [orjson.dumps(list(value)).decode() for value in columns[8]]
    new: int = await pool.fetchval(
        _DEAD_LETTERS, *columns[:7], codes, paths, *columns[9:16], worker_id(), count, columns[16]
    )
    return new


async def ids_at(pool: Pool | Conn, topic: str, coordinates: Sequence[tuple[int, int]]) -> dict[tuple[int, int], int]:
    """The `dead_letters` ids of DLQ records, by (partition, offset)."""
    if not coordinates:
        return {}
    rows = await pool.fetch(
        "SELECT d.id, d.dlq_partition, d.dlq_offset FROM dead_letters AS d JOIN unnest($2::int4[], $3::int8[]) "
        "AS c(p, o) ON d.dlq_partition = c.p AND d.dlq_offset = c.o WHERE d.dlq_topic = $1",
        topic,
        [partition for partition, _ in coordinates],
        [offset for _, offset in coordinates],
    )
    return {(row["dlq_partition"], row["dlq_offset"]): row["id"] for row in rows}


async def job_items(pool: Pool | Conn, job_id: int) -> dict[int, tuple[str, str | None]]:
    rows = await pool.fetch("SELECT item_id, result, detail FROM operator_job_items WHERE job_id = $1", job_id)
    return {row["item_id"]: (row["result"], row["detail"]) for row in rows}


async def returned_from(pool: Pool | Conn, job_id: int) -> list[Any]:
    """The rows of records a replay job sent that came back to the DLQ."""
    return list(
        await pool.fetch(
            "SELECT id, dlq_partition, dlq_offset, reason FROM dead_letters WHERE returned_from_job_id = $1 "
            "ORDER BY id",
            job_id,
        )
    )


async def count_answers(
    conn: Conn,
    fresh: Iterable[Command | Rejection],
    outcomes: Iterable[Outcome],
    outcome_counts: dict[str, int],
    now: datetime,
) -> None:
    """Upsert, in the batch's transaction, the answers per outcome and the rejections per (organization, code,
    path) of this minute. `fresh` and `outcomes` are the batch's answers; only their errors' codes and paths are
    kept."""
    rejections: Counter[tuple[str, str, str]] = Counter()
    for answer in fresh:
        if isinstance(answer, Rejection):
            _count_errors(rejections, answer.organization_id, answer.errors)
    for outcome in outcomes:
        if isinstance(outcome, Rejected):
            _count_errors(rejections, outcome.command.organization_id, outcome.errors)
    answered = sorted((name, count) for name, count in outcome_counts.items() if count)
    if not answered and not rejections:
        return
    keys = sorted(rejections)
    await conn.execute(
        _COUNTS,
        [key[0] for key in keys],
        [key[1] for key in keys],
        [key[2] for key in keys],
        [rejections[key] for key in keys],
        now.replace(second=0, microsecond=0),
        worker_id(),
        [name for name, _ in answered],
        [count for _, count in answered],
    )


def _count_errors(into: Counter[tuple[str, str, str]], organization_id: str, errors: dict[str, list[str]]) -> None:
    for path, codes in errors.items():
        for code in codes:
            into[organization_id, code, path] += 1


def worker_version() -> str:
    try:
        return version("customer-worker")
    except PackageNotFoundError:
        return "unknown"

"""`customer-worker dlq replay`: republish dead-lettered records to the commands topic (SPEC §7 and §11), as a DLQ
replay job of `worker.ops.jobs` (the console's code): audited, a result per record, marked replayed only once the
broker acknowledged the republish.

It replays what was in the DLQ when it started, never what it or the worker put there afterwards, so it always
ends. The boundary is taken before anything is sent, per partition, by reading: end offsets are only a lower
bound on Tansu (it reports the last batch's base offset + 1), exact on Kafka. From that reported end the DLQ is read
until the broker has nothing more to give, or until records stamped after the replay started (written by someone
else meanwhile); the offset after the last record seen is the boundary. Then the DLQ is read from its beginning up
to the boundary (no consumer group, nothing committed): matching records are sent with their key, value and headers
minus the `dlq-*` ones. Every record read gets its `dead_letters` row if it has none yet (a record written before
the worker recorded them, or by another tool), and the matching rows are the job's explicit selection. Safe to
repeat: the worker answers a command it already applied as a duplicate.

After sending, `dead_letters` is watched for a few seconds: a replayed record that comes straight back (the cause is
not fixed) carries the job's `x-replay-job` header into its DLQ copy, is reported, and never replayed by this job.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from worker.ops.dlq_rows import row_of_dlq_record
from worker.ops.job_cli import run_job_here
from worker.ops.jobs import Ids
from worker.ops.progress import ProgressReporter
from worker.ops.topics import start_consumer
from worker.settings import KafkaSettings
from worker.store.console import ids_at, job_items, record_dead_letters, returned_from
from worker.store.jobs import Pool
from worker.transport.options import client_options

DEFAULT_WATCH_SECONDS = 5.0
_POLL_MS = 1000
_IDLE_MS = 1500
_STUCK_SECONDS = 60.0
_CHUNK = 500
_WATCH_POLL = 0.5


@dataclass(frozen=True, slots=True)
class ReplayFilter:
    reason: str | None = None
    organization_id: str | None = None
    from_offset: int | None = None
    to_offset: int | None = None
    partition: int | None = None

    def filtered_by(self, record: Any) -> str | None:
        """The filter that leaves `record` out (`partition`, `offset`, `reason`, `organization`), or None."""
        if self.partition is not None and record.partition != self.partition:
            return "partition"
        if self.from_offset is not None and record.offset < self.from_offset:
            return "offset"
        if self.to_offset is not None and record.offset > self.to_offset:
            return "offset"
        if self.reason is not None and reason_of(record) != self.reason:
            return "reason"
        if self.organization_id is not None and _organization_of(record.value) != self.organization_id:
            return "organization"
        return None

    def matches(self, record: Any) -> bool:
        return self.filtered_by(record) is None


@dataclass(frozen=True, slots=True)
class Returned:
    """A replayed record that came straight back to the DLQ: where it was, where it is now, and why."""

    partition: int
    offset: int
    reason: str


@dataclass(slots=True)
class ReplayStats:
    dry_run: bool = False
    read: int = 0
    replayed_by_reason: Counter[str] = field(default_factory=Counter)
    replayed_by_partition: Counter[int] = field(default_factory=Counter)
    filtered_by_reason: Counter[str] = field(default_factory=Counter)
    filtered_by: Counter[str] = field(default_factory=Counter)
    returned: list[Returned] = field(default_factory=list)
    boundary: dict[int, int] = field(default_factory=dict)
    not_replayed: Counter[str] = field(default_factory=Counter)
    job_id: int | None = None
    limit_reached: bool = False
    interrupted: bool = False
    stuck: str | None = None

    @property
    def replayed(self) -> int:
        return sum(self.replayed_by_reason.values())

    @property
    def filtered(self) -> int:
        return sum(self.filtered_by_reason.values())


def reason_of(record: Any) -> str:
    for key, value in record.headers:
        if key == "dlq-reason":
            return bytes(value).decode(errors="replace")
    return "(none)"


def _organization_of(value: bytes | None) -> str | None:
    if not value:
        return None
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    organization_id = document.get("organization_id") if isinstance(document, dict) else None
    return organization_id if isinstance(organization_id, str) else None


async def replay(
    settings: KafkaSettings,
    selection: ReplayFilter,
    *,
    pool: Pool | None,
    dry_run: bool = False,
    limit: int | None = None,
    watch_seconds: float = DEFAULT_WATCH_SECONDS,
    stop: asyncio.Event | None = None,
    rate_per_second: float = 1000.0,
) -> ReplayStats:
    """Replay (or, with `dry_run`, count) the matching records the DLQ held at start; `stop` ends it early. A dry
    run needs no database (`pool` may be None): it writes nothing."""
    if pool is None and not dry_run:
        raise ValueError("a replay needs the database (its job and the dead letters' rows)")
    stop = stop or asyncio.Event()
    stats = ReplayStats(dry_run=dry_run)
    chosen = await _index(settings, selection, pool, stats, limit=limit, stop=stop)
    if stop.is_set():
        stats.interrupted = True
        return stats
    if dry_run or not chosen or pool is None:
        for _, reason, partition in chosen:
            stats.replayed_by_reason[reason] += 1
            stats.replayed_by_partition[partition] += 1
        return stats
    status = await run_job_here(
        pool,
        "dlq_replay",
        Ids(tuple(item for item, _, _ in chosen)),
        kafka=settings,
        stop=stop,
        rate_per_second=rate_per_second,
    )
    stats.job_id = status.id
    results = await job_items(pool, status.id)
    for item, reason, partition in chosen:
        result, detail = results.get(item, ("skipped", "not reached"))
        if result in ("sent", "returned"):
            stats.replayed_by_reason[reason] += 1
            stats.replayed_by_partition[partition] += 1
        else:
            stats.not_replayed[detail or result] += 1
    if stats.replayed and watch_seconds > 0 and not stop.is_set():
        print(f"dlq replay: watching {settings.dlq_topic} {watch_seconds:g} s for returns", file=sys.stderr, flush=True)
        await _watch_returns(pool, status.id, stats, watch_seconds, stop)
    stats.interrupted = stop.is_set()
    return stats


async def _index(
    settings: KafkaSettings,
    selection: ReplayFilter,
    pool: Pool | None,
    stats: ReplayStats,
    *,
    limit: int | None,
    stop: asyncio.Event,
) -> list[tuple[int, str, int]]:
    """Read the DLQ up to its end at start; every record gets its `dead_letters` row; the matching ones, in DLQ
    order, as (row id, reason, partition)."""
    run = _Replay(settings, selection, stats, stop, None if stats.dry_run else pool)
    started_ms = int(time.time() * 1000)
    consumer = run.consumer
    await start_consumer(consumer)
    try:
        partitions = [
            TopicPartition(settings.dlq_topic, p)
            for p in sorted(consumer.partitions_for_topic(settings.dlq_topic) or ())
            if selection.partition in (None, p)  # read only the partition asked for
        ]
        if not partitions:
            return []
        consumer.assign(partitions)
        ends = await run.snapshot_ends(partitions, started_ms)
        stats.boundary = {tp.partition: end for tp, end in ends.items()}
        starts = await consumer.beginning_offsets(partitions)
        to_offset = selection.to_offset
        bounds = {tp: ends[tp] if to_offset is None else min(ends[tp], to_offset + 1) for tp in ends}
        first = {tp: max(starts[tp], selection.from_offset or 0) for tp in partitions}
        total = sum(max(bounds[tp] - first[tp], 0) for tp in partitions)
        with ProgressReporter("dlq replay: reading the DLQ", total) as progress:
            await run.read_and_index(first, bounds, limit, progress)
    finally:
        await consumer.stop()
    return run.chosen


async def _watch_returns(
    pool: Pool, job_id: int, stats: ReplayStats, watch_seconds: float, stop: asyncio.Event
) -> None:
    """Wait `watch_seconds`, or until every replayed record came back, for the rows of records that returned."""
    deadline = time.monotonic() + watch_seconds
    while not stop.is_set():
        rows = await returned_from(pool, job_id)
        if len(rows) >= stats.replayed or time.monotonic() >= deadline:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=min(_WATCH_POLL, max(deadline - time.monotonic(), 0.01)))
    stats.returned = [
        Returned(r["dlq_partition"], r["dlq_offset"], r["reason"]) for r in await returned_from(pool, job_id)
    ]


class _Replay:
    """One run's reading of the DLQ: its consumer, the rows it indexed and what it chose."""

    def __init__(
        self,
        settings: KafkaSettings,
        selection: ReplayFilter,
        stats: ReplayStats,
        stop: asyncio.Event,
        pool: Pool | None,
    ):
        # Without a pool (a dry run) nothing is written: the matching records are only counted.
        self.settings = settings
        self.selection = selection
        self.stats = stats
        self.stop = stop
        self.pool = pool
        self.chosen: list[tuple[int, str, int]] = []
        self.consumer = AIOKafkaConsumer(
            **client_options(settings), enable_auto_commit=False, group_id=None, auto_offset_reset="earliest"
        )

    async def snapshot_ends(self, partitions: list[TopicPartition], started_ms: int) -> dict[TopicPartition, int]:
        """Per partition, the offset after the last record the DLQ held at start, found by reading (see the
        module's doc)."""
        consumer = self.consumer
        reported = await consumer.end_offsets(partitions)
        ends = dict(reported)
        for tp in partitions:
            # One before the reported end: on Tansu that is the last batch's base offset, where a fetch must start.
            consumer.seek(tp, max(reported[tp] - 1, 0))
        frozen: set[TopicPartition] = set()
        while not self.stop.is_set() and len(frozen) < len(partitions):
            batches = await consumer.getmany(timeout_ms=_IDLE_MS, max_records=_CHUNK)
            if not batches:
                break
            for tp, records in batches.items():
                for record in records:
                    if record.timestamp is not None and record.timestamp > started_ms:
                        frozen.add(tp)  # written after we started: the boundary is before it
                        consumer.pause(tp)
                        break
                    ends[tp] = max(ends[tp], record.offset + 1)
        consumer.resume(*partitions)
        return ends

    async def read_and_index(
        self,
        first: dict[TopicPartition, int],
        bounds: dict[TopicPartition, int],
        limit: int | None,
        progress: ProgressReporter,
    ) -> None:
        consumer, stats = self.consumer, self.stats
        active = {tp for tp in bounds if bounds[tp] > first[tp]}
        for tp in bounds:
            if tp in active:
                consumer.seek(tp, first[tp])
            else:
                consumer.pause(tp)
        idle_since = time.monotonic()
        while active and not self.stop.is_set() and not stats.limit_reached:
            batches = await consumer.getmany(*active, timeout_ms=_POLL_MS, max_records=_CHUNK)
            read: list[Any] = []
            matched: list[tuple[int, int, str]] = []
            for tp, records in batches.items():
                for record in records:
                    if record.offset >= bounds[tp] or stats.limit_reached:
                        break
                    stats.read += 1
                    progress.advance()
                    reason = reason_of(record)
                    left_out_by = self.selection.filtered_by(record)
                    if left_out_by is not None:
                        stats.filtered_by_reason[reason] += 1
                        stats.filtered_by[left_out_by] += 1
                    elif limit is not None and len(self.chosen) + len(matched) >= limit:
                        stats.limit_reached = True
                        stats.read -= 1  # seen, not handled
                        break
                    else:
                        matched.append((record.partition, record.offset, reason))
                    read.append(record)
            await self._record(read, matched)
            for tp in list(active):
                if await consumer.position(tp) >= bounds[tp]:
                    active.discard(tp)
                    consumer.pause(tp)
            if batches:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > _STUCK_SECONDS:
                behind = [f"{tp.partition} at {await consumer.position(tp)} of {bounds[tp]}" for tp in active]
                # Deleted by retention meanwhile, or a broker fault: stop rather than wait forever.
                stats.stuck = f"nothing returned for {_STUCK_SECONDS:g} s below the end at start ({', '.join(behind)})"
                return

    async def _record(self, read: list[Any], matched: list[tuple[int, int, str]]) -> None:
        if self.pool is None:
            self.chosen += [(0, reason, partition) for partition, _, reason in matched]
            return
        if not read:
            return
        topic = self.settings.dlq_topic
        await record_dead_letters(self.pool, [row_of_dlq_record(topic, record) for record in read], count=False)
        ids = await ids_at(self.pool, topic, [(partition, offset) for partition, offset, _ in matched])
        self.chosen += [(ids[partition, offset], reason, partition) for partition, offset, reason in matched]


def format_summary(stats: ReplayStats, settings: KafkaSettings) -> str:
    """The end-of-run report: what was read, replayed (or would be, in a dry run), filtered out, and what came back."""
    verb = "would replay" if stats.dry_run else "replayed"
    lines = [
        f"dlq replay{' (dry run: nothing sent)' if stats.dry_run else ''}: {settings.dlq_topic} -> "
        f"{settings.commands_topic}",
        "  DLQ end at start: " + (", ".join(f"partition {p}: {o}" for p, o in sorted(stats.boundary.items())) or "-"),
        f"  read {stats.read}, {verb} {stats.replayed}, filtered out {stats.filtered}",
    ]
    reasons = sorted(set(stats.replayed_by_reason) | set(stats.filtered_by_reason))
    if reasons:
        lines.append(f"  {'reason':<20} {verb:>13} {'filtered':>9}")
        lines += [f"  {r:<20} {stats.replayed_by_reason[r]:>13} {stats.filtered_by_reason[r]:>9}" for r in reasons]
    if stats.replayed_by_partition:
        parts = ", ".join(f"{p}: {n}" for p, n in sorted(stats.replayed_by_partition.items()))
        lines.append(f"  {verb} by DLQ partition: {parts}")
    if stats.filtered_by:
        lines.append("  filtered by: " + ", ".join(f"{k} {n}" for k, n in sorted(stats.filtered_by.items())))
    if stats.not_replayed:
        why = ", ".join(f"{n} {detail}" for detail, n in sorted(stats.not_replayed.items()))
        lines.append(f"  not replayed: {why}")
    if stats.job_id is not None:
        lines.append(f"  job {stats.job_id} (customer-worker console shows its result per record)")
    if stats.returned:
        where = ", ".join(f"{r.partition}:{r.offset} ({r.reason})" for r in stats.returned)
        lines.append(f"  came straight back to the DLQ, not replayed again: {len(stats.returned)} at {where}")
    if stats.limit_reached:
        lines.append("  stopped at --limit")
    if stats.interrupted:
        lines.append("  interrupted: the records above were handled, the rest was not")
    if stats.stuck:
        lines.append(f"  stopped early: {stats.stuck}")
    return "\n".join(lines)

"""`customer-worker dlq replay`: republish dead-lettered records to the commands topic (SPEC §7 and §11).

It replays what was in the DLQ when it started, never what it or the worker put there afterwards, so it always
ends. The boundary is taken before anything is sent, per partition, by reading: end offsets are only a lower
bound on Tansu (it reports the last batch's base offset + 1), exact on Kafka. From that reported end the DLQ is read
until the broker has nothing more to give, or until records stamped after the replay started (written by someone
else meanwhile); the offset after the last record seen is the boundary. Then the DLQ is read from its beginning up
to the boundary (no consumer group, nothing committed): matching records are sent with their key, value and headers
minus the `dlq-*` ones. Safe to repeat: the worker answers a command it already applied as a duplicate.

After sending, the DLQ past the boundary is watched for a few seconds: a replayed record that comes straight back
(the cause is not fixed) is reported, and never replayed again by this run.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from worker.ops.progress import ProgressReporter
from worker.ops.topics import start_consumer
from worker.settings import KafkaSettings
from worker.transport.options import client_options
from worker.transport.producers import DLQ_HEADERS, KafkaProducer, Message

DEFAULT_WATCH_SECONDS = 5.0
_POLL_MS = 1000
_IDLE_MS = 1500
_STUCK_SECONDS = 60.0
_CHUNK = 500


@dataclass(frozen=True, slots=True)
class ReplayFilter:
    reason: str | None = None
    organization_id: str | None = None
    from_offset: int | None = None
    to_offset: int | None = None
    partition: int | None = None

    def skipped_by(self, record: Any) -> str | None:
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
        return self.skipped_by(record) is None


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
    skipped_by_reason: Counter[str] = field(default_factory=Counter)
    skipped_by_filter: Counter[str] = field(default_factory=Counter)
    returned: list[Returned] = field(default_factory=list)
    boundary: dict[int, int] = field(default_factory=dict)
    limit_reached: bool = False
    interrupted: bool = False
    stuck: str | None = None

    @property
    def replayed(self) -> int:
        return sum(self.replayed_by_reason.values())

    @property
    def skipped(self) -> int:
        return sum(self.skipped_by_reason.values())


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


def _fingerprint(key: bytes | None, value: bytes | None) -> bytes:
    digest = hashlib.sha256()
    for part in (key, value):
        digest.update(b"\x00" if part is None else b"\x01%d:" % len(part) + part)
    return digest.digest()


async def replay(
    settings: KafkaSettings,
    selection: ReplayFilter,
    *,
    dry_run: bool = False,
    limit: int | None = None,
    watch_seconds: float = DEFAULT_WATCH_SECONDS,
    stop: asyncio.Event | None = None,
) -> ReplayStats:
    """Replay (or, with `dry_run`, count) the matching records the DLQ held at start; `stop` ends it early."""
    run = _Replay(settings, selection, ReplayStats(dry_run=dry_run), stop or asyncio.Event())
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
            return run.stats
        consumer.assign(partitions)
        ends = await run.snapshot_ends(partitions, started_ms)
        run.stats.boundary = {tp.partition: end for tp, end in ends.items()}
        starts = await consumer.beginning_offsets(partitions)
        to_offset = selection.to_offset
        bounds = {tp: ends[tp] if to_offset is None else min(ends[tp], to_offset + 1) for tp in ends}
        first = {tp: max(starts[tp], selection.from_offset or 0) for tp in partitions}
        total = sum(max(bounds[tp] - first[tp], 0) for tp in partitions)
        with ProgressReporter("dlq replay", total) as progress:
            await run.read_and_send(first, bounds, limit, progress, send=not dry_run)
            if run.sent and watch_seconds > 0 and not run.stop.is_set():
                progress.note(f"dlq replay: watching {settings.dlq_topic} {watch_seconds:g} s for returns")
                await run.watch_returns(ends, watch_seconds)
        run.stats.interrupted = run.stop.is_set()
    finally:
        await run.producer.stop()
        await consumer.stop()
    return run.stats


class _Replay:
    """One run: its consumer and producer, what it sent (fingerprints) and what it counted."""

    def __init__(self, settings: KafkaSettings, selection: ReplayFilter, stats: ReplayStats, stop: asyncio.Event):
        self.settings = settings
        self.selection = selection
        self.stats = stats
        self.stop = stop
        self.sent: Counter[bytes] = Counter()
        self.consumer = AIOKafkaConsumer(
            **client_options(settings), enable_auto_commit=False, group_id=None, auto_offset_reset="earliest"
        )
        self.producer = KafkaProducer(settings)  # started on the first send only

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

    async def read_and_send(
        self,
        first: dict[TopicPartition, int],
        bounds: dict[TopicPartition, int],
        limit: int | None,
        progress: ProgressReporter,
        *,
        send: bool,
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
            messages: list[Message] = []
            chosen: list[tuple[str, int]] = []
            for tp, records in batches.items():
                for record in records:
                    if record.offset >= bounds[tp] or stats.limit_reached:
                        break
                    stats.read += 1
                    progress.advance()
                    reason = reason_of(record)
                    skipped = self.selection.skipped_by(record)
                    if skipped is not None:
                        stats.skipped_by_reason[reason] += 1
                        stats.skipped_by_filter[skipped] += 1
                    elif limit is not None and stats.replayed + len(chosen) >= limit:
                        stats.limit_reached = True
                        stats.read -= 1  # seen, not handled
                    else:
                        headers = [(k, v) for k, v in record.headers if k not in DLQ_HEADERS]
                        messages.append((record.key, record.value, headers))
                        chosen.append((reason, tp.partition))
            if messages and send:
                await self.producer.send_all(self.settings.commands_topic, messages)
                self.sent.update(_fingerprint(key, value) for key, value, _ in messages)
            for reason, partition in chosen:
                stats.replayed_by_reason[reason] += 1
                stats.replayed_by_partition[partition] += 1
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

    async def watch_returns(self, ends: dict[TopicPartition, int], watch_seconds: float) -> None:
        """Read the DLQ past the boundary for `watch_seconds`, or until every replayed record came back."""
        consumer = self.consumer
        for tp, end in ends.items():
            consumer.resume(tp)
            consumer.seek(tp, end)
        waiting = Counter(self.sent)
        deadline = time.monotonic() + watch_seconds
        while waiting.total() and not self.stop.is_set() and (left := deadline - time.monotonic()) > 0:
            batches = await consumer.getmany(timeout_ms=int(min(left * 1000, _POLL_MS)), max_records=_CHUNK)
            for records in batches.values():
                for record in records:
                    source = bytes(dict(record.headers).get("dlq-source-topic", b"")).decode(errors="replace")
                    fingerprint = _fingerprint(record.key, record.value)
                    if waiting[fingerprint] > 0 and source == self.settings.commands_topic:
                        waiting[fingerprint] -= 1
                        self.stats.returned.append(Returned(record.partition, record.offset, reason_of(record)))


def format_summary(stats: ReplayStats, settings: KafkaSettings) -> str:
    """The end-of-run report: what was read, replayed (or would be, in a dry run), skipped, and what came back."""
    verb = "would replay" if stats.dry_run else "replayed"
    lines = [
        f"dlq replay{' (dry run: nothing sent)' if stats.dry_run else ''}: {settings.dlq_topic} -> "
        f"{settings.commands_topic}",
        "  DLQ end at start: " + (", ".join(f"partition {p}: {o}" for p, o in sorted(stats.boundary.items())) or "-"),
        f"  read {stats.read}, {verb} {stats.replayed}, skipped by filter {stats.skipped}",
    ]
    reasons = sorted(set(stats.replayed_by_reason) | set(stats.skipped_by_reason))
    if reasons:
        lines.append(f"  {'reason':<20} {verb:>13} {'skipped':>9}")
        lines += [f"  {r:<20} {stats.replayed_by_reason[r]:>13} {stats.skipped_by_reason[r]:>9}" for r in reasons]
    if stats.replayed_by_partition:
        parts = ", ".join(f"{p}: {n}" for p, n in sorted(stats.replayed_by_partition.items()))
        lines.append(f"  {verb} by DLQ partition: {parts}")
    if stats.skipped_by_filter:
        lines.append("  skipped by: " + ", ".join(f"{k} {n}" for k, n in sorted(stats.skipped_by_filter.items())))
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

"""Consumer lag per partition of the commands topic: the worker group's committed offsets against the end offsets,
read by a background loop so that no page waits for the broker, and a broker that is down shows as such.

The reading consumer names the worker's group but never subscribes, so it never joins the group (no rebalance).
On Tansu the end offsets are approximate (INFRA.md): the figure is for a person, nothing depends on it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Final

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from worker.settings import KafkaSettings
from worker.transport.options import client_options

log = structlog.get_logger(__name__)
_TIMEOUT: Final = 5.0


@dataclass(frozen=True, slots=True)
class PartitionLag:
    partition: int
    committed: int | None
    end: int

    @property
    def lag(self) -> int:
        return self.end - (self.committed or 0)


@dataclass(frozen=True, slots=True)
class LagSnapshot:
    partitions: tuple[PartitionLag, ...] = ()
    read_at: float | None = None  # monotonic time of the last successful read
    error: str | None = None  # the last failure's class name (never its text: it can carry addresses)

    @property
    def total(self) -> int:
        return sum(item.lag for item in self.partitions)


@dataclass(slots=True)
class LagMonitor:
    settings: KafkaSettings
    interval: float = 5.0
    snapshot: LagSnapshot = field(default_factory=LagSnapshot)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="console-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def age(self) -> float | None:
        return None if self.snapshot.read_at is None else time.monotonic() - self.snapshot.read_at

    async def _loop(self) -> None:
        """Supervised: any failure is kept as the snapshot's error and the next round tries again."""
        while True:
            try:
                partitions = await asyncio.wait_for(self.read(), _TIMEOUT * 2)
                self.snapshot = LagSnapshot(partitions, time.monotonic(), None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the loop outlives any failure; the page shows it
                self.snapshot = LagSnapshot(self.snapshot.partitions, self.snapshot.read_at, type(exc).__name__)
                log.warning("console_lag_unavailable", error=type(exc).__name__)
            await asyncio.sleep(self.interval)

    async def read(self) -> tuple[PartitionLag, ...]:
        consumer = AIOKafkaConsumer(
            **client_options(self.settings),
            group_id=self.settings.kafka_group_id,
            enable_auto_commit=False,
            request_timeout_ms=int(_TIMEOUT * 1000),
        )
        await consumer.start()
        try:
            numbers = consumer.partitions_for_topic(self.settings.commands_topic)
            if not numbers:
                await consumer._client.force_metadata_update()  # the public API has no refresh
                numbers = consumer.partitions_for_topic(self.settings.commands_topic) or set()
            tps = [TopicPartition(self.settings.commands_topic, number) for number in sorted(numbers)]
            ends = await consumer.end_offsets(tps) if tps else {}
            result = []
            for tp in tps:
                committed = await consumer.committed(tp)
                result.append(PartitionLag(tp.partition, committed, ends.get(tp, 0)))
            return tuple(result)
        finally:
            await consumer.stop()

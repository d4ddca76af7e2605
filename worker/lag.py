"""The lag collector: every CONSUMER_LAG_INTERVAL seconds, the end offset and the committed offset of each assigned
partition give `customer_worker_consumer_lag` and feed the consumer stall check of `/healthz` (`ConsumerProgress`).

A reading the broker cannot give (an outage, a rebalance under way) is skipped: no lag is invented, and an old
reading does not count as a stall. Anything else raises and is restarted by the supervisor (`worker.supervision`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from worker.observability.liveness import ConsumerProgress, Position
from worker.observability.metrics import Metrics

log = structlog.get_logger("worker.lag")


class LagCollector:
    def __init__(
        self,
        consumer: Callable[[], Any],
        metrics: Metrics,
        progress: ConsumerProgress,
        *,
        interval: float,
        outage: Callable[[], bool],
    ) -> None:
        """`consumer()`: the aiokafka consumer, or None before it exists; `outage()`: True while a dependency is
        known to be down."""
        self._consumer = consumer
        self._metrics = metrics
        self._progress = progress
        self._interval = interval
        self._outage = outage

    async def run(self) -> None:
        while True:
            await self.collect_once()
            await asyncio.sleep(self._interval)

    async def collect_once(self) -> None:
        kafka = self._consumer()
        if kafka is None:
            return
        assigned: list[TopicPartition] = sorted(kafka.assignment())
        try:
            positions = await asyncio.wait_for(self._read(kafka, assigned), timeout=max(self._interval * 2, 5.0))
        except (KafkaError, OSError, TimeoutError) as exc:
            log.debug("lag_unavailable", error_type=type(exc).__name__)
            return
        self._metrics.set_consumer_lags({partition: position.lag for partition, position in positions.items()})
        self._progress.observe(positions, outage=self._outage())
        self._metrics.consumer_stalled_seconds.set(self._progress.waiting_seconds())

    @staticmethod
    async def _read(kafka: Any, assigned: list[TopicPartition]) -> dict[int, Position]:
        if not assigned:
            return {}
        ends = await kafka.end_offsets(assigned)
        committed = await asyncio.gather(*(kafka.committed(partition) for partition in assigned))
        positions = {}
        for partition, offset in zip(assigned, committed, strict=True):
            positions[partition.partition] = Position(offset or 0, ends[partition])
        return positions

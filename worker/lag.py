"""The partitions this replica holds: readiness, the per-partition gauges, and the lag collector."""

from __future__ import annotations

import asyncio
from typing import Final, Protocol

import structlog

from worker.observability import Health, Metrics

log = structlog.get_logger("worker.app")

INTERVAL: Final = 5.0


class LagSource(Protocol):
    async def lags(self) -> dict[int, int]:
        """Records not yet committed, per assigned partition."""


class Partitions:
    def __init__(self, metrics: Metrics, health: Health) -> None:
        self._metrics = metrics
        self._health = health
        self._held: set[int] = set()

    def assigned(self, partitions: set[int]) -> None:
        """The consumer's assignment hook (after each revocation and each assignment)."""
        # Each rebalance logs this twice (revoked, then assigned): the adversarial suite counts them.
        log.info("partitions_assigned", partitions=sorted(partitions))
        for gone in self._held - partitions:
            self._metrics.forget_partition(gone)
        self._held = partitions
        self._health.partitions_assigned = bool(partitions)

    async def collect_lag(self, source: LagSource) -> None:
        """Sets the lag gauges every INTERVAL seconds, for as long as it runs."""
        while True:
            await self.lag_once(source)
            await asyncio.sleep(INTERVAL)

    async def lag_once(self, source: LagSource) -> None:
        try:
            lags = await source.lags()
        except Exception as exc:  # noqa: BLE001 - a metric must never stop the worker
            log.debug("lag_unavailable", error_type=type(exc).__name__)
            return
        for partition, lag in lags.items():
            self._metrics.set_consumer_lag(partition, lag)

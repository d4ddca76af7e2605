"""What the pipeline reports as it goes: one log line and the counters per batch, and the dependencies' state."""

from __future__ import annotations

from collections.abc import Mapping

import structlog

from worker.contract.codes import DlqReason
from worker.domain.fold import BatchSummary
from worker.observability.health import Health
from worker.observability.liveness import ConsumerProgress
from worker.observability.metrics import CommandOutcome, Metrics
from worker.outages import Dependency

log = structlog.get_logger("worker.app")


class BatchObserver:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def batch(self, records: int, seconds: float, summary: BatchSummary, dead_letters: Mapping[DlqReason, int]) -> None:
        metrics = self._metrics
        metrics.batch(records, seconds)
        outcomes: dict[CommandOutcome, int] = {
            "created": summary.created,
            "updated": summary.updated,
            "rejected": summary.rejected,
            "skipped": summary.skipped,
            "duplicate": summary.duplicates,
            "invalid_signature": summary.invalid_signature,
        }
        # One line per batch, not per record: what a person watching `dev` or a log wants to see.
        log.info(
            "batch_applied",
            records=records,
            ms=round(seconds * 1000),
            **{outcome: n for outcome, n in outcomes.items() if n},
            **{f"dlq_{reason.value}": n for reason, n in dead_letters.items() if n},
        )
        for outcome, count in outcomes.items():
            if count:
                metrics.command(outcome, count)
        for reason, count in dead_letters.items():
            metrics.command("dead_lettered", count)
            metrics.dead_lettered(reason, count)
        if summary.unknown_fields:
            metrics.unknown_fields_total.inc(summary.unknown_fields)


class DependencyWatch:
    """The `OutageHook` of the pipeline: readiness follows each dependency, every retry is counted, and the consumer
    progress check of `/healthz` learns of the outage (a consumer waiting one out is not stalled)."""

    def __init__(self, health: Health, metrics: Metrics, progress: ConsumerProgress | None = None) -> None:
        self._health = health
        self._metrics = metrics
        self._progress = progress

    def __call__(self, dependency: Dependency, available: bool) -> None:
        if dependency == "postgres":
            self._health.database_ok = available
        else:
            self._health.broker_ok = available
        if not available:
            self._metrics.dependency_retry(dependency)
            if self._progress is not None:
                self._progress.outage()

    def any_down(self) -> bool:
        """True while a dependency is known to be down."""
        return not (self._health.database_ok and self._health.broker_ok)

"""Metrics: a `Metrics` object owns its own ``CollectorRegistry``. Label values are closed sets (outcomes, reasons,
dependencies, providers, partition numbers); organization ids, external ids and personal data are never labels."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Final, Literal, get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from worker.contract.codes import DlqReason
from worker.contract.connections import ProviderName
from worker.observability.health import Health
from worker.observability.partition_lag import PartitionLag
from worker.outages import Dependency
from worker.providers.base import ProviderCallOutcome
from worker.store.connections import CONNECTION_STATES, ConnectionState

BackgroundLoop = Literal["relay", "provider_runner", "maintenance", "lag_collector"]
CommandOutcome = Literal["created", "updated", "rejected", "skipped", "duplicate", "dead_lettered", "invalid_signature"]

ParkReason = Literal["too_large", "invalid_record"]
SkipReason = Literal["dead_letter_refused"]
COMMAND_OUTCOMES: Final[tuple[CommandOutcome, ...]] = get_args(CommandOutcome)
PARK_REASONS: Final[tuple[ParkReason, ...]] = get_args(ParkReason)
SKIP_REASONS: Final[tuple[SkipReason, ...]] = get_args(SkipReason)
DLQ_REASONS: Final[tuple[DlqReason, ...]] = tuple(DlqReason)
DEPENDENCIES: Final[tuple[Dependency, ...]] = get_args(Dependency)
PROVIDERS: Final[tuple[ProviderName, ...]] = get_args(ProviderName)
PROVIDER_CALL_OUTCOMES: Final[tuple[ProviderCallOutcome, ...]] = get_args(ProviderCallOutcome)
BACKGROUND_LOOPS: Final[tuple[BackgroundLoop, ...]] = get_args(BackgroundLoop)

_NAMESPACE: Final = "customer_worker"
_CONNECTION_LABEL: Final = re.compile(r"[A-Za-z0-9_.:-]{1,100}~[0-9a-f]{8}")
#: Statuses of `customer_worker_provider_jobs`: the open jobs (finished ones are counted by the provider call counters).
PROVIDER_JOB_STATUSES: Final[tuple[str, ...]] = ("pending", "running")

# Every counter and histogram would also expose a `_created` timestamp series: noise for dashboards and alerts.
disable_created_metrics()  # type: ignore[no-untyped-call]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415 - only when metrics are built

    try:
        return version("customer-worker")
    except PackageNotFoundError:
        return "unknown"


_BATCH_SIZE_BUCKETS: Final = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
_LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_PROVIDER_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _check(value: str, allowed: Iterable[str], label: str) -> str:
    if value not in allowed:
        # The value is not echoed: a wrong label might be exactly the kind of data that must not leak.
        raise ValueError(f"not an allowed value for metric label {label!r}")
    return value


class Metrics:
    """Prometheus metrics of one worker, in their own registry (names prefixed ``customer_worker_``).

    Labels only take values from closed sets (`COMMAND_OUTCOMES`, `DLQ_REASONS`, `DEPENDENCIES`, `PROVIDERS`,
    `PROVIDER_CALL_OUTCOMES`, partition numbers): never organization ids, external ids or personal data. The helper
    methods check this; the metric attributes are public for ``.time()`` / ``.observe()`` and the like.

    ``consumer_lag`` is computed from the partitions' end offsets minus the committed position. Tansu does not keep
    end offsets the way Kafka does, so on Tansu the value is wrong (treat it as indicative only). It holds the
    partitions assigned now only, in multi-process mode too (`PartitionLag`).
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, process_metrics: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        if process_metrics:
            ProcessCollector(registry=self.registry)
        reg = self.registry
        ns = _NAMESPACE
        self.commands_total = Counter(
            "commands", "Commands answered, by outcome.", ["outcome"], namespace=ns, registry=reg
        )
        self.unknown_fields_total = Counter(
            "unknown_fields", "Unknown customer fields seen (ignored) in commands.", namespace=ns, registry=reg
        )
        self.batch_size = Histogram(
            "batch_size", "Records per consumed batch.", namespace=ns, registry=reg, buckets=_BATCH_SIZE_BUCKETS
        )
        self.processing_seconds = Histogram(
            "processing_seconds",
            "Time to process one batch, from receipt to offset commit.",
            namespace=ns,
            registry=reg,
            buckets=_LATENCY_BUCKETS,
        )
        self.consumer_lag = PartitionLag(f"{ns}_consumer_lag")
        reg.register(self.consumer_lag)
        self.consumer_stalled_seconds = Gauge(
            "consumer_stalled_seconds",
            "How long records have waited on an assigned partition with no offset committed, whatever the cause.",
            namespace=ns,
            registry=reg,
        )
        self.event_loop_stalls_total = Counter(
            "event_loop_stalls",
            "Times the event loop did not run for LIVENESS_EVENT_LOOP_STALL seconds or more.",
            namespace=ns,
            registry=reg,
        )
        self.background_loop_up = Gauge(
            "background_loop_up",
            "1 while the background loop runs, 0 while it waits to be restarted or is dead.",
            ["loop"],
            namespace=ns,
            registry=reg,
        )
        self.background_loop_restarts_total = Counter(
            "background_loop_restarts",
            "Restarts of a background loop after it raised or ended by itself.",
            ["loop"],
            namespace=ns,
            registry=reg,
        )
        self.outbox_backlog = Gauge("outbox_backlog", "Outbox events not yet published.", namespace=ns, registry=reg)
        self.outbox_oldest_age_seconds = Gauge(
            "outbox_oldest_age_seconds", "Age of the oldest unpublished outbox event.", namespace=ns, registry=reg
        )
        self.dlq_total = Counter(
            "dlq", "Records sent to the dead-letter topic, by reason.", ["reason"], namespace=ns, registry=reg
        )
        self.events_published_total = Counter(
            "events_published", "Result events published to the events topic.", namespace=ns, registry=reg
        )
        self.events_parked_total = Counter(
            "events_parked",
            "Outbox events the broker refused for good, moved to parked_events (reason too_large, invalid_record).",
            ["reason"],
            namespace=ns,
            registry=reg,
        )
        self.records_skipped_total = Counter(
            "records_skipped",
            "Records neither answered nor dead-lettered: even their headers-only DLQ stub was refused.",
            ["reason"],
            namespace=ns,
            registry=reg,
        )
        self.dependency_retries_total = Counter(
            "dependency_retries",
            "Retries caused by an unavailable dependency.",
            ["dependency"],
            namespace=ns,
            registry=reg,
        )
        self.provider_calls_total = Counter(
            "provider_calls",
            "Payment provider API calls, by provider and outcome.",
            ["provider", "outcome"],
            namespace=ns,
            registry=reg,
        )
        self.provider_call_seconds = Histogram(
            "provider_call_seconds",
            "Payment provider API call latency.",
            ["provider"],
            namespace=ns,
            registry=reg,
            buckets=_PROVIDER_BUCKETS,
        )
        self.build_info = Info("build", "Version of the running worker.", namespace=ns, registry=reg)
        self.build_info.info({"version": _version()})
        self.provider_jobs = Gauge(
            "provider_jobs",
            "Open provider jobs in the database, by status (database-wide: every replica reports the same value).",
            ["status"],
            namespace=ns,
            registry=reg,
        )
        for status in PROVIDER_JOB_STATUSES:
            self.provider_jobs.labels(status=status)
        self.provider_runner_up = Gauge(
            "provider_runner_up",
            "1 while the provider job runner is running, 0 when it has stopped.",
            namespace=ns,
            registry=reg,
        )
        self._init_provider_connections(ns, reg)
        # Known label values start at 0, so rates and absent-series alerts work from the first scrape.
        primed: tuple[tuple[Counter, str, tuple[str, ...]], ...] = (
            (self.commands_total, "outcome", COMMAND_OUTCOMES),
            (self.dlq_total, "reason", DLQ_REASONS),
            (self.dependency_retries_total, "dependency", DEPENDENCIES),
            (self.events_parked_total, "reason", PARK_REASONS),
            (self.records_skipped_total, "reason", SKIP_REASONS),
            (self.background_loop_restarts_total, "loop", BACKGROUND_LOOPS),
        )
        for counter, label, values in primed:
            for value in values:
                counter.labels(**{label: value})
        for provider in PROVIDERS:
            self.provider_call_seconds.labels(provider=provider)
            for call_outcome in PROVIDER_CALL_OUTCOMES:
                self.provider_calls_total.labels(provider=provider, outcome=call_outcome)

    # -- checked helpers -------------------------------------------------------------------------------------------

    def command(self, outcome: CommandOutcome, count: int = 1) -> None:
        self.commands_total.labels(outcome=_check(outcome, COMMAND_OUTCOMES, "outcome")).inc(count)

    def dead_lettered(self, reason: DlqReason, count: int = 1) -> None:
        self.dlq_total.labels(reason=_check(reason, DLQ_REASONS, "reason")).inc(count)

    def parked(self, reason: str, count: int = 1) -> None:
        self.events_parked_total.labels(reason=_check(reason, PARK_REASONS, "reason")).inc(count)

    def skipped(self, reason: SkipReason, count: int = 1) -> None:
        self.records_skipped_total.labels(reason=_check(reason, SKIP_REASONS, "reason")).inc(count)

    def dependency_retry(self, dependency: Dependency) -> None:
        self.dependency_retries_total.labels(dependency=_check(dependency, DEPENDENCIES, "dependency")).inc()

    def provider_call(self, provider: ProviderName, outcome: ProviderCallOutcome, seconds: float) -> None:
        checked = _check(provider, PROVIDERS, "provider")
        self.provider_calls_total.labels(
            provider=checked, outcome=_check(outcome, PROVIDER_CALL_OUTCOMES, "outcome")
        ).inc()
        self.provider_call_seconds.labels(provider=checked).observe(seconds)

    def provider_call_counted(self, provider: ProviderName, outcome: ProviderCallOutcome) -> None:
        """A call outcome counted, not timed (the call itself was already measured under another outcome)."""
        self.provider_calls_total.labels(
            provider=_check(provider, PROVIDERS, "provider"), outcome=_check(outcome, PROVIDER_CALL_OUTCOMES, "outcome")
        ).inc()

    def provider_runner_running(self, running: bool) -> None:
        self.provider_runner_up.set(1 if running else 0)

    def batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.processing_seconds.observe(seconds)

    def set_consumer_lag(self, partition: int, lag: int) -> None:
        self.consumer_lag.set(partition, lag)

    def set_consumer_lags(self, lags: Mapping[int, int]) -> None:
        """The lag of every partition assigned now; the others' series disappear."""
        self.consumer_lag.replace(lags)

    def forget_partition(self, partition: int) -> None:
        """Drop the lag series of a revoked partition."""
        self.consumer_lag.forget(partition)

    def background_loop(self, loop: str, up: bool, restarted: bool) -> None:
        """A background loop's state changed (`worker.supervision.StateHook`)."""
        name = _check(loop, BACKGROUND_LOOPS, "loop")
        self.background_loop_up.labels(loop=name).set(1 if up else 0)
        if restarted:
            self.background_loop_restarts_total.labels(loop=name).inc()

    def event_loop_stalled(self) -> None:
        self.event_loop_stalls_total.inc()

    def set_outbox(self, backlog: int, oldest_age_seconds: float) -> None:
        self.outbox_backlog.set(backlog)
        self.outbox_oldest_age_seconds.set(oldest_age_seconds)

    def set_provider_jobs(self, counts: Mapping[str, int]) -> None:
        """Open jobs by status, as just counted; a status with no row is 0."""
        for status in PROVIDER_JOB_STATUSES:
            self.provider_jobs.labels(status=status).set(counts.get(status, 0))

    # ---------------------------------------------------------------- provider connections (SPEC §9, 2026-12-06)
    # The `connection` label is `code~digest` (worker.providers.connections.metric_label): one per connection of
    # PROVIDERS_FILE, a closed set, without the organization id; the log line `provider_connection_state` pairs it
    # with the organization.

    def _init_provider_connections(self, ns: str, reg: CollectorRegistry) -> None:
        self.provider_connection_state = Gauge(
            "provider_connection_state",
            "1 for the connection's current state (working, credentials_refused, rate_limited), 0 for the others.",
            ["provider", "connection", "state"],
            namespace=ns,
            registry=reg,
        )
        self.provider_connection_oldest_job_seconds = Gauge(
            "provider_connection_oldest_job_seconds",
            "Age of the connection's oldest open (waiting or running) provider job; 0 when it has none.",
            ["provider", "connection"],
            namespace=ns,
            registry=reg,
        )
        self.provider_jobs_oldest_open_seconds = Gauge(
            "provider_jobs_oldest_open_seconds",
            "Age of the oldest open provider job of any connection, one no replica knows included (database-wide).",
            namespace=ns,
            registry=reg,
        )

    def provider_connection(
        self, provider: ProviderName, connection: str, state: ConnectionState, oldest_open_seconds: float
    ) -> None:
        checked = _check(provider, PROVIDERS, "provider")
        if not _CONNECTION_LABEL.fullmatch(connection):
            raise ValueError("connection must be a metric label from metric_label()")
        current = _check(state, CONNECTION_STATES, "state")
        for value in CONNECTION_STATES:
            self.provider_connection_state.labels(provider=checked, connection=connection, state=value).set(
                1 if value == current else 0
            )
        self.provider_connection_oldest_job_seconds.labels(provider=checked, connection=connection).set(
            max(oldest_open_seconds, 0.0)
        )

    def provider_jobs_oldest_open(self, seconds: float) -> None:
        self.provider_jobs_oldest_open_seconds.set(max(seconds, 0.0))

    @property
    def content_type(self) -> str:
        return CONTENT_TYPE_PLAIN_0_0_4

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format (version 0.0.4)."""
        return generate_latest(self.registry)


def export_readiness(metrics: Metrics, health: Health) -> None:
    """`customer_worker_ready` and `customer_worker_live`: 1 while /readyz (/healthz) would answer 200, else 0
    (read at scrape time), for dashboards and alerts."""
    Gauge(
        "ready", "1 when ready (database, broker, partitions), else 0.", namespace=_NAMESPACE, registry=metrics.registry
    ).set_function(lambda: 1.0 if health.ready else 0.0)
    Gauge(
        "live", "1 while /healthz answers 200, else 0.", namespace=_NAMESPACE, registry=metrics.registry
    ).set_function(lambda: 1.0 if health.live else 0.0)

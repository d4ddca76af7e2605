"""Composition root: builds every part from settings, starts them, and stops them within one `ShutdownBudget`.
Nothing else wires adapters; nothing here runs per batch."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from dataclasses import dataclass

import asyncpg
import structlog

from worker import shutdown
from worker.configuration import Configuration, load_configuration
from worker.consumer import CommandConsumer
from worker.errors import EXIT_OK, EXIT_PENDING_MIGRATIONS
from worker.lag import LagCollector, Partitions
from worker.maintenance import Maintenance
from worker.observability import BatchObserver, DependencyWatch, Health, HealthServer, Metrics, export_readiness
from worker.observability.liveness import ConsumerProgress, EventLoopWatchdog
from worker.providers.factory import AdapterFactory
from worker.providers.runner import ProviderJobRunner, runner_options
from worker.relay import OutboxRelay
from worker.runtime import seconds_since_process_start, tune_garbage_collector, tune_malloc
from worker.service import BatchService, Prepared
from worker.startup import Startup, start_http
from worker.store.db import create_pool
from worker.supervision import LoopSupervisor
from worker.transport.dead_letter_log import RecordedDeadLetters
from worker.transport.producers import KafkaProducer

__all__ = ["EXIT_OK", "EXIT_PENDING_MIGRATIONS", "Configuration", "Worker", "load_configuration"]

log = structlog.get_logger("worker.app")


@dataclass(frozen=True, slots=True)
class _Parts:
    consumer: CommandConsumer[Prepared]
    relay: OutboxRelay
    runner: ProviderJobRunner
    adapters: AdapterFactory
    maintenance: Maintenance
    lag: LagCollector


class Worker:
    def __init__(self, configuration: Configuration, *, metrics: Metrics | None = None) -> None:
        self._config = configuration
        settings = self._settings = configuration.settings
        self.metrics = metrics or Metrics()
        self.loops = LoopSupervisor(
            give_up_after=settings.liveness_loop_failing, on_change=self.metrics.background_loop
        )
        self.watchdog = EventLoopWatchdog(settings.liveness_event_loop_stall, on_stall=self.metrics.event_loop_stalled)
        # A reading older than three intervals says nothing: the collector could not read the offsets since.
        self.progress = ConsumerProgress(settings.liveness_consumer_stall, max_age=settings.consumer_lag_interval * 3)
        self.health = Health(loops=self.loops, event_loop=self.watchdog, consumer=self.progress)
        export_readiness(self.metrics, self.health)
        self._watch = DependencyWatch(self.health, self.metrics, self.progress)
        self._budget = shutdown.ShutdownBudget(settings.shutdown_timeout)
        self._stop = asyncio.Event()
        self._startup = Startup(settings, self.health, self._watch, self._stop)

    def request_stop(self) -> None:
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to time
            self._budget.start()
        self._stop.set()

    async def run(self, *, install_signal_handlers: bool = True) -> int:
        settings = self._settings
        started_at = time.monotonic()
        log.info("worker_starting", seconds_since_process_start=round(seconds_since_process_start(), 3))
        tune_garbage_collector()
        tune_malloc()
        if install_signal_handlers:
            for signum in (signal.SIGTERM, signal.SIGINT):
                asyncio.get_running_loop().add_signal_handler(signum, self.request_stop)
        http = HealthServer(self.health, self.metrics, host=settings.http_host, port=settings.http_port)
        await start_http(http, settings.http_port)
        pool = await create_pool(settings.database_url, size=settings.db_pool_size)
        producer = KafkaProducer(settings)
        self.watchdog.start()
        try:
            exit_code = await self._startup.ready(pool, producer)
            if exit_code is not None:
                return exit_code
            return await self._serve(pool, producer, started_at)
        finally:
            # Within what is left of the budget whatever the dependencies' state: a producer with sends pending to a
            # broker that is down, or a pool whose server is gone, would otherwise wait for their own timeouts.
            if not await self._budget.closing(producer.stop(), part=0.5):
                log.warning("producer_stop_abandoned", hint="unsent events are published from the outbox next time")
            if not await self._budget.closing(pool.close()):
                log.warning("pool_close_abandoned")
                pool.terminate()
            await http.stop()
            self.watchdog.stop()

    async def _serve(self, pool: asyncpg.Pool[asyncpg.Record], producer: KafkaProducer, started_at: float) -> int:
        prepared_at = time.monotonic()
        parts = self._build(pool, producer)
        if not await self._startup.until_or_stopped(parts.consumer.start, "kafka"):
            return EXIT_OK
        self.health.broker_ok = True
        loops = {
            "relay": self.loops.spawn("relay", parts.relay.run),
            "maintenance": self.loops.spawn("maintenance", parts.maintenance.run),
            "lag_collector": self.loops.spawn("lag_collector", parts.lag.run),
        }
        # Jobs exist only for configured connections: without any, there is nothing to poll for.
        if self._config.connections.all:
            loops["provider_runner"] = self.loops.spawn("provider_runner", parts.runner.run)
        # Where start-up went (the bench's cold-start breakdown reads it): connecting and checking both dependencies,
        # then joining the group, which the broker holds (Tansu: half KAFKA_SESSION_TIMEOUT_MS; Kafka: its
        # group.initial.rebalance.delay.ms for an empty group, or until the members of a stable group rejoin).
        log.info(
            "worker_started",
            topic=self._settings.commands_topic,
            group=self._settings.kafka_group_id,
            prepare_ms=round((prepared_at - started_at) * 1000),
            join_ms=round((time.monotonic() - prepared_at) * 1000),
        )
        await self._stop.wait()
        await self._stop_parts(parts, loops)
        return EXIT_OK

    def _build(self, pool: asyncpg.Pool[asyncpg.Record], producer: KafkaProducer) -> _Parts:
        settings, budget, metrics, connections = self._settings, self._budget, self.metrics, self._config.connections
        relay = OutboxRelay(
            pool=pool,
            sender=producer,
            topic=settings.events_topic,
            batch_size=settings.relay_batch_size,
            idle_interval=settings.relay_idle_interval,
            on_published=metrics.events_published_total.inc,
            on_parked=metrics.parked,
        )
        adapters = AdapterFactory(max_threads=settings.provider_concurrency)
        runner = ProviderJobRunner(
            pool,
            connections,
            adapters,
            metrics,
            **runner_options(settings),
            drain_timeout=budget.share(shutdown.PROVIDER_JOBS),
            on_events=relay.notify,
        )
        letters = RecordedDeadLetters(producer, settings.dlq_topic, pool, on_dropped=metrics.dead_letters_dropped)
        service = BatchService(
            pool=pool,
            decode_context=self._config.decode_context(),
            connections=connections,
            dead_letters=letters,
            poison_max_attempts=settings.poison_max_attempts,
            on_outage=self._watch,
            inline=runner if connections.all else None,
            inline_budget=settings.provider_sync_budget,
            observer=BatchObserver(metrics),
            on_events=relay.notify,
            on_jobs=runner.notify,
        )
        partitions = Partitions(metrics, self.health)
        consumer = CommandConsumer(
            settings,
            service,
            partitions.assigned,
            grace=budget.share(shutdown.BATCH_IN_FLIGHT),
            on_delivered=self.progress.delivered,
        )
        lag = LagCollector(
            consumer.client,
            metrics,
            self.progress,
            interval=settings.consumer_lag_interval,
            outage=self._watch.any_down,
        )
        maintenance = Maintenance(
            pool, metrics, self.health, self.progress, partitions.held, retention_days=settings.inbox_retention_days
        )
        return _Parts(consumer, relay, runner, adapters, maintenance, lag)

    async def _stop_parts(self, parts: _Parts, loops: dict[str, asyncio.Task[None]]) -> None:
        """In the order of `worker.shutdown`, each step ending at its mark."""
        budget = self._budget
        log.info("worker_stopping")
        self.loops.stopping()
        for upkeep in ("maintenance", "lag_collector"):
            loops[upkeep].cancel()
        await shutdown.within(parts.consumer.stop(), budget.until(shutdown.CONSUMER))
        parts.runner.stop()  # finishes the jobs in hand for up to its share, gives the rest back
        if "provider_runner" in loops:
            await shutdown.within(loops["provider_runner"], budget.until(shutdown.DRAIN))
        await shutdown.within(parts.adapters.aclose_all(), budget.until(shutdown.DRAIN))
        parts.relay.stop()
        await shutdown.within(loops["relay"], budget.until(shutdown.DRAIN))
        await parts.relay.drain(budget.deadline(shutdown.DRAIN))
        log.info("worker_stopped", events_published=parts.relay.stats.published)

"""Composition root: builds every part from settings, starts them, and stops them within one `ShutdownBudget`.
Nothing else wires adapters; nothing here runs per batch."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from dataclasses import dataclass
from datetime import timedelta

import asyncpg
import structlog

from worker import shutdown
from worker.configuration import Configuration, load_configuration
from worker.consumer import CommandConsumer
from worker.contract.decode import DecodeContext
from worker.errors import EXIT_OK, EXIT_PENDING_MIGRATIONS
from worker.lag import Partitions
from worker.maintenance import Maintenance
from worker.observability import BatchObserver, DependencyWatch, Health, HealthServer, Metrics, export_readiness
from worker.providers.factory import AdapterFactory
from worker.providers.runner import ProviderJobRunner, runner_options
from worker.relay import OutboxRelay
from worker.runtime import seconds_since_process_start, tune_garbage_collector, tune_malloc
from worker.service import BatchService, Prepared
from worker.startup import Startup, start_http
from worker.store.db import create_pool
from worker.transport.producers import DeadLetterProducer, KafkaProducer

__all__ = ["EXIT_OK", "EXIT_PENDING_MIGRATIONS", "Configuration", "Worker", "load_configuration"]

log = structlog.get_logger("worker.app")


@dataclass(frozen=True, slots=True)
class _Parts:
    consumer: CommandConsumer[Prepared]
    relay: OutboxRelay
    runner: ProviderJobRunner
    adapters: AdapterFactory
    partitions: Partitions
    maintenance: Maintenance


class Worker:
    def __init__(self, configuration: Configuration, *, metrics: Metrics | None = None) -> None:
        self._config = configuration
        self._settings = configuration.settings
        self.metrics = metrics or Metrics()
        self.health = Health()
        export_readiness(self.metrics, self.health)
        self._watch = DependencyWatch(self.health, self.metrics)
        self._budget = shutdown.ShutdownBudget(self._settings.shutdown_timeout)
        self._stop = asyncio.Event()
        self._startup = Startup(self._settings, self.health, self._watch, self._stop)

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

    async def _serve(self, pool: asyncpg.Pool[asyncpg.Record], producer: KafkaProducer, started_at: float) -> int:
        prepared_at = time.monotonic()
        parts = self._build(pool, producer)
        if not await self._startup.until_or_stopped(parts.consumer.start, "kafka"):
            return EXIT_OK
        self.health.broker_ok = True
        loops = [
            asyncio.create_task(parts.relay.run(), name="outbox-relay"),
            asyncio.create_task(parts.maintenance.run(), name="maintenance"),
            asyncio.create_task(parts.partitions.collect_lag(parts.consumer), name="consumer-lag"),
        ]
        # Jobs exist only for configured connections: without any, there is nothing to poll for.
        if self._config.connections.all:
            loops.append(asyncio.create_task(parts.runner.run(), name="provider-jobs"))
            loops[-1].add_done_callback(self._runner_ended)
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
        service = BatchService(
            pool=pool,
            decode_context=DecodeContext(
                signing_keys=self._config.signing_keys,
                connections=connections,
                max_clock_skew=timedelta(seconds=settings.max_clock_skew),
            ),
            connections=connections,
            dead_letters=DeadLetterProducer(producer, settings.dlq_topic, on_dropped=metrics.dead_letters_dropped),
            poison_max_attempts=settings.poison_max_attempts,
            on_outage=self._watch,
            inline=runner if connections.all else None,
            inline_budget=settings.provider_sync_budget,
            observer=BatchObserver(metrics),
            on_events=relay.notify,
            on_jobs=runner.notify,
        )
        partitions = Partitions(metrics, self.health)
        return _Parts(
            consumer=CommandConsumer(
                settings, service, partitions.assigned, grace=budget.share(shutdown.BATCH_IN_FLIGHT)
            ),
            relay=relay,
            runner=runner,
            adapters=adapters,
            partitions=partitions,
            maintenance=Maintenance(pool, metrics, self.health, retention_days=settings.inbox_retention_days),
        )

    async def _stop_parts(self, parts: _Parts, loops: list[asyncio.Task[None]]) -> None:
        """In the order of `worker.shutdown`, each step ending at its mark."""
        budget = self._budget
        log.info("worker_stopping")
        relay_loop, upkeep, runner_loop = loops[0], loops[1:3], loops[3:]
        for loop in upkeep:
            loop.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(parts.consumer.stop(), timeout=budget.until(shutdown.CONSUMER))
        parts.runner.stop()  # finishes the jobs in hand for up to its share, gives the rest back
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(asyncio.gather(*runner_loop), timeout=budget.until(shutdown.DRAIN))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(parts.adapters.aclose_all(), timeout=budget.until(shutdown.DRAIN))
        parts.relay.stop()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(relay_loop, timeout=budget.until(shutdown.DRAIN))
        await parts.relay.drain(budget.deadline(shutdown.DRAIN))
        log.info("worker_stopped", events_published=parts.relay.stats.published)

    def _runner_ended(self, task: asyncio.Task[None]) -> None:
        """The runner outlives every error; should it end anyway before shutdown, `/readyz` names it."""
        if self._stop.is_set():
            return
        self.health.provider_runner_ok = False
        error = None if task.cancelled() else task.exception()
        log.error("provider_runner_stopped", error_type=type(error).__name__ if error else None)

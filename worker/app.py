"""Composition root: builds every part from settings, starts them, and stops them within one `ShutdownBudget`.
Nothing else wires adapters; nothing here runs per batch."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import time
from datetime import timedelta

import asyncpg
import structlog

from worker import shutdown
from worker.configuration import Configuration, load_configuration
from worker.consumer import CommandConsumer
from worker.contract.decode import DecodeContext
from worker.errors import EXIT_OK, EXIT_PENDING_MIGRATIONS, ConfigurationError
from worker.lag import Partitions
from worker.maintenance import Maintenance
from worker.observability import BatchObserver, DependencyWatch, Health, HealthServer, Metrics, export_readiness
from worker.providers.factory import AdapterFactory
from worker.providers.runner import ProviderJobRunner
from worker.relay import OutboxRelay
from worker.runtime import seconds_since_process_start, tune_garbage_collector, tune_malloc
from worker.service import BatchService
from worker.startup import Startup
from worker.store.db import create_pool
from worker.transport.producers import DeadLetterProducer, KafkaProducer

__all__ = ["EXIT_OK", "EXIT_PENDING_MIGRATIONS", "Configuration", "Worker", "load_configuration"]

log = structlog.get_logger("worker.app")


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
        try:
            await http.start()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise ConfigurationError(
                f"HTTP_PORT: port {settings.http_port} is already in use (another worker or `customer-worker dev`?); "
                "set HTTP_PORT to a free port"
            ) from None
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
            try:
                await asyncio.wait_for(producer.stop(), timeout=self._budget.until_close(part=0.5))
            except TimeoutError:
                log.warning(
                    "producer_stop_abandoned", hint="unacknowledged sends are retried from the outbox next time"
                )
            try:
                await asyncio.wait_for(pool.close(), timeout=self._budget.until_close())
            except TimeoutError:
                log.warning("pool_close_abandoned")
                pool.terminate()
            await http.stop()

    async def _serve(self, pool: asyncpg.Pool[asyncpg.Record], producer: KafkaProducer, started_at: float) -> int:
        settings, budget, metrics, connections = self._settings, self._budget, self.metrics, self._config.connections
        prepared_at = time.monotonic()
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
            concurrency=settings.provider_concurrency,
            max_attempts=settings.provider_max_attempts,
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
        consumer = CommandConsumer(settings, service, partitions.assigned, grace=budget.share(shutdown.BATCH_IN_FLIGHT))
        if not await self._startup.until_or_stopped(consumer.start, "kafka"):
            return EXIT_OK
        self.health.broker_ok = True
        loops = [
            asyncio.create_task(relay.run(), name="outbox-relay"),
            asyncio.create_task(
                Maintenance(pool, metrics, self.health, retention_days=settings.inbox_retention_days).run(),
                name="maintenance",
            ),
            asyncio.create_task(partitions.collect_lag(consumer), name="consumer-lag"),
        ]
        # Jobs exist only for configured connections: without any, there is nothing to poll for.
        runner_task = asyncio.create_task(runner.run(), name="provider-jobs") if connections.all else None
        if runner_task is not None:
            runner_task.add_done_callback(self._runner_ended)
        # Where start-up went (the bench's cold-start breakdown reads it): connecting and checking both dependencies,
        # then joining the group, which the broker holds (Tansu: half KAFKA_SESSION_TIMEOUT_MS; Kafka: its
        # group.initial.rebalance.delay.ms for an empty group, or until the members of a stable group rejoin).
        log.info(
            "worker_started",
            topic=settings.commands_topic,
            group=settings.kafka_group_id,
            prepare_ms=round((prepared_at - started_at) * 1000),
            join_ms=round((time.monotonic() - prepared_at) * 1000),
        )
        await self._stop.wait()

        log.info("worker_stopping")
        for loop in loops[1:]:
            loop.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(consumer.stop(), timeout=budget.until(shutdown.CONSUMER))
        if runner_task is not None:
            runner.stop()  # finishes the jobs in hand for up to its share, gives the rest back
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(runner_task, timeout=budget.until(shutdown.DRAIN))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(adapters.aclose_all(), timeout=budget.until(shutdown.DRAIN))
        relay.stop()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(loops[0], timeout=budget.until(shutdown.DRAIN))
        await relay.drain(budget.deadline(shutdown.DRAIN))
        log.info("worker_stopped", events_published=relay.stats.published)
        return EXIT_OK

    def _runner_ended(self, task: asyncio.Task[None]) -> None:
        """The runner outlives every error; should it end anyway before shutdown, `/readyz` names it."""
        if self._stop.is_set():
            return
        self.health.provider_runner_ok = False
        error = None if task.cancelled() else task.exception()
        log.error("provider_runner_stopped", error_type=type(error).__name__ if error else None)

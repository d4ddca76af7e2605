"""Composition root: builds every part from settings and runs the worker. Nothing else wires adapters."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

import asyncpg
import structlog

from worker.contract.codes import DlqReason
from worker.contract.connections import Connection, ProviderRegistry, load_registry
from worker.contract.decode import DecodeContext
from worker.domain.customer import CustomerState
from worker.domain.jobs import InlineResult
from worker.errors import ConfigurationError
from worker.lag import LagCollector
from worker.observability import CommandOutcome, Health, HealthServer, Metrics, export_readiness
from worker.observability.liveness import ConsumerProgress, EventLoopWatchdog
from worker.outages import Dependency, rejected_setting
from worker.preflight import check_kafka_credentials
from worker.providers.factory import AdapterFactory
from worker.providers.runner import ProviderJobRunner, runner_options
from worker.relay import OutboxRelay
from worker.runtime import seconds_since_process_start, tune_garbage_collector, tune_malloc
from worker.security import SigningKeys, load_signing_keys, unsigned_provider_organizations
from worker.service import BatchReport, BatchService, RawRecord, until_done
from worker.settings import Settings
from worker.store import migrations
from worker.store.db import create_pool
from worker.store.maintenance import console_heartbeat, open_provider_jobs, outbox_backlog, prune_retained
from worker.supervision import LoopSupervisor
from worker.transport.consumer import CommandConsumer, Finish, start_broker
from worker.transport.dead_letter_log import RecordedDeadLetters
from worker.transport.producers import KafkaProducer

log = structlog.get_logger("worker.app")

EXIT_OK: Final = 0
EXIT_CONFIG: Final = 2
EXIT_PENDING_MIGRATIONS: Final = 3
_MAINTENANCE_INTERVAL: Final = 5.0
# Kept free at the end of SHUTDOWN_TIMEOUT for the HTTP server and the interpreter's own exit.
_EXIT_MARGIN: Final = 0.5


@dataclass(frozen=True, slots=True)
class Configuration:
    """What is read once at start: a bad file stops the worker before it connects to anything."""

    settings: Settings
    registry: ProviderRegistry
    signing_keys: SigningKeys


def load_configuration(settings: Settings) -> Configuration:
    configuration = Configuration(
        settings=settings,
        registry=load_registry(settings.providers_file),
        signing_keys=load_signing_keys(settings.signing_keys_file, require_signatures=settings.require_signatures),
    )
    unsigned = unsigned_provider_organizations(
        configuration.signing_keys, (c.organization_id for c in configuration.registry.connections)
    )
    if unsigned:
        log.warning(
            "provider_organizations_without_signing_keys",
            organizations=unsigned,
            hint="their commands are accepted unsigned; set SIGNING_KEYS_FILE keys or REQUIRE_SIGNATURES=true",
        )
    return configuration


class Worker:
    def __init__(self, configuration: Configuration, *, metrics: Metrics | None = None) -> None:
        self._config = configuration
        self._settings = configuration.settings
        self.metrics = metrics or Metrics()
        settings = self._settings
        self.loops = LoopSupervisor(
            give_up_after=settings.liveness_loop_failing, on_change=self.metrics.background_loop
        )
        self.watchdog = EventLoopWatchdog(settings.liveness_event_loop_stall, on_stall=self.metrics.event_loop_stalled)
        # A reading older than three intervals says nothing: the collector could not read the offsets since.
        self.progress = ConsumerProgress(settings.liveness_consumer_stall, max_age=settings.consumer_lag_interval * 3)
        self.health = Health(loops=self.loops, event_loop=self.watchdog, consumer=self.progress)
        export_readiness(self.metrics, self.health)
        self._stop = asyncio.Event()
        self._partitions: set[int] = set()
        self._stop_deadline: float | None = None
        self._started_at = time.monotonic()

    def request_stop(self) -> None:
        if self._stop_deadline is None:
            with contextlib.suppress(RuntimeError):
                self._stop_deadline = asyncio.get_running_loop().time() + self._settings.shutdown_timeout
        self._stop.set()

    async def run(self, *, install_signal_handlers: bool = True) -> int:
        settings = self._settings
        self._started_at = time.monotonic()
        log.info("worker_starting", seconds_since_process_start=round(seconds_since_process_start(), 3))
        tune_garbage_collector()
        tune_malloc()
        loop = asyncio.get_running_loop()
        if install_signal_handlers:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self.request_stop)
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
        self.watchdog.start()
        try:
            return await self._serve(pool, producer)
        finally:
            await self._close(pool, producer)
            await http.stop()
            self.watchdog.stop()

    async def _close(self, pool: asyncpg.Pool[asyncpg.Record], producer: KafkaProducer) -> None:
        """Within what is left of SHUTDOWN_TIMEOUT whatever the dependencies' state: a producer with sends pending
        to a broker that is down, or a pool whose server is gone, would otherwise wait for their own timeouts."""
        loop = asyncio.get_running_loop()
        deadline = self._stop_deadline or loop.time() + self._settings.shutdown_timeout
        end = deadline - _EXIT_MARGIN
        try:
            await asyncio.wait_for(producer.stop(), timeout=max((end - loop.time()) / 2, 0.05))
        except TimeoutError:
            log.warning("producer_stop_abandoned", hint="unacknowledged sends are retried from the outbox next time")
        try:
            await asyncio.wait_for(pool.close(), timeout=max(end - loop.time(), 0.05))
        except TimeoutError:
            log.warning("pool_close_abandoned")
            pool.terminate()

    async def _serve(self, pool: asyncpg.Pool[asyncpg.Record], producer: KafkaProducer) -> int:
        settings = self._settings
        exit_code = await self._prepare(pool, producer)
        if exit_code is not None:
            return exit_code
        prepared_at = time.monotonic()

        relay = OutboxRelay(
            pool=pool,
            sender=producer,
            topic=settings.events_topic,
            batch_size=settings.relay_batch_size,
            idle_interval=settings.relay_idle_interval,
            on_published=self._published,
            on_parked=self.metrics.parked,
        )
        registry = self._config.registry
        adapters = AdapterFactory(max_threads=settings.provider_concurrency)
        runner = ProviderJobRunner(
            pool,
            registry,
            adapters,
            self.metrics,
            **runner_options(settings),
            drain_timeout=settings.shutdown_timeout * 0.3,
            on_events=relay.notify,
        )

        async def inline(connection: Connection, customer: CustomerState, message_id: str) -> InlineResult:
            return await runner.create_inline(connection, customer, message_id, settings.provider_sync_budget)

        service = BatchService(
            pool=pool,
            decode_context=DecodeContext(
                signing_keys=self._config.signing_keys,
                registry=registry,
                max_clock_skew=timedelta(seconds=settings.max_clock_skew),
            ),
            registry=registry,
            dead_letters=RecordedDeadLetters(
                producer, settings.dlq_topic, pool, on_dropped=lambda n: self.metrics.skipped("dead_letter_refused", n)
            ),
            poison_max_attempts=settings.poison_max_attempts,
            on_outage=self._on_outage,
            inline=inline if registry.connections else None,
        )

        async def on_batch(records: Sequence[RawRecord]) -> Finish:
            started = time.perf_counter()
            # Records are in offset order per partition: the last one of each is its highest.
            self.progress.delivered({record.partition: record.offset for record in records})
            decoded = await service.decode(records)
            decoding = time.perf_counter() - started

            async def finish() -> None:
                started = time.perf_counter()
                report = await service.apply(decoded)
                relay.notify()
                if report.summary.enqueued_jobs:
                    runner.notify()
                self._record(report, decoding + time.perf_counter() - started)

            return finish

        consumer = CommandConsumer(settings, on_batch, self._on_assignment)
        if not await self._until_or_stopped(lambda: start_broker(consumer), "kafka"):
            return EXIT_OK
        self.health.broker_ok = True
        loops = self.loops
        relay_task = loops.spawn("relay", relay.run)
        # Jobs exist only for configured connections: without any, there is nothing to poll for.
        runner_task = loops.spawn("provider_runner", runner.run) if registry.connections else None
        maintenance = loops.spawn("maintenance", lambda: self._maintain(pool))
        lag = LagCollector(
            lambda: consumer.subscriber.consumer,
            self.metrics,
            self.progress,
            interval=settings.consumer_lag_interval,
            outage=lambda: not (self.health.database_ok and self.health.broker_ok),
        )
        lag_task = loops.spawn("lag_collector", lag.run)
        joined_at = time.monotonic()
        # Where start-up went (the bench's cold-start breakdown reads it): connecting and checking both dependencies,
        # then joining the group, which the broker holds (Tansu: half KAFKA_SESSION_TIMEOUT_MS; Kafka: its
        # group.initial.rebalance.delay.ms for an empty group, or until the members of a stable group rejoin).
        log.info(
            "worker_started",
            topic=settings.commands_topic,
            group=settings.kafka_group_id,
            prepare_ms=round((prepared_at - self._started_at) * 1000),
            join_ms=round((joined_at - prepared_at) * 1000),
        )
        await self._stop.wait()

        # The drain ends at 0.8 x SHUTDOWN_TIMEOUT: the rest is for closing the producer and the pool (`_close`).
        loop = asyncio.get_running_loop()
        deadline = (self._stop_deadline or loop.time() + settings.shutdown_timeout) - settings.shutdown_timeout * 0.2
        log.info("worker_stopping")
        loops.stopping()
        maintenance.cancel()
        lag_task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(consumer.broker.stop(), timeout=settings.shutdown_timeout * 0.7)
        if runner_task is not None:
            runner.stop()  # finishes the jobs in hand for up to 0.3 x SHUTDOWN_TIMEOUT, gives the rest back
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(runner_task, timeout=max(deadline - loop.time(), 0.1))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(adapters.aclose_all(), timeout=max(deadline - loop.time(), 0.1))
        relay.stop()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(relay_task, timeout=max(deadline - loop.time(), 0.1))
        await relay.drain(deadline)
        log.info("worker_stopped", events_published=relay.stats.published)
        return EXIT_OK

    async def _prepare(self, pool: asyncpg.Pool[asyncpg.Record], producer: KafkaProducer) -> int | None:
        """The database (reachable, schema current) and the broker (credentials, producer) are made ready side by side:
        start-up costs the slower of the two, not their sum. None once both are; otherwise the exit code. The group
        is joined only after both: a replica whose database is down or behind must not take partitions it cannot
        serve (nor make the group rebalance twice on its way to exit 3)."""
        database = asyncio.create_task(self._database_ready(pool), name="start-postgres")
        broker = asyncio.create_task(self._broker_ready(producer), name="start-kafka")
        waiting: set[asyncio.Task[int | None]] = {database, broker}
        try:
            while waiting:
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    exit_code = task.result()  # a refused setting raises ConfigurationError at once (exit 2)
                    if exit_code is not None:
                        return exit_code
            return None
        finally:
            for task in waiting:
                task.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)

    async def _database_ready(self, pool: asyncpg.Pool[asyncpg.Record]) -> int | None:
        if not await self._until_or_stopped(lambda: self._check_database(pool), "postgres"):
            return EXIT_OK
        async with pool.acquire() as conn:
            waiting = await migrations.pending(conn)
        if waiting:
            log.error(
                "migrations_pending",
                pending=[f"{m.version:04d}_{m.name}" for m in waiting],
                hint="run `customer-worker migrate` first",
            )
            return EXIT_PENDING_MIGRATIONS
        return None

    async def _broker_ready(self, producer: KafkaProducer) -> int | None:
        if not await self._until_or_stopped(lambda: check_kafka_credentials(self._settings), "kafka"):
            return EXIT_OK
        if not await self._until_or_stopped(producer.start, "kafka"):
            return EXIT_OK
        return None

    async def _until_or_stopped(self, operation: Callable[[], Awaitable[None]], dependency: Dependency) -> bool:
        """Wait for a dependency through outages (not ready meanwhile); False when a stop came first."""
        task = asyncio.ensure_future(until_done(operation, dependency, self._on_outage))
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            done, _ = await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when this wait is cancelled: a retry loop left behind would retry for nobody
            stop.cancel()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return task in done and task.result() is None

    async def _check_database(self, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        try:
            await pool.fetchval("SELECT 1")
        except Exception as exc:
            # At start, a server that answers but refuses the settings is not waited for (SPEC §12 Settings).
            refused = rejected_setting(exc)
            if refused is not None:
                raise ConfigurationError(f"configuration error: {refused}") from None
            raise
        self.health.database_ok = True

    def _on_outage(self, dependency: Dependency, available: bool) -> None:
        if dependency == "postgres":
            self.health.database_ok = available
        else:
            self.health.broker_ok = available
        if not available:
            self.metrics.dependency_retry(dependency)
            self.progress.outage()

    def _published(self, count: int) -> None:
        self.metrics.events_published_total.inc(count)

    def _on_assignment(self, partitions: set[int]) -> None:
        # Each rebalance logs this twice (revoked, then assigned): the adversarial suite counts them.
        log.info("partitions_assigned", partitions=sorted(partitions))
        for gone in self._partitions - partitions:
            self.metrics.forget_partition(gone)
        self._partitions = partitions
        self.health.partitions_assigned = bool(partitions)

    def _record(self, report: BatchReport, seconds: float) -> None:
        summary = report.summary
        metrics = self.metrics
        metrics.batch(report.records, seconds)
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
            records=report.records,
            ms=round(seconds * 1000),
            **{outcome: n for outcome, n in outcomes.items() if n},
            **{f"dlq_{reason}": n for reason, n in report.dead_letters.items() if n},
        )
        for outcome, count in outcomes.items():
            if count:
                metrics.command(outcome, count)
        for reason, count in report.dead_letters.items():
            metrics.command("dead_lettered", count)
            metrics.dead_lettered(DlqReason(reason), count)
        if summary.unknown_fields:
            metrics.unknown_fields_total.inc(summary.unknown_fields)

    async def _maintain(self, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        retention = timedelta(days=self._settings.inbox_retention_days)
        while True:
            try:
                await prune_retained(pool, retention)
                backlog = await outbox_backlog(pool)
                self.metrics.set_outbox(backlog.rows, backlog.oldest_seconds)
                self.metrics.set_provider_jobs(await open_provider_jobs(pool, statement_timeout=_MAINTENANCE_INTERVAL))
                await console_heartbeat(pool, self._partitions)
                self.health.database_ok = True
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                self.health.database_ok = False
                self.progress.outage()
                log.warning("maintenance_failed", error_type=type(exc).__name__)
            await asyncio.sleep(_MAINTENANCE_INTERVAL)

"""Provider jobs in the background (SPEC §9, §11, §12): `ProviderJobRunner` claims due jobs fairly across
connections (`worker.store.jobs`), runs them through `worker.providers.caller.ProviderCaller` with bounded
concurrency, and records each outcome with its events in one transaction.

What waits and what fails (SPEC §9, settled 2026-12-06): a job fails for good only on an answer about the
customer's own data (a 4xx such as an invalid e-mail). Everything else waits, for as long as it takes, with
exponential backoff and jitter capped at `backoff_max` (PROVIDER_BACKOFF_MAX, minutes), never before `Retry-After`:
network errors, timeouts, 5xx, 429 (the connection is also paused until `Retry-After` on every replica), 401/403
(the connection is paused on every replica until a test call succeeds, `worker.providers.connections`), and a
connection this replica does not know (it never claims such a job; a replica that knows it does). Only faults of
the worker itself (a crash or lost lease, an internal error) are bounded, by `max_attempts`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Final, TypedDict

import structlog

from worker.contract.connections import ProviderRegistry
from worker.domain.jobs import ClaimedJob, ConnectionTurn, JobResult
from worker.outages import OUTAGES
from worker.providers.attempt import (
    DEAD_END_UNRESOLVED,
    DEFAULT_SEARCH_WINDOW,
    AttemptResult,
    JobAttempt,
    Skip,
)
from worker.providers.base import (
    ProviderError,
    utc_now,
)
from worker.providers.caller import (
    DEFAULT_PROBE_INTERVAL,
    CallMetrics,
    ProviderCaller,
    provider_name,
)
from worker.providers.connections import ConnectionWatch
from worker.providers.factory import AdapterFactory
from worker.settings import Settings
from worker.store.jobs import (
    LeaseLostError,
    Pool,
    claim_due,
    claim_expired,
    record_failure,
    record_retry,
    record_skip,
    record_success,
    release,
)
from worker.tracing import provider_job

log = structlog.get_logger("worker.providers")

INTERNAL_ERROR: Final = "internal_error"
DATABASE_UNAVAILABLE: Final = "database_unavailable"
DEFAULT_BACKOFF_MAX: Final = 300.0
"""The cap of the backoff between two attempts of a waiting job (PROVIDER_BACKOFF_MAX): five minutes."""


class RunnerOptions(TypedDict):
    concurrency: int
    connection_concurrency: int | None
    max_attempts: int
    backoff_max: float
    check_interval: float
    search_window: float


def runner_options(settings: Settings) -> RunnerOptions:
    """The runner's settings (README "Configuration")."""
    return RunnerOptions(
        concurrency=settings.provider_concurrency,
        connection_concurrency=settings.provider_connection_concurrency,
        max_attempts=settings.provider_max_attempts,
        backoff_max=settings.provider_backoff_max,
        check_interval=settings.provider_credential_check_interval,
        search_window=settings.provider_search_window,
    )


class ProviderJobRunner:
    """Claims and runs provider jobs until `stop()`. Several runners (replicas) may share one database."""

    def __init__(
        self,
        pool: Pool,
        registry: ProviderRegistry,
        factory: AdapterFactory,
        metrics: CallMetrics,
        *,
        concurrency: int = 8,
        connection_concurrency: int | None = None,
        max_attempts: int = 6,
        lease_seconds: float = 60.0,
        poll_interval: float = 1.0,
        backoff_base: float = 1.0,
        backoff_max: float = DEFAULT_BACKOFF_MAX,
        check_interval: float = DEFAULT_PROBE_INTERVAL,
        drain_timeout: float = 10.0,
        on_events: Callable[[], None] | None = None,
        search_window: float = DEFAULT_SEARCH_WINDOW,
        state_refresh_interval: float = 1.0,
    ) -> None:
        """`lease_seconds` must exceed one job's longest run (rate-limiter wait plus up to two SDK timeouts): a job
        is abandoned (retried later) when 3/4 of it has passed, so its lease never runs out while it is in hand.
        `connection_concurrency`: jobs of one connection in hand at once (default: all slots but a quarter, at
        least one, so other connections always find a free slot). `max_attempts`: attempts that may end through a
        fault of the worker (never waits on the provider). `check_interval`: seconds between test calls of a
        connection whose credentials were refused. `on_events` is called after outbox rows were committed (give it
        the relay's `notify`)."""
        if concurrency < 1 or max_attempts < 1 or lease_seconds <= 0:
            raise ValueError("concurrency, max_attempts and lease_seconds must be positive")
        self._pool = pool
        self._registry = registry
        self.caller = ProviderCaller(factory, metrics, backoff_base=backoff_base, backoff_max=backoff_max)
        self.watch = ConnectionWatch(
            pool, registry, self.caller, metrics, check_interval=check_interval, refresh_interval=state_refresh_interval
        )
        self._connection_concurrency = connection_concurrency or max(1, concurrency - max(1, concurrency // 4))
        # The create call of `sync: true` (the service's InlineCreate port) shares the caller's gate and limits.
        self.create_inline = self.caller.create_inline
        self._concurrency = concurrency
        self._max_attempts = max_attempts
        self._lease = lease_seconds
        self._work_budget = lease_seconds * 0.75
        self._poll = poll_interval
        self._drain_timeout = drain_timeout
        self._attempt = JobAttempt(
            pool,
            registry,
            self.caller,
            max_attempts=max_attempts,
            work_budget=self._work_budget,
            search_window=search_window,
        )
        self._sweep_interval = min(max(lease_seconds / 2, 0.5), 15.0)
        self._on_events = on_events
        self._wake = asyncio.Event()
        self._stopping = False
        self._next_due: float | None = None
        self._running: dict[asyncio.Task[None], ClaimedJob] = {}

    # ------------------------------------------------------------------------------------------------ control

    def notify(self) -> None:
        """Jobs were committed in this process: look now rather than at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        """Stop claiming; `run()` then waits up to `drain_timeout` for jobs in hand, gives the rest back, returns."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Until `stop()`. Cancelling the task instead abandons the jobs in hand like a crash would: their leases
        run out and another runner retries them."""
        self._stopping = False
        loop = asyncio.get_running_loop()
        next_sweep = 0.0
        outage_delay = 0.0
        self.caller.metrics.provider_runner_running(True)
        try:
            while not self._stopping:
                self._wake.clear()
                free = self._concurrency - len(self._running)
                claimed: list[ClaimedJob] = []
                try:
                    await self.watch.tick(loop.time())
                    if free > 0:
                        turns = self._turns()
                        claimed = await claim_due(self._pool, free, self._lease, turns)
                        if len(claimed) < free and loop.time() >= next_sweep:
                            claimed += await claim_expired(self._pool, free - len(claimed), self._lease, turns)
                            next_sweep = loop.time() + self._sweep_interval
                    outage_delay = 0.0
                except Exception as exc:  # noqa: BLE001 - any error: logged, backed off, tried again
                    # Outages and anything else alike: the runner must outlive every error (a dead runner
                    # would leave every job pending until a restart).
                    outage_delay = min(max(outage_delay * 2, 0.1), 5.0)
                    level = log.warning if isinstance(exc, OUTAGES) else log.error
                    level("provider_jobs_claim_failed", error_type=type(exc).__name__, retry_in=outage_delay)
                    await self._sleep(outage_delay)
                    continue
                for job in claimed:
                    task = asyncio.create_task(self._execute(job), name=f"provider-job-{job.id}")
                    self._running[task] = job
                    task.add_done_callback(self._done)
                if claimed and len(claimed) == free:
                    continue  # every free slot got a job: more may be due, look again when one frees up
                await self._idle(loop)
            await self._drain()
        except asyncio.CancelledError:
            tasks = list(self._running)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            await self.watch.aclose()
            self.caller.metrics.provider_runner_running(False)

    def _turns(self) -> list[ConnectionTurn]:
        """Each known connection's room for more jobs in hand, and how many it has (the fair claim's input)."""
        busy: dict[tuple[str, str], int] = {}
        for job in self._running.values():
            key = (job.organization_id, job.connection_code)
            busy[key] = busy.get(key, 0) + 1
        turns = []
        for connection in self.watch.connections:
            key = (connection.organization_id, connection.code)
            in_hand = busy.get(key, 0)
            room = self._connection_concurrency - in_hand
            if room > 0 and self.watch.paused.get(key) != "credentials_refused":
                turns.append(ConnectionTurn(key[0], key[1], connection.provider, room, in_hand))
        return turns

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        self._wake.set()

    async def _idle(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait for a wake-up (a job finished, `notify`, `stop`), a retry falling due, or the poll interval."""
        timeout = self._poll
        if self._next_due is not None:
            until_due = self._next_due - loop.time()
            if until_due <= 0:
                self._next_due = None
            timeout = max(min(timeout, until_due), 0.0)
        if len(self._running) >= self._concurrency:
            timeout = self._poll  # nothing can be claimed before a slot frees, which wakes us anyway
        if self.watch.paused:
            timeout = min(timeout, self.watch.refresh_interval)  # a pause may end (Retry-After, a test call)
        await self._sleep(timeout)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    async def _drain(self) -> None:
        tasks = list(self._running)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self._drain_timeout)
        if not pending:
            return
        abandoned = [self._running[task] for task in pending if task in self._running]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        try:
            await release(self._pool, abandoned)
        except Exception as exc:  # noqa: BLE001 - their leases run out and another runner takes them
            log.warning("provider_jobs_release_failed", error_type=type(exc).__name__, jobs=len(abandoned))

    # ------------------------------------------------------------------------------------------------ one job

    @provider_job
    async def _execute(self, job: ClaimedJob) -> None:
        bound = structlog.contextvars.bound_contextvars(
            job_id=job.id, organization_id=job.organization_id, message_id=job.message_id
        )
        with bound:
            try:
                outcome = await self._attempt(job)
            except OUTAGES as exc:
                # The customer could not be read: no call was made. The job waits (if even that cannot be written,
                # its lease runs out and it is claimed again).
                log.warning("provider_job_deferred", error_type=type(exc).__name__)
                outcome = ProviderError(
                    provider_name(job.provider),
                    DATABASE_UNAVAILABLE,
                    "the worker could not read the customer; trying again later",
                    retryable=True,
                )
            except Exception as exc:  # a bug in one job must not stop the others
                log.error("provider_job_crashed", error_type=type(exc).__name__, exc_info=True)
                # Retried like a provider failure, so a lasting bug ends as a failed job with an error event.
                # (`_attempt` has returned a skip for an unknown provider before anything that can raise.)
                outcome = ProviderError(
                    provider_name(job.provider),
                    INTERNAL_ERROR,
                    "the worker failed while running the job",
                    retryable=True,
                )
            try:
                await self._record(job, outcome)
            except Exception as exc:  # the job stays leased; once the lease runs out it is run again
                log.error("provider_job_unrecorded", error_type=type(exc).__name__, exc_info=True)

    async def _record(self, job: ClaimedJob, outcome: AttemptResult) -> None:
        """Write the outcome; PostgreSQL outages are retried while the lease lasts (after that, another runner
        repeats the job under the same idempotency key)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._lease * 0.2
        delay = 0.1
        while True:
            try:
                await self._write(job, outcome)
                return
            except LeaseLostError:
                log.warning("provider_job_lease_lost", kind=job.kind, attempts=job.attempts)
                return
            except OUTAGES as exc:
                if loop.time() + delay > deadline:
                    log.warning("provider_job_result_unsaved", error_type=type(exc).__name__)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _wait(self, job: ClaimedJob, error: ProviderError) -> float:
        """Seconds the job waits; a refused credential or a rate limit also pauses its connection everywhere."""
        delay = self.caller.backoff(job.attempts, error.retry_after)
        connection = self._registry.get(job.organization_id, job.connection_code)
        if connection is None:
            return delay
        if error.credentials:
            await self.watch.credentials_refused(connection, error)
            # Due again soon after a successful test call resumes the connection (never claimed before).
            return min(delay, max(self.watch.check_interval, error.retry_after or 0.0))
        if error.http_status == 429:
            await self.watch.rate_limited(connection, error.retry_after or self.caller.backoff(1, None))
        return delay

    async def _write(self, job: ClaimedJob, outcome: AttemptResult) -> None:
        fields = {"kind": job.kind, "provider": job.provider, "attempts": job.attempts}
        if isinstance(outcome, Skip):
            await record_skip(self._pool, job, outcome.reason)
            log.info("provider_job_skipped", reason=outcome.reason, **fields)
            return
        if isinstance(outcome, JobResult):
            connection = self._registry.get(job.organization_id, job.connection_code)
            if connection is not None:
                await self.watch.succeeded(connection)
            events = await record_success(self._pool, job, outcome, utc_now())
            log.info("provider_job_done", events=len(events), **fields)
            if events and self._on_events is not None:
                self._on_events()
            return
        error = outcome
        fault = error.error_code == INTERNAL_ERROR
        if error.retryable and not (fault and job.worker_faults + 1 >= self._max_attempts):
            delay = await self._wait(job, error)
            missed = error.error_code == DEAD_END_UNRESOLVED
            await record_retry(self._pool, job, error, delay, search_missed=missed, worker_fault=fault)
            due = asyncio.get_running_loop().time() + delay
            self._next_due = due if self._next_due is None else min(self._next_due, due)
            log.info(
                "provider_job_waits",
                error_code=error.error_code,
                http_status=error.http_status,
                retry_in=round(delay, 3),
                **fields,
            )
            return
        events = await record_failure(self._pool, job, error, utc_now())
        log.warning("provider_job_failed", error_code=error.error_code, http_status=error.http_status, **fields)
        if events and self._on_events is not None:
            self._on_events()

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
from collections.abc import Awaitable, Callable
from typing import Final

import structlog

from worker.contract.connections import Connection, ProviderRegistry
from worker.domain.customer import CustomerState
from worker.domain.jobs import ClaimedJob, ConnectionTurn, JobResult, skip_reason
from worker.outages import OUTAGES
from worker.providers.base import (
    CONFIGURATION_ERROR,
    ProviderAdapter,
    ProviderError,
    network_error,
    utc_now,
)
from worker.providers.caller import (
    DEFAULT_PROBE_INTERVAL,
    PROVIDERS,
    CallMetrics,
    ProviderCaller,
    provider_name,
)
from worker.providers.connections import ConnectionWatch
from worker.providers.factory import AdapterFactory
from worker.providers.idempotency import derived_key, key_for
from worker.store.jobs import (
    LeaseLostError,
    Pool,
    claim_due,
    claim_expired,
    load_customer,
    record_failure,
    record_retry,
    record_skip,
    record_success,
    release,
)
from worker.tracing import provider_job

log = structlog.get_logger("worker.providers")

ATTEMPTS_EXHAUSTED: Final = "attempts_exhausted"
INTERNAL_ERROR: Final = "internal_error"
DEAD_END_UNRESOLVED: Final = "dead_end_unresolved"
CONNECTION_UNKNOWN: Final = "connection_unknown"
DATABASE_UNAVAILABLE: Final = "database_unavailable"
DEFAULT_SEARCH_WINDOW: Final = 3600.0
"""Seconds search must keep missing after a dead end before a create under a derived key (PROVIDER_SEARCH_WINDOW).
Stripe documents search as unfit for read-after-write: data is usually searchable within a minute, but the index
can lag by up to an hour during an outage, which is when dead ends (stored 5xx) happen. Dead ends are rare, so the
job waits out the documented worst case rather than risk a second customer; it links at once when search finds
the customer."""
DEFAULT_BACKOFF_MAX: Final = 300.0
"""The cap of the backoff between two attempts of a waiting job (PROVIDER_BACKOFF_MAX): five minutes."""
DERIVED_STEPS: Final = ("r1", "r2", "r3")
"""Keys a create tries after a dead end, in order; each is looked up first, so at most one customer results."""


def _creator(sent: CustomerState, key: str) -> Callable[[ProviderAdapter], Awaitable[JobResult]]:
    async def create(adapter: ProviderAdapter) -> JobResult:
        created = await adapter.create_customer(sent, key)
        # Adyen: the create made the link; this returns it from the adapter, without a second call.
        url = await adapter.checkout_url(sent, created, key) if adapter.checkout_with_create else None
        return JobResult(created, url)

    return create


class _Skip:
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


AttemptResult = JobResult | ProviderError | _Skip


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
        self._search_window = search_window
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

    async def _attempt(self, job: ClaimedJob) -> AttemptResult:
        if job.provider not in PROVIDERS:
            return _Skip("unknown_provider")
        provider = provider_name(job.provider)
        connection = self._registry.get(job.organization_id, job.connection_code)
        if connection is None or connection.provider != provider:
            # The claim only takes known connections' jobs; should one come anyway, it waits for a replica that
            # knows the connection (a rolling deploy), without a call.
            return ProviderError(
                provider, CONNECTION_UNKNOWN, "this replica does not know the job's connection", retryable=True
            )
        if job.worker_faults >= self._max_attempts:
            # Its runner died (or lost the lease) during each of these attempts: a crash loop, not a wait.
            return ProviderError(provider, ATTEMPTS_EXHAUSTED, f"no outcome after {job.worker_faults} worker faults")
        state = await load_customer(self._pool, job.customer_id)
        reason = skip_reason(job, state)
        if reason is not None or state is None:
            return _Skip(reason or "customer_missing")
        key = key_for(job)
        try:
            async with asyncio.timeout(self._work_budget):
                return await self._call(connection, job, state, key)
        except ProviderError as error:
            return error
        except TimeoutError:
            return network_error(provider, timed_out=True)

    async def _call(self, connection: Connection, job: ClaimedJob, state: CustomerState, key: str) -> JobResult:
        pid = state.provider_customer_id
        if job.kind == "create":
            return await self._create(connection, job, job.request or state, key)
        assert pid is not None  # skip_reason holds the other kinds back without a provider customer
        if job.kind == "update":

            async def update(adapter: ProviderAdapter) -> JobResult:
                await adapter.update_customer(state, pid, key)
                return JobResult(pid)

            return await self.caller.call(connection, update)
        if job.kind == "checkout":

            async def checkout(adapter: ProviderAdapter) -> JobResult:
                return JobResult(pid, await adapter.checkout_url(state, pid, key))

            # GoCardless needs two requests (billing request, then its flow): both count against the rate.
            cost = 2 if connection.provider == "gocardless" else 1
            return await self.caller.call(connection, checkout, cost=cost)
        raise ProviderError(connection.provider, CONFIGURATION_ERROR, "unknown job kind")

    async def _create(self, connection: Connection, job: ClaimedJob, sent: CustomerState, key: str) -> JobResult:
        """The create, with the job's snapshot. A dead end (the key refused for other parameters, or a stored 5xx
        replayed for ever) is resolved without a second provider customer (SPEC §12): look the customer up; link it
        if found; otherwise create it under a key derived from the first (`-r1`, `-r2`: the same on every retry, so
        a lost answer is replayed rather than done twice)."""

        try:
            return await self.caller.call(connection, _creator(sent, key))
        except ProviderError as error:
            if not error.dead_end:
                raise
            return await self._resolve(connection, job, sent, key, error)

    async def _resolve(
        self, connection: Connection, job: ClaimedJob, sent: CustomerState, key: str, error: ProviderError
    ) -> JobResult:
        log.info("provider_create_dead_end", kind=job.kind, provider=job.provider, error_code=error.error_code)
        for step in DERIVED_STEPS:
            found = await self.caller.call(connection, lambda adapter: adapter.find_customer(sent))
            if found is not None:
                log.info("provider_customer_found", provider=job.provider)
                return JobResult(found)
            if step == DERIVED_STEPS[0] and not self._search_window_over(job):
                # Not found yet: search may lag a create by up to the window. Look again later, create nothing.
                raise ProviderError(
                    connection.provider,
                    DEAD_END_UNRESOLVED,
                    "the idempotency key cannot be used any more and the customer was not found yet; "
                    "looking it up again later",
                    retryable=True,
                )
            try:
                return await self.caller.call(connection, _creator(sent, derived_key(key, step)))
            except ProviderError as again:
                if not again.dead_end:
                    raise
                error = again
        raise error

    def _search_window_over(self, job: ClaimedJob) -> bool:
        """A derived-key create needs earlier misses (this is at least the second) spanning the whole window."""
        missed_for = job.search_missed_for
        return job.search_misses >= 1 and missed_for is not None and missed_for >= self._search_window

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
        if isinstance(outcome, _Skip):
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

"""One attempt of one provider job (SPEC §9, §12): what to call for the job's kind, through the caller, and how a
create's dead end is resolved without a second provider customer. `worker.providers.runner` claims the jobs and
writes the outcomes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final

import structlog

from worker.contract.connections import Connection, ProviderRegistry
from worker.domain.customer import CustomerState
from worker.domain.jobs import ClaimedJob, JobResult, skip_reason
from worker.providers.base import CONFIGURATION_ERROR, ProviderAdapter, ProviderError, network_error
from worker.providers.caller import PROVIDERS, ProviderCaller, provider_name
from worker.providers.idempotency import derived_key, key_for
from worker.store.jobs import Pool, load_customer

log = structlog.get_logger("worker.providers")

ATTEMPTS_EXHAUSTED: Final = "attempts_exhausted"
DEAD_END_UNRESOLVED: Final = "dead_end_unresolved"
CONNECTION_UNKNOWN: Final = "connection_unknown"
DEFAULT_SEARCH_WINDOW: Final = 3600.0
"""Seconds search must keep missing after a dead end before a create under a derived key (PROVIDER_SEARCH_WINDOW).
Stripe documents search as unfit for read-after-write: data is usually searchable within a minute, but the index
can lag by up to an hour during an outage, which is when dead ends (stored 5xx) happen. Dead ends are rare, so the
job waits out the documented worst case rather than risk a second customer; it links at once when search finds
the customer."""
DERIVED_STEPS: Final = ("r1", "r2", "r3")
"""Keys a create tries after a dead end, in order; each is looked up first, so at most one customer results."""


def _creator(sent: CustomerState, key: str) -> Callable[[ProviderAdapter], Awaitable[JobResult]]:
    async def create(adapter: ProviderAdapter) -> JobResult:
        created = await adapter.create_customer(sent, key)
        # Adyen: the create made the link; this returns it from the adapter, without a second call.
        url = await adapter.checkout_url(sent, created, key) if adapter.checkout_with_create else None
        return JobResult(created, url)

    return create


class Skip:
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


AttemptResult = JobResult | ProviderError | Skip


class JobAttempt:
    """Runs one claimed job's call(s); returns the result, the error, or why there is nothing to do."""

    def __init__(
        self,
        pool: Pool,
        registry: ProviderRegistry,
        caller: ProviderCaller,
        *,
        max_attempts: int,
        work_budget: float,
        search_window: float,
    ) -> None:
        self._pool = pool
        self.registry = registry
        self._caller = caller
        self._max_attempts = max_attempts
        self._work_budget = work_budget
        self._search_window = search_window

    async def __call__(self, job: ClaimedJob) -> AttemptResult:
        if job.provider not in PROVIDERS:
            return Skip("unknown_provider")
        provider = provider_name(job.provider)
        connection = self.registry.get(job.organization_id, job.connection_code)
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
            return Skip(reason or "customer_missing")
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

            return await self._caller.call(connection, update)
        if job.kind == "checkout":

            async def checkout(adapter: ProviderAdapter) -> JobResult:
                return JobResult(pid, await adapter.checkout_url(state, pid, key))

            # GoCardless needs two requests (billing request, then its flow): both count against the rate.
            cost = 2 if connection.provider == "gocardless" else 1
            return await self._caller.call(connection, checkout, cost=cost)
        raise ProviderError(connection.provider, CONFIGURATION_ERROR, "unknown job kind")

    async def _create(self, connection: Connection, job: ClaimedJob, sent: CustomerState, key: str) -> JobResult:
        """The create, with the job's snapshot. A dead end (the key refused for other parameters, or a stored 5xx
        replayed for ever) is resolved without a second provider customer (SPEC §12): look the customer up; link it
        if found; otherwise create it under a key derived from the first (`-r1`, `-r2`: the same on every retry, so
        a lost answer is replayed rather than done twice)."""

        try:
            return await self._caller.call(connection, _creator(sent, key))
        except ProviderError as error:
            if not error.dead_end:
                raise
            return await self._resolve(connection, job, sent, key, error)

    async def _resolve(
        self, connection: Connection, job: ClaimedJob, sent: CustomerState, key: str, error: ProviderError
    ) -> JobResult:
        log.info("provider_create_dead_end", kind=job.kind, provider=job.provider, error_code=error.error_code)
        for step in DERIVED_STEPS:
            found = await self._caller.call(connection, lambda adapter: adapter.find_customer(sent))
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
                return await self._caller.call(connection, _creator(sent, derived_key(key, step)))
            except ProviderError as again:
                if not again.dead_end:
                    raise
                error = again
        raise error

    def _search_window_over(self, job: ClaimedJob) -> bool:
        """A derived-key create needs earlier misses (this is at least the second) spanning the whole window."""
        missed_for = job.search_missed_for
        return job.search_misses >= 1 and missed_for is not None and missed_for >= self._search_window

"""Every provider call, in the background or inline, goes through `ProviderCaller`: the per-connection rate limit,
the refused-credentials gate, the adapter and the call metrics.

Refused credentials (401/403) pause the connection on every replica: the state lives in PostgreSQL
(`worker.store.connections`), written and read by the runner, which mirrors it into this process's
`ConnectionGate`. While a connection is refused, calls through it are refused at once, without a request (a
retryable error: its jobs wait); the runner's test call (`check`) goes around the gate, and its success resumes
the connection everywhere.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Final, Literal, Protocol, TypeVar, get_args

import structlog
from aiolimiter import AsyncLimiter

from worker.contract.connections import Connection, ProviderName
from worker.domain.customer import CustomerState
from worker.domain.jobs import InlineResult
from worker.providers.base import (
    UNAUTHORIZED,
    ProviderAdapter,
    ProviderCallOutcome,
    ProviderError,
)
from worker.providers.factory import AdapterFactory
from worker.providers.idempotency import idempotency_key
from worker.store.connections import ConnectionState
from worker.tracing import provider_call

log = structlog.get_logger("worker.providers")


class CallMetrics(Protocol):
    """The runner's view of `worker.observability.Metrics`: provider calls and the runner's own state."""

    def provider_call(self, provider: ProviderName, outcome: ProviderCallOutcome, seconds: float) -> None: ...

    def provider_call_counted(self, provider: ProviderName, outcome: ProviderCallOutcome) -> None: ...

    def provider_runner_running(self, running: bool) -> None: ...

    def provider_connection(
        self, provider: ProviderName, connection: str, state: ConnectionState, oldest_open_seconds: float
    ) -> None: ...

    def provider_jobs_oldest_open(self, seconds: float) -> None: ...


T = TypeVar("T")

DEFAULT_INLINE_BUDGET: Final = 5.0
DEFAULT_PROBE_INTERVAL: Final = 60.0
"""Seconds between test calls of a connection whose credentials were refused (PROVIDER_CREDENTIAL_CHECK_INTERVAL)."""
LATENCY_ALLOWANCE: Final = 0.1
"""Seconds of calls kept out of the rate limiter's burst (at least one call): slack for uneven network latency."""
PROVIDERS: Final[tuple[ProviderName, ...]] = get_args(ProviderName)


def backoff_delay(
    attempt: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rng: Callable[[float, float], float] = random.uniform,
) -> float:
    """Seconds before retry number `attempt` (1 = the first retry): exponential, capped, with "equal jitter" (half
    fixed, half random, so replicas that failed together do not retry together), and never before `Retry-After`."""
    ceiling = min(cap, base * 2 ** max(attempt - 1, 0))
    delay = rng(ceiling / 2, ceiling)
    return max(delay, retry_after or 0.0)


def provider_name(name: str) -> ProviderName:
    for provider in PROVIDERS:
        if provider == name:
            return provider
    raise ValueError("unknown provider in provider_jobs")


class ConnectionGate:
    """The connections whose credentials were refused, as this process knows it (its own 401s and 403s, and the
    shared state the runner reads from PostgreSQL)."""

    def __init__(self) -> None:
        self._refused: set[tuple[str, str]] = set()

    def is_refused(self, key: tuple[str, str]) -> bool:
        return key in self._refused

    def refuse(self, key: tuple[str, str]) -> bool:
        """True when this is news to the process."""
        if key in self._refused:
            return False
        self._refused.add(key)
        return True

    def mirror(self, refused: Iterable[tuple[str, str]]) -> None:
        """The shared state, as the runner last read it."""
        self._refused = set(refused)


class ProviderCaller:
    """Every provider call, background or inline: rate limit per connection, broken-connection gate, metrics."""

    def __init__(
        self,
        factory: AdapterFactory,
        metrics: CallMetrics,
        *,
        backoff_base: float = 1.0,
        backoff_max: float = 300.0,
    ) -> None:
        self._factory = factory
        self._metrics = metrics
        self.metrics = metrics
        self.gate = ConnectionGate()
        self._limiters: dict[tuple[str, str], AsyncLimiter] = {}
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max

    def limiter(self, connection: Connection) -> AsyncLimiter:
        """`rate_limit_per_second` calls a second, sustained. The burst is the rate less a latency allowance: the
        provider counts arrivals, we count departures, and the first calls of a burst arrive late (new connections)
        while later ones catch up; with a burst of exactly the rate, they would land in an empty bucket (429)."""
        key = (connection.organization_id, connection.code)
        limiter = self._limiters.get(key)
        if limiter is None:
            rate = connection.config.rate_limit_per_second
            burst = max(1.0, rate - max(1.0, rate * LATENCY_ALLOWANCE))
            limiter = AsyncLimiter(burst, burst / rate)
            self._limiters[key] = limiter
        return limiter

    @provider_call
    async def call(
        self, connection: Connection, operation: Callable[[ProviderAdapter], Awaitable[T]], *, cost: int = 1
    ) -> T:
        """Run `operation` on the connection's adapter once, after its rate limiter lets `cost` requests through.
        Raises ProviderError (refused without a call while the connection's credentials are refused)."""
        key = (connection.organization_id, connection.code)
        provider = connection.provider
        if self.gate.is_refused(key):
            raise refused(provider)
        limiter = self.limiter(connection)
        await limiter.acquire(min(float(cost), limiter.max_rate))
        if self.gate.is_refused(key):
            raise refused(provider)  # a 401 arrived while this call waited for the rate limiter
        return await self._measured(connection, operation)

    async def check(self, connection: Connection) -> None:
        """The test call of a connection whose credentials were refused: around the gate, within the rate."""
        await self.limiter(connection).acquire()
        await self._measured(connection, lambda adapter: adapter.check_credentials())

    async def _measured(self, connection: Connection, operation: Callable[[ProviderAdapter], Awaitable[T]]) -> T:
        provider = connection.provider
        adapter = self._factory.adapter_for(connection)
        started = time.perf_counter()
        try:
            result = await operation(adapter)
        except ProviderError as error:
            outcome: Literal["retryable_error", "permanent_error"] = (
                "retryable_error" if error.retryable else "permanent_error"
            )
            self._metrics.provider_call(provider, outcome, time.perf_counter() - started)
            if error.credentials and self.gate.refuse((connection.organization_id, connection.code)):
                log.warning(
                    "provider_connection_credentials_refused",
                    provider=provider,
                    connection=connection.code,
                    http_status=error.http_status,
                )
            raise
        self._metrics.provider_call(provider, "success", time.perf_counter() - started)
        return result

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        return backoff_delay(attempt, base=self.backoff_base, cap=self.backoff_max, retry_after=retry_after)

    async def create_inline(
        self,
        connection: Connection,
        customer: CustomerState,
        message_id: str,
        budget_seconds: float = DEFAULT_INLINE_BUDGET,
    ) -> InlineResult:
        """The create call of `sync: true`, retried within `budget_seconds`. `customer` is the create job's request
        snapshot, so the background job, if it has to take over, sends the very same request under the same key
        (no second provider customer) and reports the outcome. Returns the provider customer id, or the
        `Retry-After` the background job must wait first. Never raises ProviderError; a dead end (SPEC §12) is
        left to the job, which resolves it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget_seconds
        key = idempotency_key(customer.organization_id, message_id, "create")
        attempt = 0
        while True:
            attempt += 1
            started = time.perf_counter()
            try:
                async with asyncio.timeout_at(deadline):
                    created = await self.call(connection, lambda adapter: adapter.create_customer(customer, key))
                    return InlineResult(created)
            except TimeoutError:
                self._metrics.provider_call(connection.provider, "timeout", time.perf_counter() - started)
                log.info("provider_inline_budget_spent", provider=connection.provider, attempts=attempt)
                return InlineResult()
            except ProviderError as error:
                if not error.retryable or error.credentials:
                    # Final, or refused credentials: the background job reports it, or waits for the connection.
                    log.info("provider_inline_handed_over", provider=connection.provider, error_code=error.error_code)
                    return InlineResult()
                delay = self.backoff(attempt, error.retry_after)
                if loop.time() + delay >= deadline:
                    # Counted, not timed: the call itself was already measured (as a retryable error).
                    self._metrics.provider_call_counted(connection.provider, "timeout")
                    log.info("provider_inline_budget_spent", provider=connection.provider, attempts=attempt)
                    return InlineResult(retry_after=error.retry_after)
                await asyncio.sleep(delay)


def refused(provider: ProviderName) -> ProviderError:
    """A call not made: the connection's credentials are refused (waits until a test call succeeds)."""
    return ProviderError(
        provider,
        UNAUTHORIZED,
        "not called: the connection's credentials are refused until a test call succeeds",
        http_status=401,
        retryable=True,
    )

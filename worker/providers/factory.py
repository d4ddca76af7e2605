"""One adapter per connection, made on first use and kept: SDK clients hold HTTP connection pools worth reusing.

The synchronous SDKs (Adyen, GoCardless) share one bounded thread pool, so a burst of jobs can never start more
threads than the runner has call slots.

Each adapter module (and its SDK: about 100 ms of imports for the three) is imported when the first adapter of its
provider is built: a worker without provider connections never loads them, and one with them loads only its own.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Final

import structlog

from worker.contract.connections import Connection
from worker.providers.base import DEFAULT_TIMEOUT, ProviderAdapter

log = structlog.get_logger("worker.providers")

DEFAULT_THREADS: Final = 8


class AdapterFactory:
    def __init__(self, *, timeout: float = DEFAULT_TIMEOUT, max_threads: int = DEFAULT_THREADS) -> None:
        """`timeout`: seconds an SDK waits for one HTTP answer. `max_threads`: calls of the synchronous SDKs in
        flight at once (give it the runner's concurrency)."""
        self._timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="provider-sdk")
        self._adapters: dict[tuple[str, str], tuple[Connection, ProviderAdapter]] = {}
        self._retired: list[ProviderAdapter] = []

    def adapter_for(self, connection: Connection) -> ProviderAdapter:
        """The adapter of `connection`, cached per (organization, code); rebuilt if the connection object changed
        (a different secret or setting under the same code)."""
        key = (connection.organization_id, connection.code)
        cached = self._adapters.get(key)
        if cached is not None and cached[0] == connection:
            return cached[1]
        adapter = self._build(connection)
        if cached is not None:
            # The replaced adapter may still serve a call in flight: it is closed with the others, at the end.
            self._retired.append(cached[1])
        self._adapters[key] = (connection, adapter)
        return adapter

    def _build(self, connection: Connection) -> ProviderAdapter:
        provider = connection.provider
        if provider == "stripe":
            from worker.providers.stripe import StripeAdapter  # noqa: PLC0415

            return StripeAdapter(connection, timeout=self._timeout)
        if provider == "adyen":
            from worker.providers.adyen import AdyenAdapter  # noqa: PLC0415

            return AdyenAdapter(connection, executor=self._executor, timeout=self._timeout)
        if provider == "gocardless":
            from worker.providers.gocardless import GoCardlessAdapter  # noqa: PLC0415

            return GoCardlessAdapter(connection, executor=self._executor, timeout=self._timeout)
        raise ValueError(f"unknown provider {provider!r}")

    async def aclose_all(self) -> None:
        adapters = [adapter for _, adapter in self._adapters.values()] + self._retired
        self._adapters.clear()
        self._retired = []
        for adapter in adapters:
            try:
                await adapter.aclose()
            except Exception as exc:  # noqa: BLE001 - closing is best effort; the others still get closed
                log.warning("provider_adapter_close_failed", provider=adapter.provider, error_type=type(exc).__name__)
        # Threads still inside an SDK call finish on their own (requests has its timeout); nothing waits for them.
        self._executor.shutdown(wait=False, cancel_futures=True)

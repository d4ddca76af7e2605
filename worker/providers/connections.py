"""The runner's side of the shared connection state (SPEC §9, settled 2026-12-06; `worker.store.connections`).

`ConnectionWatch` mirrors which connections are paused into the caller's gate, makes the test call of a connection
whose credentials were refused (one replica at a time, every `check_interval`), resumes it when the call shows the
credentials are accepted again, records refusals and rate limits, and reports each connection's state and oldest
open job as metrics. Metric labels name a connection by its code and a digest of its organization
(`metric_label`): organization ids are never labels; the log line `provider_connection_state` pairs the two.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Sequence
from typing import Final, Protocol

import structlog

from worker.contract.connections import Connection, ProviderName, ProviderRegistry
from worker.outages import OUTAGES
from worker.providers.base import ProviderError
from worker.providers.caller import ProviderCaller
from worker.store import connections as store
from worker.store.connections import ConnectionState, Key
from worker.store.jobs import Pool

log = structlog.get_logger("worker.providers")

DEFAULT_REFRESH_INTERVAL: Final = 1.0
"""Seconds between two reads of the shared state: how soon a replica follows a pause or resume made elsewhere."""
DEFAULT_REPORT_INTERVAL: Final = 5.0
_LABEL_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_.:-]")


class ConnectionMetrics(Protocol):
    def provider_connection(
        self, provider: ProviderName, connection: str, state: ConnectionState, oldest_open_seconds: float
    ) -> None: ...

    def provider_jobs_oldest_open(self, seconds: float) -> None: ...


def metric_label(organization_id: str, code: str) -> str:
    """`code~digest`: stable, distinct per connection, and without the organization id (the code is cut to 60
    characters of `[A-Za-z0-9_.:-]`; the digest covers the whole of both)."""
    digest = hashlib.sha256(f"{organization_id}/{code}".encode()).hexdigest()[:8]
    return f"{_LABEL_UNSAFE.sub('_', code)[:60] or '_'}~{digest}"


class ConnectionWatch:
    def __init__(
        self,
        pool: Pool,
        registry: ProviderRegistry,
        caller: ProviderCaller,
        metrics: ConnectionMetrics,
        *,
        check_interval: float,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        report_interval: float = DEFAULT_REPORT_INTERVAL,
    ) -> None:
        self._pool = pool
        self._caller = caller
        self._metrics = metrics
        self._connections: dict[Key, Connection] = {
            (connection.organization_id, connection.code): connection for connection in registry.connections
        }
        self._keys: list[Key] = list(self._connections)
        self.check_interval = check_interval
        self.refresh_interval = refresh_interval
        self._report_interval = report_interval
        self._next_refresh = 0.0
        self._next_report = 0.0
        self.paused: dict[Key, ConnectionState] = {}
        self._checks: set[asyncio.Task[None]] = set()

    @property
    def connections(self) -> Sequence[Connection]:
        return list(self._connections.values())

    async def tick(self, now: float) -> None:
        """Read the shared state, start the test calls that are due, report the metrics (each at its interval).
        Raises on a database error (the runner backs off)."""
        if now >= self._next_refresh:
            self._next_refresh = now + self.refresh_interval
            self.paused = await store.paused_states(self._pool, self._keys)
            self._caller.gate.mirror(key for key, state in self.paused.items() if state == "credentials_refused")
            refused = [key for key, state in self.paused.items() if state == "credentials_refused"]
            for key in await store.claim_probes(self._pool, refused, self.check_interval):
                task = asyncio.create_task(self._check(self._connections[key]), name=f"provider-check-{key[1]}")
                self._checks.add(task)
                task.add_done_callback(self._checks.discard)
        if now >= self._next_report:
            self._next_report = now + self._report_interval
            reports, oldest = await store.report(self._pool, self._keys)
            for item in reports:
                connection = self._connections[item.key]
                label = metric_label(*item.key)
                self._metrics.provider_connection(connection.provider, label, item.state, item.oldest_open_seconds)
            self._metrics.provider_jobs_oldest_open(oldest)

    async def credentials_refused(self, connection: Connection, error: ProviderError) -> None:
        key = (connection.organization_id, connection.code)
        self.paused[key] = "credentials_refused"
        self._caller.gate.refuse(key)
        if await store.pause(self._pool, key, "credentials_refused", self.check_interval, error.error_code):
            self._log_state(connection, "credentials_refused", http_status=error.http_status)

    async def rate_limited(self, connection: Connection, seconds: float) -> None:
        key = (connection.organization_id, connection.code)
        self.paused.setdefault(key, "rate_limited")
        if await store.pause(self._pool, key, "rate_limited", seconds, "rate_limited"):
            self._log_state(connection, "rate_limited", retry_in=round(seconds, 3))

    async def succeeded(self, connection: Connection) -> None:
        """A call through the connection succeeded: if it was marked paused, it works again."""
        key = (connection.organization_id, connection.code)
        if key in self.paused:
            del self.paused[key]
            await self._resume(connection)

    async def _check(self, connection: Connection) -> None:
        try:
            await self._caller.check(connection)
        except ProviderError as error:
            if error.credentials or error.retryable:
                # Still refused, or no answer about the credentials (5xx, 429, network): the next check decides.
                log.info("provider_credentials_check_failed", connection=connection.code, error_code=error.error_code)
                return
        except Exception as exc:  # noqa: BLE001 - a check must never take the runner down; the next one retries
            log.warning("provider_credentials_check_crashed", connection=connection.code, error_type=type(exc).__name__)
            return
        try:
            await self._resume(connection)
        except OUTAGES as exc:
            log.warning("provider_connection_resume_unsaved", error_type=type(exc).__name__)

    async def _resume(self, connection: Connection) -> None:
        key = (connection.organization_id, connection.code)
        self.paused.pop(key, None)
        self._caller.gate.mirror(k for k, state in self.paused.items() if state == "credentials_refused")
        if await store.resume(self._pool, key):
            self._log_state(connection, "working")
            self._next_refresh = 0.0

    def _log_state(self, connection: Connection, state: ConnectionState, **fields: object) -> None:
        log.warning(
            "provider_connection_state",
            state=state,
            provider=connection.provider,
            connection=connection.code,
            organization_id=connection.organization_id,
            metric_label=metric_label(connection.organization_id, connection.code),
            **fields,
        )

    async def aclose(self) -> None:
        tasks = list(self._checks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

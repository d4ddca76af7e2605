"""Connection pool for the worker; the connection type every store function accepts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from pydantic import SecretStr

from worker.outages import DependencyUnavailableError
from worker.settings import revealed

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"


async def create_pool(dsn: SecretStr | str, *, size: int) -> asyncpg.Pool[asyncpg.Record]:
    """Connections are made lazily and re-made after an outage; `min_size=0` lets start-up wait for PostgreSQL
    through the caller's retry loop instead of failing here."""
    return await asyncpg.create_pool(
        revealed(dsn),
        min_size=0,
        max_size=size,
        command_timeout=60,
        max_inactive_connection_lifetime=300,
        server_settings={"application_name": "customer-worker"},
        reset=_keep_session,
    )


async def _keep_session(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """Released connections skip asyncpg's server-side reset (`RESET ALL`, `UNLISTEN *`, ...): one round trip saved
    per batch and per relay round. The worker keeps no session state on pooled connections: no SET, no LISTEN, only
    transaction-scoped advisory locks. asyncpg still rolls back a transaction left open before this is called."""


@asynccontextmanager
async def connection(pool: asyncpg.Pool[asyncpg.Record]) -> AsyncIterator[PoolConnectionProxy[asyncpg.Record]]:
    """A pooled connection; failing to get one in time (a connect timeout) is an outage, never a record's timeout."""
    try:
        conn = await pool.acquire()
    except TimeoutError as exc:
        raise DependencyUnavailableError("no database connection in time") from exc
    try:
        yield conn
    finally:
        await pool.release(conn)

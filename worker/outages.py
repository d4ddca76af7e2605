"""What counts as a dependency outage: waited out without limit, never counted as a failure of the work itself."""

from __future__ import annotations

from typing import Final, Literal

import asyncpg

Dependency = Literal["postgres", "kafka"]
"""The dependencies whose outages are waited out (and counted, in `customer_worker_dependency_retries_total`)."""


class DependencyUnavailableError(Exception):
    """Raised by adapters for an outage of their dependency that has no OSError of its own (a retriable broker
    error, say), so that callers need not know the client libraries' exception trees."""


OUTAGES: Final = (
    DependencyUnavailableError,
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    # Raised when a connection that died mid-transaction is released to the pool.
    asyncpg.InternalClientError,
)


def is_outage(exc: BaseException) -> bool:
    """A dependency that is down or busy, as opposed to a fault in the data or the code."""
    return isinstance(exc, OUTAGES)

"""What counts as a dependency outage: waited out without limit, never counted as a failure of the work itself.

A failure is an outage when it says nothing about the record being processed (SPEC §12). For PostgreSQL that is
decided by the error's SQLSTATE, class by class, rather than by asyncpg's exception types: a code asyncpg does not
know (a newer server's `53xxx`, say) arrives as `UnknownPostgresError` with its SQLSTATE intact.

| SQLSTATE | what the server says | why it is not the record's fault |
|---|---|---|
| class 08 | connection exception | the connection was lost or refused |
| class 53 | insufficient resources | disk full, out of memory, too many connections |
| class 57 | operator intervention | admin shutdown, crash shutdown, cannot connect now, query cancelled |
| class 58 | system error | I/O error of the server |
| class 40 but 40002 | transaction rollback | serialization failure, deadlock (40002, a deferred constraint, is not) |
| 25006 | read-only SQL transaction | what a demoted primary or a hot standby answers a write |
| 25P04 | transaction timeout | like a cancelled statement |
| 55P03 | lock not available | another transaction holds the lock (`lock_timeout`) |
| class 28, 3D000 | credentials refused, no such database | a setting; exit 2 at start (`rejected_setting`) |

Client side, connection-level failures are outages too (`OSError`, `TimeoutError`, asyncpg's `InterfaceError`
about a closed connection, `InternalClientError` such as a protocol desync or a target server that is not the
primary, a cached plan invalidated by a migration). Client-side *data* errors are not: asyncpg's `DataError` (a
value it cannot encode), `ClientConfigurationError` and unsupported-feature errors come from the record or the
code and count toward `POISON_MAX_ATTEMPTS`.
"""

from __future__ import annotations

from typing import Final, Literal

import asyncpg

Dependency = Literal["postgres", "kafka"]
"""The dependencies whose outages are waited out (and counted, in `customer_worker_dependency_retries_total`)."""


class DependencyUnavailableError(Exception):
    """Raised by adapters for an outage of their dependency that has no OSError of its own (a retriable broker
    error, say), so that callers need not know the client libraries' exception trees."""


OUTAGE_SQLSTATE_CLASSES: Final = frozenset({"08", "53", "57", "58", "40", "28"})
# 28 (credentials refused) and 3D000 (no such database) too: met while running (a rotated password, a database being
# restored), they say nothing about the record. At start they are a wrong setting instead (`rejected_setting`).
OUTAGE_SQLSTATES: Final = frozenset({"25006", "25P04", "55P03", "3D000"})
NOT_OUTAGE_SQLSTATES: Final = frozenset({"40002"})

_CLIENT_DATA_ERRORS: Final = (
    asyncpg.DataError,
    asyncpg.ClientConfigurationError,
    asyncpg.UnsupportedClientFeatureError,
    asyncpg.UnsupportedServerFeatureError,
)

OUTAGES: Final = (
    DependencyUnavailableError,
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.OperatorInterventionError,
    asyncpg.PostgresSystemError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.StatementCompletionUnknownError,
    asyncpg.ReadOnlySQLTransactionError,
    asyncpg.TransactionTimeoutError,
    asyncpg.LockNotAvailableError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
    asyncpg.InvalidCachedStatementError,
    asyncpg.InternalClientError,
)
"""The exception types that are always outages, for `except` clauses. `is_outage` is the complete rule: it also
knows SQLSTATEs that asyncpg has no class for, and the `InterfaceError`s about a lost connection."""


def is_outage_sqlstate(sqlstate: str) -> bool:
    if sqlstate in NOT_OUTAGE_SQLSTATES:
        return False
    return sqlstate in OUTAGE_SQLSTATES or sqlstate[:2] in OUTAGE_SQLSTATE_CLASSES


def is_outage(exc: BaseException) -> bool:
    """A dependency that is down or busy, as opposed to a fault in the data or the code."""
    if isinstance(exc, asyncpg.InvalidCachedStatementError):
        return True  # a plan invalidated by a schema change (a migration), whatever its SQLSTATE says
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", None)
        return isinstance(sqlstate, str) and is_outage_sqlstate(sqlstate)
    if isinstance(exc, _CLIENT_DATA_ERRORS):
        return False
    # What remains of asyncpg's InterfaceError is about the connection: closed, released, pool closing.
    return isinstance(exc, (*OUTAGES, asyncpg.InterfaceError))


# SQLSTATE class 28 (invalid authorization: wrong password, unknown role, no pg_hba entry) and 3D000 (no such
# database): the server is up and refuses what the settings say. Waiting would never end.
_REJECTED_SQLSTATE_CLASSES: Final = frozenset({"28"})
_REJECTED_SQLSTATES: Final = frozenset({"3D000"})
_KAFKA_AUTH_ERRORS: Final = frozenset(
    {
        "AuthenticationFailedError",
        "AuthenticationMethodNotSupported",
        "SaslAuthenticationFailed",
        "UnsupportedSaslMechanismError",
        "IllegalSaslStateError",
    }
)


def rejected_setting(exc: BaseException) -> str | None:
    """For a failure that means a setting is wrong although the server answered (rejected credentials, a database
    that does not exist, a client-side configuration error), a message naming the setting, never its value;
    None for anything else."""
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", None) or ""
        if sqlstate[:2] in _REJECTED_SQLSTATE_CLASSES or sqlstate in _REJECTED_SQLSTATES:
            return f"DATABASE_URL: the server refused the connection (sqlstate {sqlstate})"
        return None
    if isinstance(exc, asyncpg.ClientConfigurationError):
        return "DATABASE_URL: the connection options are invalid"
    if type(exc).__name__ in _KAFKA_AUTH_ERRORS and type(exc).__module__.startswith("aiokafka"):
        return "KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD: the broker rejected the credentials"
    return None

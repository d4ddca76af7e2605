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
| 25P03 | idle-in-transaction timeout | the session waited on something else (an inline provider call) |
| 25P04 | transaction timeout | a time limit, see below |
| 55P03 | lock not available | another transaction holds the lock (`lock_timeout`) |
| 42501, 42P01 | insufficient privilege, undefined table | a revoked grant, a renamed or missing table: an incident |
| XX000, XX001, XX002 | internal error, data or index corrupted | a storage or server fault |
| class 28, 3D000 | credentials refused, no such database | a setting; exit 2 at start (`rejected_setting`) |

Client side, connection-level failures are outages too (`OSError`, `TimeoutError`, asyncpg's `InterfaceError`
about a closed connection, `InternalClientError` such as a protocol desync or a target server that is not the
primary, a cached plan invalidated by a migration). Client-side *data* errors are not: asyncpg's `DataError` (a
value it cannot encode), `ClientConfigurationError` and unsupported-feature errors come from the record or the
code and count toward `POISON_MAX_ATTEMPTS`.

**Timeouts** (`is_timeout`) are outages for every caller but the one that applies a batch of records: a statement
cancelled by `statement_timeout`, PostgreSQL's `transaction_timeout` (25P04, which PostgreSQL 17+ reports by closing
the connection) and asyncpg's `command_timeout` (`TimeoutError`) may be a sick server or one record that is slow
(a trigger, a lock held on its row). Applying a batch, the worker isolates the record by bisection and counts a
record's timeout against `POISON_MAX_ATTEMPTS` only when it timed out alone and the same kind of write by others
passes right after (`TimeoutStrikes`); a timeout that others share is waited out like any outage. A cancel by an
administrator (57014 with another message) stays a plain outage. The server's message tells them apart, as
`lc_messages` in English writes it (the default); under another language every 57014 stays an outage.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
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
# 25P03, 42501, 42P01 and XX000-XX002: an inline call that ran long, a revoked grant, a renamed table, a storage
# fault. Counted as poison, each would dead-letter every command of the incident as `processing_error`.
OUTAGE_SQLSTATES: Final = frozenset(
    {"25006", "25P03", "25P04", "55P03", "3D000", "42501", "42P01", "XX000", "XX001", "XX002"}
)
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
    asyncpg.IdleInTransactionSessionTimeoutError,
    asyncpg.LockNotAvailableError,
    asyncpg.InsufficientPrivilegeError,
    asyncpg.UndefinedTableError,
    asyncpg.InternalServerError,
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


_STATEMENT_TIMEOUT: Final = "canceling statement due to statement timeout"
_TRANSACTION_TIMEOUT: Final = "due to transaction timeout"


def is_timeout(exc: BaseException) -> bool:
    """A time limit hit while a statement or a transaction ran (see the module's docstring)."""
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", None)
        message = exc.args[0] if exc.args and isinstance(exc.args[0], str) else ""
        if sqlstate == "57014":
            return message.startswith(_STATEMENT_TIMEOUT)
        if sqlstate == "25P04":
            return True
        # PostgreSQL 17+ ends the session on `transaction_timeout`: asyncpg reports the lost connection with the
        # server's message.
        return isinstance(exc, asyncpg.ConnectionDoesNotExistError) and _TRANSACTION_TIMEOUT in message
    if isinstance(exc, asyncpg.InterfaceError) and isinstance(exc.__context__, asyncpg.PostgresError):
        # `async with conn.transaction()` cannot roll back on a connection the server closed: its own error
        # replaces the server's, which is kept as the context.
        return is_timeout(exc.__context__)
    return isinstance(exc, TimeoutError)


def is_waited_out(exc: BaseException) -> bool:
    """An outage to wait out where a timeout is not: applying a batch, which isolates timeouts instead."""
    return is_outage(exc) and not is_timeout(exc)


@dataclass(slots=True)
class TimeoutStrikes:
    """For records that time out alone: poison after `limit` timeouts, each followed by a probe of the same writes
    that passed (others pass). A timeout whose probe failed too is the server's, not the record's: no strike."""

    limit: int
    _strikes: dict[Hashable, int] = field(default_factory=dict)

    def timed_out(self, record: Hashable, *, others_pass: bool) -> int | None:
        """The record's strikes so far, or None once it is poison."""
        strikes = self._strikes.get(record, 0) + others_pass
        self._strikes[record] = strikes
        return None if strikes >= self.limit else strikes


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

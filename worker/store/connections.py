"""Provider connections' state, shared by every replica through PostgreSQL (SPEC §9, settled 2026-12-06).

`credentials_refused`: a 401/403 paused every job of the connection; one replica at a time makes a test call every
probe interval (`paused_until` is when the next is due) and the first that succeeds resumes the connection.
`rate_limited`: a 429; no job of the connection is claimed before `paused_until` (the answer's `Retry-After`), and
the next successful call marks it working again. A connection without a row is working.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal, NamedTuple

from worker.store.jobs import Pool

ConnectionState = Literal["working", "credentials_refused", "rate_limited"]
CONNECTION_STATES: Final[tuple[ConnectionState, ...]] = ("working", "credentials_refused", "rate_limited")
Key = tuple[str, str]
"""(organization id, connection code)."""

# A refused credential is never downgraded by a 429, and repeated refusals keep the probe schedule; a 429 extends a
# pause, never shortens it.
_PAUSE: Final = (
    "INSERT INTO provider_connections AS s (organization_id, code, state, paused_until, last_error_code) "
    "VALUES ($1, $2, $3, now() + make_interval(secs => $4), $5) ON CONFLICT (organization_id, code) DO UPDATE SET "
    "state = CASE WHEN s.state = 'credentials_refused' THEN s.state ELSE excluded.state END, "
    "paused_until = CASE WHEN s.state = 'credentials_refused' THEN s.paused_until "
    "WHEN s.state = excluded.state THEN greatest(s.paused_until, excluded.paused_until) "
    "ELSE excluded.paused_until END, "
    "since = CASE WHEN s.state = excluded.state OR s.state = 'credentials_refused' THEN s.since ELSE now() END, "
    "last_error_code = excluded.last_error_code, updated_at = now() "
    "RETURNING state, since = now() AS changed"
)
_RESUME: Final = (
    "UPDATE provider_connections SET state = 'working', paused_until = NULL, since = now(), updated_at = now() "
    "WHERE organization_id = $1 AND code = $2 AND state <> 'working' RETURNING state"
)
_CLAIM_PROBES: Final = (
    "UPDATE provider_connections AS s SET paused_until = now() + make_interval(secs => $3), updated_at = now() "
    "FROM unnest($1::text[], $2::text[]) AS c(organization_id, code) "
    "WHERE s.organization_id = c.organization_id AND s.code = c.code "
    "AND s.state = 'credentials_refused' AND s.paused_until <= now() RETURNING s.organization_id, s.code"
)
_STATES: Final = (
    "SELECT organization_id, code, state FROM provider_connections WHERE state <> 'working' "
    "AND (organization_id, code) IN (SELECT * FROM unnest($1::text[], $2::text[]))"
)
# Per connection: its state and the age of its oldest open job (provider_jobs_connection_open_idx).
_REPORT: Final = (
    "SELECT c.organization_id, c.code, coalesce(s.state, 'working') AS state, "
    "coalesce(extract(epoch FROM now() - o.created_at), 0)::float8 AS oldest "
    "FROM unnest($1::text[], $2::text[]) AS c(organization_id, code) "
    "LEFT JOIN provider_connections AS s ON s.organization_id = c.organization_id AND s.code = c.code "
    "LEFT JOIN LATERAL (SELECT j.created_at FROM provider_jobs AS j WHERE j.organization_id = c.organization_id "
    "AND j.connection_code = c.code AND j.status IN ('pending', 'running') ORDER BY j.id LIMIT 1) AS o ON true"
)
# Every open job, whichever connection (one no replica knows included): provider_jobs_open_age_idx.
_OLDEST_OPEN: Final = (
    "SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 FROM provider_jobs "
    "WHERE status IN ('pending', 'running')"
)


class ConnectionReport(NamedTuple):
    key: Key
    state: ConnectionState
    oldest_open_seconds: float


def _state(value: str) -> ConnectionState:
    for state in CONNECTION_STATES:
        if state == value:
            return state
    raise ValueError("unknown state in provider_connections")


async def pause(pool: Pool, key: Key, state: ConnectionState, seconds: float, error_code: str) -> bool:
    """Record a refusal (`credentials_refused`) or a rate limit for `seconds`; True when the state changed."""
    row = await pool.fetchrow(_PAUSE, key[0], key[1], state, max(seconds, 0.0), error_code)
    return bool(row is not None and row["changed"])


async def resume(pool: Pool, key: Key) -> bool:
    """The connection works (a test call or a job's call succeeded); True when it was paused."""
    return await pool.fetchval(_RESUME, key[0], key[1]) is not None


async def claim_probes(pool: Pool, keys: Sequence[Key], interval: float) -> list[Key]:
    """The refused connections among `keys` whose test call is due, each taken by one replica only: the next one is
    scheduled `interval` seconds on at once, whatever this one's outcome."""
    if not keys:
        return []
    rows = await pool.fetch(_CLAIM_PROBES, [k[0] for k in keys], [k[1] for k in keys], interval)
    return [(row["organization_id"], row["code"]) for row in rows]


async def paused_states(pool: Pool, keys: Sequence[Key]) -> dict[Key, ConnectionState]:
    """The connections among `keys` that are not working, with their state."""
    if not keys:
        return {}
    rows = await pool.fetch(_STATES, [k[0] for k in keys], [k[1] for k in keys])
    return {(row["organization_id"], row["code"]): _state(row["state"]) for row in rows}


async def report(pool: Pool, keys: Sequence[Key]) -> tuple[list[ConnectionReport], float]:
    """Each connection's state and oldest open job, and the oldest open job of any connection."""
    rows = await pool.fetch(_REPORT, [k[0] for k in keys], [k[1] for k in keys]) if keys else []
    oldest = float(await pool.fetchval(_OLDEST_OPEN))
    reports = [
        ConnectionReport((row["organization_id"], row["code"]), _state(row["state"]), row["oldest"]) for row in rows
    ]
    return reports, oldest

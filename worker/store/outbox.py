"""The transactional outbox (SPEC §5): writing result events in the caller's transaction, and the parked events
the broker refused for good (SPEC §12)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import asyncpg

from worker.contract.codes import RefusalReason
from worker.domain.events import OutboxEvent
from worker.store.db import Conn

_COLUMNS: Final = "event_id, event_key, event_type, traceparent, payload, schema_id"
_TYPES: Final = ("uuid", "text", "text", "text", "bytea", "int8")


def insert_sql(first: int = 1) -> str:
    """The insert of `event_arrays`, its parameters numbered from `first` (to be part of a larger statement)."""
    arrays = ", ".join(f"${first + index}::{kind}[]" for index, kind in enumerate(_TYPES))
    return f"INSERT INTO outbox ({_COLUMNS}) SELECT * FROM unnest({arrays})"


_INSERT: Final = insert_sql()


def event_arrays(events: Sequence[OutboxEvent]) -> tuple[list[Any], ...]:
    """The parameters of `insert_sql`: one array per column. Rows get increasing ids in the given order (the
    relay's order)."""
    return (
        [event.event_id for event in events],
        [event.key for event in events],
        [event.event_type for event in events],
        [event.traceparent for event in events],
        [event.payload for event in events],
        [event.schema_id for event in events],
    )


async def write_events(conn: Conn, events: Sequence[OutboxEvent]) -> None:
    """One statement for all of them, in the given order."""
    if events:
        await conn.execute(_INSERT, *event_arrays(events))


# -- parked events (SPEC §12) ----------------------------------------------------------------------------------------

_PARK: Final = (
    "WITH refused AS (SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[]) AS r(id, reason, error)), "
    "moved AS (DELETE FROM outbox o USING refused r WHERE o.id = r.id "
    "RETURNING o.id, o.event_id, o.event_key, o.event_type, o.traceparent, o.payload, o.created_at, r.reason, r.error, "
    "o.schema_id) INSERT INTO parked_events (outbox_id, event_id, event_key, event_type, traceparent, payload, "
    "created_at, reason, error, schema_id) SELECT * FROM moved ORDER BY id"
)
_LIST: Final = (
    "SELECT id, outbox_id, event_id, event_key, event_type, octet_length(payload) AS size, created_at, parked_at, "
    "reason, error FROM parked_events WHERE ($1::bigint[] IS NULL OR id = ANY($1)) AND ($2::text IS NULL OR "
    "reason = $2) AND ($3::text IS NULL OR event_type = $3) ORDER BY id LIMIT $4"
)


@dataclass(frozen=True, slots=True)
class Refusal:
    """The broker's refusal of one outbox row, for good: the row is parked with its reason."""

    outbox_id: int
    reason: RefusalReason
    error: str


@dataclass(frozen=True, slots=True)
class ParkedFilter:
    """Which parked events an operator means; every field None means all of them."""

    ids: Sequence[int] | None = None
    reason: str | None = None
    event_type: str | None = None


async def park(conn: Conn, refusals: Sequence[Refusal]) -> None:
    """Move refused outbox rows to `parked_events`, with their reason, in the caller's transaction."""
    if refusals:
        await conn.execute(
            _PARK,
            [refusal.outbox_id for refusal in refusals],
            [refusal.reason for refusal in refusals],
            [refusal.error[:500] for refusal in refusals],
        )


async def list_parked(conn: Conn, selection: ParkedFilter, limit: int) -> list[asyncpg.Record]:
    ids = list(selection.ids) if selection.ids is not None else None
    return list(await conn.fetch(_LIST, ids, selection.reason, selection.event_type, limit))

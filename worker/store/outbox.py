"""Writing result events to the transactional outbox (SPEC §5), in the caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from worker.domain.events import OutboxEvent
from worker.store.db import Conn

_INSERT: Final = (
    "INSERT INTO outbox (event_id, event_key, event_type, traceparent, payload) "
    "SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bytea[])"
)


async def write_events(conn: Conn, events: Sequence[OutboxEvent]) -> None:
    """One statement for all of them; rows get increasing ids in the given order (the relay's order)."""
    if events:
        await conn.execute(
            _INSERT,
            [event.event_id for event in events],
            [event.key for event in events],
            [event.event_type for event in events],
            [event.traceparent for event in events],
            [event.payload for event in events],
        )

"""`customer-worker outbox list` and `customer-worker outbox republish`: the parked events (SPEC §12).

An event the broker refused for good (too large for `KAFKA_MAX_REQUEST_SIZE` or the broker's `message.max.bytes`,
or refused as invalid) is moved by the relay from the outbox to `parked_events`. `list` shows them (one JSON object
per line, payload left out); `republish` moves the chosen ones back to the end of the outbox, where a running
worker's relay publishes them with their original `event_id`, or parks them again if they are still refused.
Only `DATABASE_URL` is needed: nothing is sent from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import orjson
from pydantic import SecretStr

from worker.settings import revealed
from worker.store.outbox import ParkedFilter, list_parked, republish_parked


def _line(row: asyncpg.Record) -> str:
    fields: dict[str, Any] = {
        "id": row["id"],
        "event_id": str(row["event_id"]),
        "event_type": row["event_type"],
        "event_key": row["event_key"],
        "size": row["size"],
        "reason": row["reason"],
        "error": row["error"],
        "created_at": row["created_at"].isoformat(),
        "parked_at": row["parked_at"].isoformat(),
    }
    return orjson.dumps(fields).decode()


async def list_events(dsn: SecretStr | str, selection: ParkedFilter, limit: int) -> list[str]:
    conn = await asyncpg.connect(revealed(dsn))
    try:
        return [_line(row) for row in await list_parked(conn, selection, limit)]
    finally:
        await conn.close()


async def republish(dsn: SecretStr | str, selection: ParkedFilter) -> int:
    conn = await asyncpg.connect(revealed(dsn))
    try:
        async with conn.transaction():
            return await republish_parked(conn, selection)
    finally:
        await conn.close()


def selection_of(ids: Sequence[int] | None, reason: str | None, event_type: str | None) -> ParkedFilter:
    return ParkedFilter(ids=list(ids) if ids else None, reason=reason, event_type=event_type)

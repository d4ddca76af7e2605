"""Do writes like a batch's pass right now? Asked after a record timed out alone (`worker.outages.TimeoutStrikes`).

The probe takes the table locks a batch's writes take (so it waits behind a migration's lock as a batch would) and
inserts into the inbox, through the same pool, under the same `statement_timeout` and `command_timeout`; then rolls
back, leaving nothing behind. If it passes, the server is answering writes and the record's timeout is the record's;
if not, the timeout was the server's.
"""

from __future__ import annotations

from typing import Final

import asyncpg

from worker.store.db import Conn, connection

_LOCKS: Final = "LOCK TABLE processed_messages, customers, outbox, provider_jobs IN ROW EXCLUSIVE MODE"
# An organization id no command can carry (SPEC §2 requires one), and a fresh message id: no conflict to wait on.
_INBOX: Final = "INSERT INTO processed_messages (organization_id, message_id) VALUES ('', gen_random_uuid()::text)"


async def probe_writes(conn: Conn) -> None:
    transaction = conn.transaction()
    await transaction.start()
    try:
        await conn.execute(_LOCKS)
        await conn.execute(_INBOX)
    finally:
        await transaction.rollback()


async def probe(pool: asyncpg.Pool[asyncpg.Record]) -> None:
    """`probe_writes` on a connection of `pool`, as a batch would get one."""
    async with connection(pool) as conn:
        await probe_writes(conn)

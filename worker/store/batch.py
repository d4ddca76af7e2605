"""The SQL of one batch's transaction (SPEC §4 and §5): set-based statements only, no decisions.

`batch_transaction` opens the unit of work, `BatchTransaction` runs its statements; the story around them (what is
a duplicate, how commands fold, which events and jobs follow) is `worker.service`'s, over `worker.domain.fold`.
Six statements at most, whatever the batch size: the inbox insert, the customers' lock, the look-up of creates in
hand (only when a command asks for a create for a stored, unlinked customer), the id key (once per process), the
customers' upsert with the events' insert (one statement), the provider jobs (only when there are some).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Final

import asyncpg

from worker.contract.decode import Admitted
from worker.domain.customer import CustomerState
from worker.domain.events import OutboxEvent
from worker.domain.fold import BatchSummary, CustomerKey, InboxKey, Outcome, ProviderJob
from worker.store.console import count_answers
from worker.store.db import connection
from worker.store.outbox import event_arrays, insert_sql
from worker.store.rows import (
    SELECT_FOR_UPDATE,
    IdentityConflictError,
    rows_json,
    state_from_row,
    state_json,
    upsert_sql,
)

_INBOX: Final = (
    "INSERT INTO processed_messages (organization_id, message_id) "
    "SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING "
    "RETURNING organization_id, message_id"
)
# Data-modifying CTEs run once each, read or not: the events are written whether or not any customer is.
_WRITE: Final = f"WITH written AS ({upsert_sql()}), events AS ({insert_sql(2)}) SELECT count(*) FROM written"
# No conflict target: a job already recorded for the command (`provider_jobs_once`) and a second create for a
# customer and connection whose create is in hand (`provider_jobs_one_create_idx`) are both left out.
_JOBS: Final = (
    "INSERT INTO provider_jobs "
    "(organization_id, customer_id, message_id, kind, provider, connection_code, traceparent, request, "
    "next_attempt_at) "
    "SELECT o, c, m, k, p, cc, t, r, now() + make_interval(secs => d) FROM unnest($1::text[], $2::uuid[], "
    "$3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::jsonb[], $9::float8[]) "
    "WITH ORDINALITY AS x(o, c, m, k, p, cc, t, r, d, n) ORDER BY n ON CONFLICT DO NOTHING"
)
_ACTIVE_CREATES: Final = (
    "SELECT customer_id, connection_code FROM provider_jobs "
    "WHERE customer_id = ANY($1::uuid[]) AND kind = 'create' AND status IN ('pending', 'running')"
)
_ID_KEY: Final = "SELECT value FROM id_keys WHERE name = 'customer_ids'"
# The database's key of customer ids, read once per process when the first customer is created.
_id_key: list[bytes] = []

EnqueuedJob = tuple[CustomerState, ProviderJob, str | None]
"""(customer, job, traceparent)."""


@asynccontextmanager
async def batch_transaction(pool: asyncpg.Pool[asyncpg.Record]) -> AsyncIterator[BatchTransaction]:
    """One connection, one transaction: committed when the block ends, rolled back if it raises."""
    async with connection(pool) as conn:
        try:
            async with conn.transaction():
                yield BatchTransaction(conn)
        except asyncpg.ReadOnlySQLTransactionError:
            # A demoted primary keeps answering read-only on this connection: drop it, so that the next attempt
            # connects again (to the new primary, once the DSN's name or host list leads there).
            conn.terminate()
            raise


class BatchTransaction:
    def __init__(self, conn: asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]):
        self._conn = conn

    async def record_in_inbox(self, keys: Sequence[InboxKey]) -> set[InboxKey]:
        """Records the message ids; returns those that were not there yet (the others are duplicates)."""
        if not keys:
            return set()
        organizations, message_ids = zip(*keys, strict=True)
        return {(row[0], row[1]) for row in await self._conn.fetch(_INBOX, organizations, message_ids)}

    async def lock_customers(self, keys: Iterable[CustomerKey]) -> dict[CustomerKey, CustomerState]:
        """Loads and locks the stored customers among `keys` (new ones are simply absent)."""
        keys = list(keys)
        if not keys:
            return {}
        organizations, external_ids = zip(*keys, strict=True)
        rows = await self._conn.fetch(SELECT_FOR_UPDATE, organizations, external_ids)
        return {(state.organization_id, state.external_id): state for state in map(state_from_row, rows)}

    async def active_creates(self, customers: Iterable[CustomerState]) -> dict[uuid.UUID, frozenset[str]]:
        """Connections with a create in hand, per stored customer not linked yet (read under the customers' locks)."""
        # Every unlinked customer: a create may still be in hand for a connection the customer has since left.
        unlinked = [state.id for state in customers if not state.provider_customer_id]
        if not unlinked:
            return {}
        active: dict[uuid.UUID, set[str]] = {}
        for row in await self._conn.fetch(_ACTIVE_CREATES, unlinked):
            active.setdefault(uuid.UUID(bytes=row[0].bytes), set()).add(row[1])
        return {customer: frozenset(codes) for customer, codes in active.items()}

    async def id_key(self) -> bytes:
        """The key new customers' ids derive from (`worker.ids.customer_id`)."""
        if not _id_key:
            _id_key.append(await self._conn.fetchval(_ID_KEY))
        return _id_key[0]

    async def write(self, customers: Sequence[CustomerState], events: Sequence[OutboxEvent]) -> None:
        """Upserts the customers and inserts the events into the outbox, in one statement."""
        if not customers and not events:
            return
        written = await self._conn.fetchval(_WRITE, rows_json(list(customers)), *event_arrays(events))
        if written != len(customers):
            raise IdentityConflictError("a customer id is taken by another organization or external id")

    async def count_for_console(
        self, fresh: Sequence[Admitted], outcomes: Iterable[Outcome], summary: BatchSummary, now: datetime
    ) -> None:
        """The console's counts of this minute (`store.console`), in the batch's transaction."""
        await count_answers(self._conn, fresh, outcomes, summary.outcome_counts(), now)

    async def enqueue_jobs(self, jobs: Sequence[EnqueuedJob]) -> None:
        if not jobs:
            return
        await self._conn.execute(
            _JOBS,
            [state.organization_id for state, _, _ in jobs],
            [state.id for state, _, _ in jobs],
            [job.message_id for _, job, _ in jobs],
            [job.kind for _, job, _ in jobs],
            [job.provider for _, job, _ in jobs],
            [job.connection_code for _, job, _ in jobs],
            [traceparent for _, _, traceparent in jobs],
            [None if job.request is None else state_json(job.request) for _, job, _ in jobs],
            [job.delay for _, job, _ in jobs],
        )

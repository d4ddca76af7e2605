"""Retention pruning and the backlog figures (`worker.store.maintenance`), against the real PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest

from tests.harness.database import migrate_database
from worker.store.maintenance import open_provider_jobs, outbox_backlog, prune_retained

pytestmark = [pytest.mark.timeout(60)]


async def test_prune_retained_deletes_only_answered_ids_older_than_the_retention_in_chunks(
    fresh_database: str,
) -> None:
    await migrate_database(fresh_database)
    pool = await asyncpg.create_pool(fresh_database, min_size=1, max_size=2)
    assert pool is not None
    try:
        await pool.execute(
            "INSERT INTO processed_messages (organization_id, message_id, processed_at) "
            "SELECT 'org', 'old-' || n, now() - interval '8 days' FROM generate_series(1, 5) AS n"
        )
        await pool.execute(
            "INSERT INTO processed_messages (organization_id, message_id) "
            "SELECT 'org', 'new-' || n FROM generate_series(1, 3) AS n"
        )
        await prune_retained(pool, timedelta(days=7), chunk=2)  # 5 old rows: three chunks, the last one short
        left = sorted(row[0] for row in await pool.fetch("SELECT message_id FROM processed_messages"))
        assert left == ["new-1", "new-2", "new-3"]
        backlog = await outbox_backlog(pool)
        assert (backlog.rows, backlog.oldest_seconds) == (0, 0.0)
        assert await open_provider_jobs(pool, statement_timeout=5.0) == {}
    finally:
        await pool.close()

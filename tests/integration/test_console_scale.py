"""`worker_bench.console_scale.seed_console_scale` (issue 20): the rows the console's page timings run against."""

from __future__ import annotations

import asyncpg

from worker_bench.console_scale import seed_console_scale


async def test_seed_writes_n_dead_letters_and_provider_jobs(
    pool: asyncpg.Pool[asyncpg.Record], fresh_database: str
) -> None:
    timings = await seed_console_scale(fresh_database, n=3000)
    assert set(timings) >= {"dead_letters", "provider_jobs", "customers", "answer_counts", "rejection_counts"}
    assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 3000
    assert await pool.fetchval("SELECT count(*) FROM provider_jobs") == 3000
    states = {r["status"] for r in await pool.fetch("SELECT DISTINCT status FROM provider_jobs")}
    assert states == {"pending", "running", "failed", "done", "skipped"}
    stuck = await pool.fetchval("SELECT count(*) FROM provider_jobs WHERE status = 'running' AND lease_until < now()")
    assert stuck > 0
    assert await pool.fetchval("SELECT count(DISTINCT reason) FROM dead_letters") == 5
    assert await pool.fetchval("SELECT count(*) FROM answer_counts") == 1440 * 6 * 2
    # Synthetic identifiers only: the customers carry no personal field.
    assert await pool.fetchval("SELECT count(*) FROM customers WHERE coalesce(name, email, phone) IS NOT NULL") == 0

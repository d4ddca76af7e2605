"""Fixtures shared by the integration tests (the servers themselves come from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.harness.database import migrate_database
from worker.store.db import create_pool


@pytest.fixture
async def pool(fresh_database: str) -> AsyncIterator[asyncpg.Pool[asyncpg.Record]]:
    """A small pool of the worker's own kind on a fresh, migrated database."""
    await migrate_database(fresh_database)
    pool = await create_pool(fresh_database, size=2)
    try:
        yield pool
    finally:
        await pool.close()

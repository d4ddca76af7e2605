"""Fixtures of the fault tests: worker processes that never outlive their test, a migrated database, and a
PostgreSQL server of the test's own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.harness.database import migrate_database
from tests.harness.processes import Launcher
from worker.dev import EmbeddedPostgres


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    workers = Launcher(tmp_path)
    try:
        yield workers
    finally:
        workers.cleanup()


@pytest.fixture
async def migrated_database(fresh_database: str) -> str:
    await migrate_database(fresh_database)
    return fresh_database


@pytest.fixture
async def own_postgres(tmp_path: Path) -> AsyncIterator[EmbeddedPostgres]:
    """A migrated PostgreSQL server of the test's own, running; durable commits (`fast=False`, so what was committed
    survives `kill()`)."""
    server = EmbeddedPostgres(tmp_path / "pgdata", fast=False)
    await asyncio.to_thread(server.start)
    try:
        await migrate_database(server.dsn)
        yield server
    finally:
        await asyncio.to_thread(server.stop)

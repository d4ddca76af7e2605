"""Fixtures of the fault tests: worker processes that never outlive their test, and a migrated database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.harness import Launcher, migrate_database


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

"""One worker process per adversarial module, on the session's PostgreSQL and broker, with topics of its own."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.harness.adversarial import Stack, worker_stack


@pytest.fixture(scope="module")
async def stack(
    kafka_bootstrap: str, pg_dsn: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> AsyncIterator[Stack]:
    overrides: dict[str, str] = getattr(request.module, "WORKER_SETTINGS", {})
    async with worker_stack(kafka_bootstrap, pg_dsn, tmp_path_factory.mktemp("adversarial"), overrides) as running:
        yield running

"""A real worker, in-process, on its own topics and database, with its HTTP port: for the observability tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aiohttp

from tests.integration.worker_stack import RunningWorker, running_worker


class LiveWorker(RunningWorker):
    async def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            assert response.status == 200
            return await response.text()


@contextlib.asynccontextmanager
async def live_worker(dsn: str, kafka_bootstrap: str) -> AsyncIterator[LiveWorker]:
    """A worker on the database `dsn` (migrated here), one partition per topic, ready."""
    async with running_worker(
        dsn,
        kafka_bootstrap,
        "live",
        kind=LiveWorker,
        fresh_database=False,
        partitions=1,
        extra_env={"SHUTDOWN_TIMEOUT": "5"},
        ready_timeout=60,
    ) as live:
        yield live

"""A real worker, in-process, on its own topics and database, with its HTTP port: for the observability tests."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest

from tests.integration.helpers import migrate_database
from worker.app import EXIT_OK, Worker, load_configuration
from worker.devstack import create_topics, free_port
from worker.settings import Settings


@dataclass
class LiveWorker:
    worker: Worker
    http_port: int
    topics: dict[str, str]

    async def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            assert response.status == 200
            return await response.text()


async def wait_ready(port: int, timeout: float = 60) -> None:  # noqa: ASYNC109
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as session:
        while loop.time() < deadline:
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise AssertionError(f"worker not ready after {timeout} s")


@contextlib.asynccontextmanager
async def live_worker(dsn: str, kafka_bootstrap: str) -> AsyncIterator[LiveWorker]:
    suffix = uuid.uuid4().hex[:12]
    topics = {role: f"test.live.{role}.{suffix}" for role in ("commands", "events", "dlq")}
    await create_topics(kafka_bootstrap, list(topics.values()), partitions=1)
    await migrate_database(dsn)
    port = free_port()
    with pytest.MonkeyPatch.context() as env:
        for name, value in {
            "DATABASE_URL": dsn,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "COMMANDS_TOPIC": topics["commands"],
            "EVENTS_TOPIC": topics["events"],
            "DLQ_TOPIC": topics["dlq"],
            "KAFKA_GROUP_ID": f"test-live-{suffix}",
            "KAFKA_ENABLE_IDEMPOTENCE": "false",
            "KAFKA_SESSION_TIMEOUT_MS": "6000",
            "HTTP_PORT": str(port),
            "SHUTDOWN_TIMEOUT": "5",
        }.items():
            env.setenv(name, value)
        for name in ("PROVIDERS_FILE", "SIGNING_KEYS_FILE", "REQUIRE_SIGNATURES"):
            env.delenv(name, raising=False)
        worker = Worker(load_configuration(Settings()))
    task = asyncio.create_task(worker.run(install_signal_handlers=False))
    try:
        await wait_ready(port)
        yield LiveWorker(worker, port, topics)
    finally:
        worker.request_stop()
        assert await asyncio.wait_for(task, timeout=30) == EXIT_OK

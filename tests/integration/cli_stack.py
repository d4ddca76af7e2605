"""A worker running in-process on fresh topics and a fresh database, and the environment the CLI needs to reach
it: shared by the CLI tests (dlq replay, publish, events tail, metrics)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from tests.conftest import new_database
from tests.integration.helpers import migrate_database
from worker.app import EXIT_OK, Worker, load_configuration
from worker.devstack import create_topics, free_port
from worker.settings import KafkaSettings, Settings

PARTITIONS = 3
_CLEARED = ("PROVIDERS_FILE", "SIGNING_KEYS_FILE", "REQUIRE_SIGNATURES")


@dataclass
class Stack:
    bootstrap: str
    topics: dict[str, str]
    dsn: str
    http_port: int
    worker: Worker
    producer: Any
    env: dict[str, str]

    def kafka_settings(self) -> KafkaSettings:
        return KafkaSettings(
            kafka_bootstrap_servers=self.bootstrap,
            commands_topic=self.topics["commands"],
            events_topic=self.topics["events"],
            dlq_topic=self.topics["dlq"],
            kafka_enable_idempotence=False,
        )

    def cli_env(self, **extra: str) -> dict[str, str]:
        """The process environment a user would have after `eval "$(customer-worker dev --print-env)"`."""
        base = {k: v for k, v in os.environ.items() if k not in self.env and k not in _CLEARED}
        client = {k: v for k, v in self.env.items() if k not in ("KAFKA_GROUP_ID", "KAFKA_SESSION_TIMEOUT_MS")}
        return {**base, **client, **extra}

    def cli(self, *args: str, stdin: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`customer-worker ARGS` as a subprocess (stdout, stderr captured as text)."""
        return subprocess.run(
            [sys.executable, "-m", "worker", *args],
            input=stdin.decode() if stdin is not None else None,
            env=self.cli_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    async def publish(self, value: bytes, *, key: bytes | None = None, partition: int | None = None) -> Any:
        return await self.producer.send_and_wait(self.topics["commands"], value=value, key=key, partition=partition)


async def wait_ready(port: int, task: asyncio.Task[int], timeout: float = 30) -> None:  # noqa: ASYNC109
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as session:
        while loop.time() < deadline:
            if task.done():
                raise AssertionError(f"worker stopped early with {task.result()}")
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise AssertionError(f"/readyz not ready after {timeout} s")


@contextlib.asynccontextmanager
async def running_stack(pg_dsn: str, bootstrap: str, name: str) -> AsyncIterator[Stack]:
    async with new_database(pg_dsn, f"test_{name}") as dsn:
        await migrate_database(dsn)
        suffix = uuid.uuid4().hex[:12]
        topics = {role: f"test.{name}.{role}.{suffix}" for role in ("commands", "events", "dlq")}
        await create_topics(bootstrap, list(topics.values()), partitions=PARTITIONS)
        http_port = free_port()
        env = {
            "DATABASE_URL": dsn,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "COMMANDS_TOPIC": topics["commands"],
            "EVENTS_TOPIC": topics["events"],
            "DLQ_TOPIC": topics["dlq"],
            "KAFKA_GROUP_ID": f"test-{name}-{suffix}",
            "KAFKA_ENABLE_IDEMPOTENCE": "false",
            "KAFKA_SESSION_TIMEOUT_MS": "6000",
            "HTTP_PORT": str(http_port),
        }
        with pytest_env(env):
            worker = Worker(load_configuration(Settings()))
        task = asyncio.create_task(worker.run(install_signal_handlers=False), name=f"worker-{name}")
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
        await producer.start()
        try:
            await wait_ready(http_port, task)
            yield Stack(bootstrap, topics, dsn, http_port, worker, producer, env)
        finally:
            await producer.stop()
            worker.request_stop()
            code = await asyncio.wait_for(task, timeout=30)
        assert code == EXIT_OK


@contextlib.contextmanager
def pytest_env(values: dict[str, str]) -> Iterator[None]:
    """`values` set and the optional worker files unset, for building a worker's Settings."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in values.items():
            patch.setenv(key, value)
        for key in _CLEARED:
            patch.delenv(key, raising=False)
        yield

"""A real `Worker` running in-process on topics and (optionally) a database of its own, with a producer for its
commands topic and its HTTP port ready: the stack of the pipeline, CLI, tracing and observability tests.

`running_worker` yields once /readyz answers 200 and stops the worker on exit, asserting it exits with EXIT_OK.
`running_stack` adds the environment the CLI needs to reach it (dlq replay, publish, events tail, metrics);
`live_worker` one on a given database with its `/metrics` (the observability tests)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from tests.harness.database import migrate_database, new_database
from tests.harness.records import environ_without, run_cli
from worker.app import EXIT_OK, Worker, load_configuration
from worker.dev import create_topics, free_port
from worker.settings import KafkaSettings, Settings

# Optional worker files a developer's shell may set; a test worker runs without them unless a test sets them.
CLEARED_SETTINGS = ("PROVIDERS_FILE", "SIGNING_KEYS_FILE", "REQUIRE_SIGNATURES")
DEFAULT_MAX_REQUEST_SIZE = 1024 * 1024  # aiokafka's default


@dataclass
class RunningWorker:
    bootstrap: str
    topics: dict[str, str]
    dsn: str
    http_port: int
    worker: Worker
    producer: Any
    env: dict[str, str]
    readiness: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # every /readyz answer until 200

    async def publish(
        self, value: bytes | None, *, key: bytes | None = None, headers: Sequence[tuple[str, bytes]] = (), **kwargs: Any
    ) -> Any:
        """Send one record to the commands topic; returns aiokafka's RecordMetadata (partition, offset)."""
        return await self.producer.send_and_wait(
            self.topics["commands"], value=value, key=key, headers=list(headers), **kwargs
        )

    @contextlib.asynccontextmanager
    async def db(self) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
        conn = await asyncpg.connect(self.dsn)
        try:
            yield conn
        finally:
            await conn.close()

    def kafka_settings(self, **overrides: Any) -> KafkaSettings:
        values: dict[str, Any] = {
            "kafka_bootstrap_servers": self.bootstrap,
            "commands_topic": self.topics["commands"],
            "events_topic": self.topics["events"],
            "dlq_topic": self.topics["dlq"],
            "kafka_enable_idempotence": False,
            **overrides,
        }
        return KafkaSettings(**values)


W = TypeVar("W", bound=RunningWorker)


@contextlib.contextmanager
def worker_settings_env(values: Mapping[str, str]) -> Iterator[None]:
    """`values` set and the optional worker files unset, for building a worker's Settings."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in values.items():
            patch.setenv(key, value)
        for key in CLEARED_SETTINGS:
            patch.delenv(key, raising=False)
        yield


async def wait_ready(port: int, task: asyncio.Task[int], timeout: float = 30) -> list[tuple[int, dict[str, Any]]]:  # noqa: ASYNC109
    """Poll /readyz from the moment the port accepts until it answers 200; every answer seen, in order."""
    seen: list[tuple[int, dict[str, Any]]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as session:
        while loop.time() < deadline:
            if task.done():
                raise AssertionError(f"worker stopped early with {task.result()}")
            try:
                async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                    seen.append((response.status, await response.json()))
                    if response.status == 200:
                        return seen
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"/readyz not ready after {timeout} s: {seen[-1:]}")


@contextlib.asynccontextmanager
async def running_worker(
    dsn: str,
    bootstrap: str,
    name: str,
    *,
    kind: type[W],
    fresh_database: bool = True,
    partitions: int = 3,
    extra_env: Mapping[str, str] | None = None,
    max_request_size: int = DEFAULT_MAX_REQUEST_SIZE,
    ready_timeout: float = 30,
) -> AsyncIterator[W]:
    """A worker on topics `test.NAME.ROLE.SUFFIX` of `partitions` partitions, and on a new database `test_NAME_...`
    of the server `dsn` (or, with `fresh_database=False`, on the database `dsn` itself), migrated here; `extra_env`
    adds or overrides settings. Yields a `kind` once the worker is ready."""
    async with contextlib.AsyncExitStack() as resources:
        if fresh_database:
            dsn = await resources.enter_async_context(new_database(dsn, f"test_{name}"))
        await migrate_database(dsn)
        suffix = uuid.uuid4().hex[:12]
        topics = {role: f"test.{name}.{role}.{suffix}" for role in ("commands", "events", "dlq")}
        await create_topics(bootstrap, list(topics.values()), partitions=partitions)
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
            "SHUTDOWN_TIMEOUT": "10",
            **(extra_env or {}),
        }
        with worker_settings_env(env):
            worker = Worker(load_configuration(Settings()))
        task = asyncio.create_task(worker.run(install_signal_handlers=False), name=f"worker-{name}")
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, enable_idempotence=False, max_request_size=max_request_size
        )
        await producer.start()
        try:
            readiness = await wait_ready(http_port, task, timeout=ready_timeout)
            yield kind(bootstrap, topics, dsn, http_port, worker, producer, env, readiness)
        finally:
            await producer.stop()
            worker.request_stop()
            code = await asyncio.wait_for(task, timeout=30)
        assert code == EXIT_OK


# ----------------------------------------------------------------------------------------------------------------
# The CLI's view of a running worker
# ----------------------------------------------------------------------------------------------------------------

CLI_PARTITIONS = 3


class Stack(RunningWorker):
    def cli_env(self, **extra: str) -> dict[str, str]:
        """The process environment a user would have after `eval "$(customer-worker dev --print-env)"`."""
        base = environ_without({*self.env, *CLEARED_SETTINGS})
        client = {k: v for k, v in self.env.items() if k not in ("KAFKA_GROUP_ID", "KAFKA_SESSION_TIMEOUT_MS")}
        return {**base, **client, **extra}

    def cli(self, *args: str, stdin: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`customer-worker ARGS` as a subprocess (stdout, stderr captured as text)."""
        return run_cli(*args, env=self.cli_env(), stdin=stdin.decode() if stdin is not None else None, timeout=timeout)


@contextlib.asynccontextmanager
async def running_stack(pg_dsn: str, bootstrap: str, name: str) -> AsyncIterator[Stack]:
    async with running_worker(pg_dsn, bootstrap, name, kind=Stack, partitions=CLI_PARTITIONS) as stack:
        yield stack


# ----------------------------------------------------------------------------------------------------------------
# A worker on a given database, for the observability tests
# ----------------------------------------------------------------------------------------------------------------


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

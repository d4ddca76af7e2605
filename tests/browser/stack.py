"""The stack the browser tests drive: a real worker (Kafka in, PostgreSQL, a Stripe connection on the local fake)
and the console (its job runner and lag reader included), on an event loop of their own in a background thread,
because Playwright's sync API cannot share the test's loop. `call` runs a coroutine there and waits for it."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
from aiohttp import web

from tests.fakes.stripe_fake import DEFAULT_STRIPE_KEY, FakeStripe
from tests.harness.database import migrate_database, new_database
from worker.app import Worker, load_configuration
from worker.console.auth import TokenStore
from worker.console.lag import LagMonitor
from worker.console.server import build_app
from worker.dev import create_topics, free_port
from worker.ops.jobs import JobRunner
from worker.settings import ConsoleSettings, KafkaSettings, Settings

T = TypeVar("T")
ORG = "org_console"
OPERATOR_TOKEN = "operator-" + uuid.uuid4().hex
VIEWER_TOKEN = "viewer-" + uuid.uuid4().hex


def tokens_file(folder: Path) -> Path:
    from worker.console.auth import hash_token

    path = folder / "console-tokens.yaml"
    path.write_text(
        "tokens:\n"
        f"  - {{name: ops-alice, role: operator, sha256: {hash_token(OPERATOR_TOKEN)}}}\n"
        f"  - {{name: viewer-bob, role: viewer, sha256: {hash_token(VIEWER_TOKEN)}}}\n",
        encoding="utf-8",
    )
    return path


class ConsoleStack:
    def __init__(self, pg_dsn: str, bootstrap: str, folder: Path) -> None:
        self.pg_dsn = pg_dsn
        self.bootstrap = bootstrap
        self.folder = folder
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="console-stack", daemon=True)
        self.stripe = FakeStripe()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._exit = contextlib.AsyncExitStack()
        self.env: dict[str, str] = {}
        self.pool: asyncpg.Pool[asyncpg.Record] | None = None

    def call(self, work: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(work, self.loop)
        return future.result(timeout)

    def start(self) -> ConsoleStack:
        self.stripe.start()
        self.thread.start()
        self.call(self._start())
        return self

    def stop(self) -> None:
        try:
            self.call(self._exit.aclose())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.stripe.stop()

    async def _start(self) -> None:
        dsn = await self._exit.enter_async_context(new_database(self.pg_dsn, "test_console"))
        await migrate_database(dsn)
        suffix = uuid.uuid4().hex[:12]
        topics = {role: f"test.console.{role}.{suffix}" for role in ("commands", "events", "dlq")}
        await create_topics(self.bootstrap, list(topics.values()), partitions=2)
        providers = self.folder / "providers.yaml"
        providers.write_text(
            "connections:\n"
            f"  - organization_id: {ORG}\n"
            "    code: stripe_main\n"
            "    provider: stripe\n"
            "    secret_env: CONSOLE_TEST_STRIPE_KEY\n"
            f"    api_base: {self.stripe.url}\n",
            encoding="utf-8",
        )
        self.env = {
            "DATABASE_URL": dsn,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "COMMANDS_TOPIC": topics["commands"],
            "EVENTS_TOPIC": topics["events"],
            "DLQ_TOPIC": topics["dlq"],
            "KAFKA_GROUP_ID": f"test-console-{suffix}",
            "KAFKA_ENABLE_IDEMPOTENCE": "false",
            "KAFKA_SESSION_TIMEOUT_MS": "6000",
            "HTTP_PORT": str(free_port()),
            "SHUTDOWN_TIMEOUT": "10",
            "PROVIDERS_FILE": str(providers),
            "CONSOLE_TEST_STRIPE_KEY": DEFAULT_STRIPE_KEY,
            "PROVIDER_MAX_ATTEMPTS": "1",  # a refused create fails at once: the console's retry is the subject
        }
        with pytest.MonkeyPatch.context() as patch:
            for name, value in self.env.items():
                patch.setenv(name, value)
            patch.delenv("SIGNING_KEYS_FILE", raising=False)
            patch.delenv("REQUIRE_SIGNATURES", raising=False)
            worker = Worker(load_configuration(Settings()))
        task = asyncio.create_task(worker.run(install_signal_handlers=False), name="console-test-worker")

        async def stop_worker() -> None:
            worker.request_stop()
            await asyncio.wait_for(task, 30)

        self._exit.push_async_callback(stop_worker)
        while not worker.health.ready:
            if task.done():
                raise AssertionError(f"worker stopped early: {task.result()}")
            await asyncio.sleep(0.05)
        self.pool = await asyncpg.create_pool(dsn, min_size=1, max_size=8)
        self._exit.push_async_callback(self.pool.close)
        kafka = self.kafka_settings()
        # One item a second: a job lasts long enough for its page to show it running, poll, and be cancelled.
        console = ConsoleSettings(console_port=self.port, console_job_rate=1.0)
        lag = LagMonitor(kafka, interval=1.0)
        app = build_app(self.pool, console, kafka, tokens=TokenStore.load(tokens_file(self.folder)), lag=lag)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._exit.push_async_callback(runner.cleanup)
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        lag.start()
        self._exit.push_async_callback(lag.stop)
        jobs = JobRunner(self.pool, kafka, poll_seconds=0.2)
        jobs_task = asyncio.create_task(jobs.run(), name="console-test-jobs")

        async def stop_jobs() -> None:
            await jobs.stop()
            await asyncio.wait_for(jobs_task, 30)

        self._exit.push_async_callback(stop_jobs)

    def kafka_settings(self) -> KafkaSettings:
        return KafkaSettings(
            kafka_bootstrap_servers=self.bootstrap,
            kafka_group_id=self.env["KAFKA_GROUP_ID"],
            commands_topic=self.env["COMMANDS_TOPIC"],
            events_topic=self.env["EVENTS_TOPIC"],
            dlq_topic=self.env["DLQ_TOPIC"],
            kafka_enable_idempotence=False,
        )

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        assert self.pool is not None
        return await self.pool.fetch(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        assert self.pool is not None
        return await self.pool.fetchval(sql, *args)

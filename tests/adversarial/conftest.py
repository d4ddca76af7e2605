"""One worker process per adversarial module, on the session's PostgreSQL and broker, with topics of its own."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from tests.adversarial.helpers import Stack, Tail
from tests.conftest import new_database
from tests.faults.harness import Launcher, migrate_database, worker_env
from worker.dev import create_topics

PARTITIONS = 3


@pytest.fixture(scope="module")
async def stack(
    kafka_bootstrap: str, pg_dsn: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> AsyncIterator[Stack]:
    overrides: dict[str, str] = getattr(request.module, "WORKER_SETTINGS", {})
    suffix = uuid.uuid4().hex[:10]
    topics = {role: f"adv.{role}.{suffix}" for role in ("commands", "events", "dlq")}
    await create_topics(kafka_bootstrap, list(topics.values()), partitions=PARTITIONS)
    launcher = Launcher(tmp_path_factory.mktemp("adversarial"))
    async with new_database(pg_dsn, prefix="adv") as dsn:
        await migrate_database(dsn)
        env = worker_env(
            database_url=dsn, bootstrap=kafka_bootstrap, topics=topics, group_id=f"adv-{suffix}", **overrides
        )
        worker = launcher.start(env, name="adversarial")
        events, dlq = Tail(kafka_bootstrap, topics["events"]), Tail(kafka_bootstrap, topics["dlq"])
        try:
            await worker.wait_http("/readyz", 200, timeout=60)
            await events.start()
            await dlq.start()
            yield Stack(kafka_bootstrap, topics, dsn, PARTITIONS, worker, events, dlq)
        finally:
            await events.stop()
            await dlq.stop()
            launcher.cleanup()

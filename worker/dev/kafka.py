"""Kafka admin helpers for tests and `dev`: wait for a broker, create topics and wait for their leaders."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from worker.ops.topics import created_topics


@contextlib.asynccontextmanager
async def _admin(bootstrap: str, request_timeout_ms: int = 10_000) -> AsyncIterator[Any]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=request_timeout_ms)
    try:
        await admin.start()
        yield admin
    finally:
        await admin.close()


async def wait_for_kafka(bootstrap: str, timeout: float = 30.0) -> None:  # noqa: ASYNC109 - public API
    """Wait until a broker at `bootstrap` answers a metadata request; TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            async with _admin(bootstrap, request_timeout_ms=2_000) as admin:
                await admin.list_topics()
                return
        except (TimeoutError, KafkaError, OSError) as exc:
            last_error = exc
        await asyncio.sleep(0.1)
    msg = f"Kafka at {bootstrap} did not answer within {timeout} s (last error: {last_error!r})"
    raise TimeoutError(msg)


async def create_topics(bootstrap: str, topics: list[str], partitions: int = 1, replication: int = 1) -> None:
    """Create `topics`; one that already exists counts as created (its partition count is left as it is).

    Returns once the broker's metadata lists every topic with a leader for each partition. Raises the matching
    aiokafka error for any other per-topic error code.
    """
    if not topics:
        return
    async with _admin(bootstrap) as admin:
        created_topics(await admin.create_topics([NewTopic(name, partitions, replication) for name in topics]))
        try:
            async with asyncio.timeout(10.0):
                await _wait_for_topics(admin, topics)
        except TimeoutError as exc:
            msg = f"topics {topics} created but not all of them have partition leaders after 10 s"
            raise TimeoutError(msg) from exc


async def _wait_for_topics(admin: Any, topics: list[str]) -> None:
    while True:
        described = await admin.describe_topics(topics)
        ready = {
            t["topic"]
            for t in described
            if t["error_code"] == 0 and t["partitions"] and all(p["leader"] >= 0 for p in t["partitions"])
        }
        if ready >= set(topics):
            return
        await asyncio.sleep(0.05)

"""Metrics of a live worker (issue 14): build info, provider jobs counted from the database, no `_created` series,
and the list of metrics in docs/operations.md equal to what `/metrics` serves."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from importlib.metadata import version
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.in_process import Stack, running_stack
from tests.harness.records import command, encode, key_of, payload, read_topic

pytestmark = pytest.mark.timeout(120)

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


@pytest.fixture(scope="module")
async def stack(pg_dsn: str, kafka_bootstrap: str) -> AsyncIterator[Stack]:
    async with running_stack(pg_dsn, kafka_bootstrap, "climetrics") as running:
        yield running


async def _scrape(stack: Stack) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{stack.http_port}/metrics") as response,
    ):
        assert response.status == 200
        return await response.text()


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def documented_metrics() -> set[str]:
    text = OPERATIONS.read_text(encoding="utf-8")
    section = text.split("\n## HTTP endpoints and metrics\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"`(customer_worker_[a-z_]+)`", section))


async def test_the_operations_guide_lists_exactly_the_metrics_served(stack: Stack) -> None:
    text = await _scrape(stack)
    served = set(re.findall(r"^# TYPE (customer_worker_[a-z_]+) ", text, flags=re.MULTILINE))
    assert served, text[:500]
    assert documented_metrics() == served


async def test_no_created_series_and_build_info_carries_the_version(stack: Stack) -> None:
    text = await _scrape(stack)
    assert "_created" not in text
    assert _samples(text, "customer_worker_build_info") == {(("version", version("customer-worker")),): 1.0}


async def test_provider_jobs_gauge_follows_the_database(stack: Stack) -> None:
    org = f"org_{uuid.uuid4().hex[:10]}"
    document = command(org, {"external_id": "cus_jobs"})
    await stack.publish(encode(document), key=key_of(document))
    records = await read_topic(
        stack.bootstrap,
        stack.topics["events"],
        until=lambda rs: any(payload(r).get("message_id") == document["message_id"] for r in rs),
    )
    [event] = [payload(r) for r in records if payload(r).get("message_id") == document["message_id"]]
    conn = await asyncpg.connect(stack.dsn)
    try:
        # No connection is configured, so no runner takes the jobs: they stay as written. Pushes (`update`), since a
        # customer holds one create in hand at most.
        await conn.execute(
            "INSERT INTO provider_jobs (organization_id, customer_id, message_id, kind, provider, connection_code, "
            "status) SELECT $1, $2::uuid, 'm-' || n, 'update', 'stripe', 'stripe_main', "
            "CASE WHEN n < 3 THEN 'pending' ELSE 'running' END FROM generate_series(1, 4) AS n",
            org,
            event["customer"]["lago_id"],
        )
        await _until_gauge(stack, {"pending": 2.0, "running": 2.0})
        await conn.execute("UPDATE provider_jobs SET status = 'done' WHERE organization_id = $1", org)
        await _until_gauge(stack, {"pending": 0.0, "running": 0.0})
    finally:
        await conn.close()


async def _until_gauge(stack: Stack, expected: dict[str, float], timeout: float = 30) -> None:  # noqa: ASYNC109
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        samples = _samples(await _scrape(stack), "customer_worker_provider_jobs")
        seen = {labels[0][1]: value for labels, value in samples.items()}
        if seen == expected:
            return
        assert loop.time() < deadline, f"provider_jobs stayed {seen}, expected {expected}"
        await asyncio.sleep(0.5)

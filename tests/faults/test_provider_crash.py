"""SPEC §12 under SIGKILL: one Stripe customer per customer, whatever the crashes and concurrent commands (issue 10).

Three real worker processes share a backlog of 300 customers. A third of them get two or three create commands back
to back (some with `sync: true`), so a second create arrives while the first is pending or in flight. The Stripe
fake answers creates late, and replicas are SIGKILLed while creates are in flight, then restarted. After quiescence
the Stripe fake holds exactly one customer per customer, every customer is linked to it, each Stripe customer carries
the last command's name, and every command has its result event.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from tests.fakes.stripe_fake import DEFAULT_STRIPE_KEY, FakeStripe
from tests.harness.processes import (
    Command,
    Launcher,
    WorkerProcess,
    check_exactly_once,
    progress,
    publish_commands,
    read_events,
    read_records,
    worker_env,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes/text content:DeprecationWarning"),
]

CUSTOMERS = 300
CREATE = "/v1/customers"
FINISHED = ("done", "skipped", "failed")


def _seed() -> int:
    seed = int(os.environ.get("FAULTS_SEED", str(random.SystemRandom().randrange(2**32))))
    print(f"FAULTS_SEED={seed}")
    return seed


def provider_commands(rng: random.Random, organization_id: str) -> list[Command]:
    """Every customer gets a create; a third get two or three, back to back, some of them `sync: true`."""
    commands: list[Command] = []
    for index in range(CUSTOMERS):
        repeats = rng.choice((2, 3)) if index % 3 == 0 else 1
        for _ in range(repeats):
            billing: dict[str, Any] = {"payment_provider": "stripe", "sync_with_provider": True}
            if rng.random() < 0.3:
                billing["sync"] = True
            commands.append(
                Command(
                    message_id=str(uuid.uuid4()),
                    organization_id=organization_id,
                    external_id=f"cus_{index:05d}",
                    seq=len(commands),
                    billing=billing,
                )
            )
    return commands


@pytest.fixture
def stripe_fake() -> Iterator[FakeStripe]:
    with FakeStripe() as fake:
        yield fake


async def _jobs_by_status(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT status, count(*) AS n FROM provider_jobs GROUP BY status")
    finally:
        await conn.close()
    return {row["status"]: row["n"] for row in rows}


async def _quiescent(dsn: str, organization_id: str, total: int, workers: list[WorkerProcess]) -> None:
    """Every command applied, every provider job finished, every event published."""
    deadline = time.monotonic() + 240  # a killed replica's leased jobs come back after the 60 s lease
    while True:
        seen = await progress(dsn, organization_id)
        jobs = await _jobs_by_status(dsn)
        unfinished = sum(count for status, count in jobs.items() if status not in FINISHED)
        if seen is not None and seen.processed >= total and seen.outbox == 0 and unfinished == 0:
            return
        assert any(worker.alive for worker in workers), "\n".join(worker.tail() for worker in workers)
        assert time.monotonic() < deadline, f"not quiescent: {seen}, jobs {jobs}"
        await asyncio.sleep(0.5)


@pytest.mark.timeout(420)
async def test_kill_9_during_creates_leaves_one_linked_stripe_customer_per_customer(
    kafka_bootstrap: str,
    unique_topics: dict[str, str],
    migrated_database: str,
    launcher: Launcher,
    stripe_fake: FakeStripe,
) -> None:
    rng = random.Random(_seed())
    org = f"org_{uuid.uuid4().hex[:8]}"
    commands = provider_commands(rng, org)
    providers = launcher.log_dir / "providers.yaml"
    providers.write_text(
        "connections:\n"
        f"  - organization_id: {org}\n"
        "    code: stripe_main\n"
        "    provider: stripe\n"
        "    secret_env: FAULTS_STRIPE_KEY\n"
        f"    api_base: {stripe_fake.url}\n"
        "    rate_limit_per_second: 100\n"
    )
    env = worker_env(
        database_url=migrated_database,
        bootstrap=kafka_bootstrap,
        topics=unique_topics,
        group_id=f"faults-{uuid.uuid4().hex[:8]}",
        BATCH_SIZE="20",
        KAFKA_SESSION_TIMEOUT_MS="3000",
        PROVIDERS_FILE=str(providers),
        FAULTS_STRIPE_KEY=DEFAULT_STRIPE_KEY,
        PROVIDER_SYNC_BUDGET="1",
    )
    # Creates are executed at once but answered late, so kills land while they are in flight (some answers are
    # lost: the retry must meet Stripe's stored result under the same key and the same request).
    stripe_fake.delay_next(0.4, times=10_000, after_processing=True, method="POST", path=CREATE)
    await publish_commands(kafka_bootstrap, unique_topics["commands"], commands)

    workers = [launcher.start(env, name=f"replica-{n}") for n in range(3)]
    for kill in range(3):
        # Wait for creates in flight, then SIGKILL one replica and start a fresh one in its place.
        target = (kill + 1) * CUSTOMERS // 5
        deadline = time.monotonic() + 120
        while len(stripe_fake.requests_to("POST", CREATE)) < target:
            assert time.monotonic() < deadline, f"fewer than {target} creates after 120 s"
            await asyncio.sleep(0.05)
        victim = workers.pop(rng.randrange(len(workers)))
        victim.kill()
        print(f"killed {victim.name} with {len(stripe_fake.requests_to('POST', CREATE))} creates sent")
        workers.append(launcher.start(env, name=f"replica-{kill + 3}"))

    await _quiescent(migrated_database, org, len(commands), workers)
    events = await read_events(kafka_bootstrap, unique_topics["events"])
    check = await check_exactly_once(migrated_database, commands, events)  # every command has its result event
    assert not await read_records(kafka_bootstrap, unique_topics["dlq"], quiet=0.5)

    last_name = {command.external_id: command.name for command in commands}
    conn = await asyncpg.connect(migrated_database)
    try:
        rows = await conn.fetch(
            "SELECT id, external_id, provider_customer_id FROM customers WHERE organization_id = $1", org
        )
        failed = await conn.fetchval("SELECT count(*) FROM provider_jobs WHERE status = 'failed'")
    finally:
        await conn.close()
    assert failed == 0
    by_external: dict[str, list[dict[str, Any]]] = {}
    for customer in stripe_fake.customers.values():
        by_external.setdefault(customer["metadata"]["customer_id"], []).append(customer)
    duplicated = {ext: len(found) for ext, found in by_external.items() if len(found) != 1}
    assert not duplicated, f"{len(duplicated)} customers with several Stripe customers: {list(duplicated.items())[:3]}"
    assert len(rows) == len(by_external) == CUSTOMERS
    for row in rows:
        (stripe_customer,) = by_external[row["external_id"]]
        assert row["provider_customer_id"] == stripe_customer["id"], f"{row['external_id']} not linked"
        assert stripe_customer["metadata"]["lago_customer_id"] == str(row["id"])
        assert stripe_customer["name"] == last_name[row["external_id"]], f"{row['external_id']} has an older name"
    created: dict[str, set[str]] = {}
    for event in events:
        if event.event_type == "customer.payment_provider_created" and event.body["organization_id"] == org:
            created.setdefault(event.body["external_id"], set()).add(event.event_id)
    assert {ext: len(ids) for ext, ids in created.items()} == dict.fromkeys(last_name, 1)
    print(f"{check}; Stripe requests: {len(stripe_fake.requests)}")
    for worker in workers:
        worker.terminate()

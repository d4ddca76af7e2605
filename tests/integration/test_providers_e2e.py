"""End to end on the embedded stack: a real `Worker` (Kafka in, PostgreSQL, events out) with a Stripe connection
pointing at the local Stripe fake, driven through the real SDK (SPEC §9 and §11)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.fakes.stripe_fake import DEFAULT_STRIPE_KEY, FakeStripe
from tests.harness.database import migrate_database, new_database
from tests.harness.records import command, encode, key_of, payload, read_topic
from worker.app import EXIT_OK, Worker, load_configuration
from worker.contract.events import CustomerCreated, PaymentProviderCreated
from worker.dev import create_topics, free_port
from worker.settings import Settings

pytestmark = pytest.mark.timeout(90)

ORG = "org_providers_e2e"


@pytest.fixture(scope="module")
def stripe_fake() -> Iterator[FakeStripe]:
    with FakeStripe() as fake:
        yield fake


@pytest.fixture(scope="module")
def providers_file(stripe_fake: FakeStripe, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("providers") / "providers.yaml"
    path.write_text(
        "connections:\n"
        f"  - organization_id: {ORG}\n"
        "    code: stripe_main\n"
        "    provider: stripe\n"
        "    secret_env: E2E_STRIPE_KEY\n"
        f"    api_base: {stripe_fake.url}\n"
    )
    return path


@pytest.fixture(scope="module")
async def worker_env(pg_dsn: str, kafka_bootstrap: str, providers_file: Path) -> AsyncIterator[dict[str, str]]:
    async with new_database(pg_dsn, "test_providers") as dsn:
        await migrate_database(dsn)
        yield await _environment(dsn, kafka_bootstrap, providers_file)


async def _environment(dsn: str, kafka_bootstrap: str, providers_file: Path) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:12]
    topics = {role: f"test.providers.{role}.{suffix}" for role in ("commands", "events", "dlq")}
    await create_topics(kafka_bootstrap, list(topics.values()), partitions=1)
    return {
        "DATABASE_URL": dsn,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "COMMANDS_TOPIC": topics["commands"],
        "EVENTS_TOPIC": topics["events"],
        "DLQ_TOPIC": topics["dlq"],
        "KAFKA_GROUP_ID": f"test-providers-{suffix}",
        "KAFKA_ENABLE_IDEMPOTENCE": "false",
        "KAFKA_SESSION_TIMEOUT_MS": "6000",
        "HTTP_PORT": str(free_port()),
        "SHUTDOWN_TIMEOUT": "10",
        "PROVIDERS_FILE": str(providers_file),
        "E2E_STRIPE_KEY": DEFAULT_STRIPE_KEY,
    }


@pytest.fixture(scope="module")
async def running(worker_env: dict[str, str]) -> AsyncIterator[dict[str, str]]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in worker_env.items():
            patch.setenv(name, value)
        worker = Worker(load_configuration(Settings()))
    task = asyncio.create_task(worker.run(install_signal_handlers=False))
    try:
        yield worker_env
    finally:
        worker.request_stop()
        assert await asyncio.wait_for(task, timeout=30) == EXIT_OK


async def _publish(env: dict[str, str], document: dict[str, Any]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"], enable_idempotence=False)
    await producer.start()
    try:
        await producer.send_and_wait(env["COMMANDS_TOPIC"], value=encode(document), key=key_of(document))
    finally:
        await producer.stop()


async def _events(env: dict[str, str], message_id: str, count: int) -> list[dict[str, Any]]:
    def mine(records: list[Any]) -> list[dict[str, Any]]:
        return [payload(r) for r in records if r.value and payload(r).get("message_id") == message_id]

    records = await read_topic(
        env["KAFKA_BOOTSTRAP_SERVERS"], env["EVENTS_TOPIC"], until=lambda rs: len(mine(rs)) >= count, timeout=45
    )
    return mine(records)


def _stripe_creates(fake: FakeStripe, external_id: str) -> list[Any]:
    return [
        request
        for request in fake.requests_to("POST", "/v1/customers")
        if orjson.dumps(request.body).find(external_id.encode()) >= 0 and request.status == 200
    ]


async def test_sync_with_provider_creates_the_customer_in_the_background(
    running: dict[str, str], stripe_fake: FakeStripe
) -> None:
    document = command(
        ORG,
        {
            "external_id": "cus_bg",
            "name": "Background Ltd",
            "billing_configuration": {"payment_provider": "stripe", "sync_with_provider": True},
        },
    )
    await _publish(running, document)
    events = await _events(running, document["message_id"], count=2)
    kinds = [event["event_type"] for event in events]
    assert kinds[:2] == ["customer.created", "customer.payment_provider_created"]
    created = CustomerCreated.model_validate(events[0])
    assert created.customer.billing_configuration.provider_customer_id is None
    assert created.customer.billing_configuration.payment_provider_code == "stripe_main"
    linked = PaymentProviderCreated.model_validate(events[1])
    provider_id = linked.customer.billing_configuration.provider_customer_id
    assert provider_id is not None and provider_id in stripe_fake.customers
    assert len(_stripe_creates(stripe_fake, "cus_bg")) == 1


async def test_sync_true_puts_the_provider_id_on_the_created_event(
    running: dict[str, str], stripe_fake: FakeStripe
) -> None:
    document = command(
        ORG,
        {
            "external_id": "cus_inline",
            "name": "Inline SAS",
            "billing_configuration": {"payment_provider": "stripe", "sync_with_provider": True, "sync": True},
        },
    )
    await _publish(running, document)
    events = await _events(running, document["message_id"], count=2)
    assert [event["event_type"] for event in events][:2] == ["customer.created", "customer.payment_provider_created"]
    created = CustomerCreated.model_validate(events[0])
    provider_id = created.customer.billing_configuration.provider_customer_id
    assert provider_id is not None and provider_id in stripe_fake.customers
    assert PaymentProviderCreated.model_validate(events[1]).customer.billing_configuration.provider_customer_id == (
        provider_id
    )
    # No background create was left: the batch wrote no create job for the customer, so none can ever run.
    jobs = await _jobs(running, created.customer.lago_id)
    assert "create" not in [kind for kind, _ in jobs]
    assert len(_stripe_creates(stripe_fake, "cus_inline")) == 1


async def _jobs(env: dict[str, str], lago_id: Any) -> list[tuple[str, str]]:
    conn = await asyncpg.connect(env["DATABASE_URL"])
    try:
        rows = await conn.fetch("SELECT kind, status FROM provider_jobs WHERE customer_id = $1", lago_id)
    finally:
        await conn.close()
    return [(row["kind"], row["status"]) for row in rows]


async def test_readyz_names_a_stopped_provider_runner(
    worker_env: dict[str, str], pg_dsn: str, kafka_bootstrap: str, providers_file: Path
) -> None:
    env = await _environment(worker_env["DATABASE_URL"], kafka_bootstrap, providers_file)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        worker = Worker(load_configuration(Settings()))
    others = {t for t in asyncio.all_tasks() if t.get_name() == "provider_runner"}  # other workers' runners
    task = asyncio.create_task(worker.run(install_signal_handlers=False))
    base = f"http://127.0.0.1:{env['HTTP_PORT']}"
    try:
        async with aiohttp.ClientSession() as session:
            while not worker.health.ready:  # noqa: ASYNC110 - waits for the worker's own readiness
                await asyncio.sleep(0.05)
            assert "customer_worker_provider_runner_up 1.0" in worker.metrics.render().decode()
            # Whatever ends it (the runner itself outlives every error), a stopped runner is not ready.
            (runner,) = [t for t in asyncio.all_tasks() if t.get_name() == "provider_runner" and t not in others]
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
            async with session.get(f"{base}/readyz") as response:
                assert response.status == 503
                assert (await response.json())["not_ready"] == ["provider_runner"]
            assert "customer_worker_provider_runner_up 0.0" in worker.metrics.render().decode()
    finally:
        worker.request_stop()
        assert await asyncio.wait_for(task, timeout=30) == EXIT_OK

"""`customer-worker dev`: an embedded PostgreSQL and Tansu broker on loopback, migrated, topics created, and the
worker running until Ctrl-C; with `--demo`, a short scripted run that publishes sample commands, prints the events
they produce and stops everything."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer

from worker.app import Worker, load_configuration
from worker.devstack import embedded_stack
from worker.security import SigningKeys
from worker.settings import KafkaSettings, Settings
from worker.store import migrations
from worker.tools.publish import publish_values
from worker.tools.topics import create_topics
from worker.transport.options import client_options


def default_data_dir() -> Path:
    """`.devstack/` in the source checkout when run from one, else a per-user cache folder."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and os.access(checkout, os.W_OK):
        return checkout / ".devstack"
    return Path.home() / ".cache" / "customer-worker" / "devstack"


async def prepare(settings: Settings, partitions: int) -> None:
    await migrations.migrate_dsn(settings.database_url)
    await create_topics(settings, partitions=partitions, replication=1)


def dev_environment(dsn: str, bootstrap: str) -> dict[str, str]:
    return {"DATABASE_URL": dsn, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_ENABLE_IDEMPOTENCE": "false"}


async def run_dev(data_dir: Path, *, demo: bool, partitions: int) -> int:
    with embedded_stack(data_dir) as (dsn, bootstrap):
        os.environ.update(dev_environment(dsn, bootstrap))
        settings = Settings()
        await prepare(settings, partitions)
        print(f"embedded stack up: DATABASE_URL={dsn} KAFKA_BOOTSTRAP_SERVERS={bootstrap}", file=sys.stderr)
        worker = Worker(load_configuration(settings))
        if not demo:
            return await worker.run()
        task = asyncio.create_task(worker.run(install_signal_handlers=False))
        try:
            await run_demo(settings)
        finally:
            worker.request_stop()
            code = await task
        return code


def demo_commands(run_id: str) -> list[bytes]:
    organization = "org_demo"
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    create = {
        "message_id": f"demo-{run_id}-1",
        "organization_id": organization,
        "occurred_at": now,
        "customer": {
            "external_id": f"cus_{run_id}",
            "name": "Acme Inc",
            "email": "billing@acme.example",
            "country": "fr",
            "currency": "EUR",
            "timezone": "Europe/Paris",
            "metadata": [{"key": "segment", "value": "smb", "display_in_invoice": True}],
            "billing_configuration": {"document_locale": "fr", "invoice_grace_period": 3},
        },
    }
    update = {
        "message_id": f"demo-{run_id}-2",
        "organization_id": organization,
        "occurred_at": now,
        "customer": {"external_id": f"cus_{run_id}", "net_payment_term": 30, "tax_codes": ["vat_fr"]},
    }
    invalid = {
        "message_id": f"demo-{run_id}-3",
        "organization_id": organization,
        "customer": {"external_id": f"cus_{run_id}_bad", "country": "XX", "currency": "usd", "email": "not-an-email"},
    }
    return [orjson.dumps(create), orjson.dumps(update), orjson.dumps(invalid), orjson.dumps(update)]


async def run_demo(settings: KafkaSettings, wait_seconds: float = 30.0) -> None:
    run_id = uuid.uuid4().hex[:8]
    commands = demo_commands(run_id)
    consumer = AIOKafkaConsumer(
        settings.events_topic, **client_options(settings), group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        await publish_values(settings, commands, SigningKeys({}))
        print(
            f"published {len(commands)} commands: a create, an update, an invalid one and a duplicate of the update",
            file=sys.stderr,
        )
        expected = {f"demo-{run_id}-{n}" for n in (1, 2, 3)}
        seen: set[str] = set()
        deadline = asyncio.get_running_loop().time() + wait_seconds
        while seen != expected and asyncio.get_running_loop().time() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    event = orjson.loads(record.value)
                    if event.get("message_id") in expected:
                        seen.add(event["message_id"])
                        print(orjson.dumps(event, option=orjson.OPT_INDENT_2).decode())
        missing = expected - seen
        if missing:
            raise RuntimeError(f"no event for {sorted(missing)} within {wait_seconds} s")
        print(
            "demo done: 3 events for 4 commands (the duplicate was acknowledged without a new event)", file=sys.stderr
        )
    finally:
        await consumer.stop()

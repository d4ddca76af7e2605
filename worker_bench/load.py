"""The load of `customer-worker bench`: the servers, a fresh database per run, the generated commands, the
producer that fills the commands topic, and the progress line."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

from worker.dev import embedded_stack
from worker.store import migrations
from worker_bench.validation import MUTATIONS, valid_customer

ORGANIZATION = "org_bench"
INVALID_SHARE = 0.05


@dataclass(frozen=True, slots=True)
class Servers:
    admin_dsn: str
    bootstrap: str


@contextlib.contextmanager
def servers(data_dir: str | None) -> Iterator[Servers]:
    dsn, bootstrap = os.environ.get("DATABASE_URL"), os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if dsn and bootstrap:
        yield Servers(dsn, bootstrap)
        return
    with (
        tempfile.TemporaryDirectory(prefix="cw-bench-", dir=data_dir) as folder,
        embedded_stack(Path(folder)) as (dsn, bootstrap),
    ):
        yield Servers(dsn, bootstrap)


def _with_database(dsn: str, name: str) -> str:
    base, _, query = dsn.partition("?")
    head, _, _ = base.rpartition("/")
    return f"{head}/{name}" + (f"?{query}" if query else "")


async def fresh_database(admin_dsn: str, name: str) -> str:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    dsn = _with_database(admin_dsn, name)
    await migrations.migrate_dsn(dsn)
    return dsn


def _customer_body(rng: random.Random, index: int, *, providers: bool) -> dict[str, Any]:
    body = valid_customer(rng, index)
    if not providers:
        billing = body["billing_configuration"]
        for name in ("payment_provider", "payment_provider_code", "provider_customer_id", "sync", "sync_with_provider"):
            billing.pop(name, None)
        billing.pop("provider_payment_methods", None)
    return body


def build_commands(count: int, *, seed: int, providers: bool, prefix: str) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs: a create for each customer, then updates, with 5% invalid commands mixed in."""
    rng = random.Random(seed)
    customers = max(count // 2, 1)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    commands = []
    for index in range(count):
        customer_index = index % customers
        body = _customer_body(rng, customer_index, providers=providers)
        body["external_id"] = f"{prefix}_{customer_index:08d}"
        if providers:
            # Linked to the same provider customer on every command: connection lookups and links are exercised,
            # and no command needs a provider call (the figures stay one event per command).
            body["billing_configuration"]["provider_customer_id"] = f"cus_{prefix}_{customer_index:08d}"
        if rng.random() < INVALID_SHARE:
            rng.choice(MUTATIONS)(body)
        document = {
            "message_id": f"{prefix}-{index:09d}",
            "organization_id": ORGANIZATION,
            "occurred_at": (base + timedelta(milliseconds=index)).isoformat(),
            "customer": body,
        }
        commands.append((f"{ORGANIZATION}:{body['external_id']}".encode(), orjson.dumps(document)))
    return commands


@contextlib.asynccontextmanager
async def producer(bootstrap: str, *, linger_ms: int = 5) -> AsyncIterator[AIOKafkaProducer]:
    kafka = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=linger_ms,
        max_batch_size=512 * 1024,
        max_request_size=2 << 20,
    )
    await kafka.start()
    try:
        yield kafka
    finally:
        await kafka.stop()


async def fill(bootstrap: str, topic: str, commands: list[tuple[bytes, bytes]]) -> None:
    async with producer(bootstrap) as kafka:
        for start in range(0, len(commands), 5000):
            chunk = commands[start : start + 5000]
            sends = [await kafka.send(topic, value=value, key=key) for key, value in chunk]
            await asyncio.gather(*sends)
            progress(f"filling {topic}: {start + len(chunk)}/{len(commands)}")
    progress_done()


def progress(line: str) -> None:
    sys.stderr.write(f"\r\x1b[2K{line}")
    sys.stderr.flush()


def progress_done() -> None:
    sys.stderr.write("\n")
    sys.stderr.flush()

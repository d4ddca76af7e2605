"""Shared fixtures, and which tests are slow.

The servers: PostgreSQL and Kafka for the session, started only when a test asks for them.
`DATABASE_URL` / `KAFKA_BOOTSTRAP_SERVERS` point the fixtures at servers you run yourself; without them an
embedded PostgreSQL (`fast=True`) and an in-memory Tansu broker are started on loopback for the session.

What runs where follows the folders (docs/testing.md): every test under one of `SLOW_FOLDERS` is marked `slow` here
and runs only with `scripts/test.sh -m slow`; everything else runs by default. A `slow` marker written on a test
outside them is refused, so the folders stay the one place that says it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Final

import pytest

from tests.containers import postgres_container
from tests.harness.database import new_database
from worker.dev import EmbeddedPostgres, EmbeddedTansu, create_topics

TESTS: Final = Path(__file__).resolve().parent
# faults: the worker killed, signalled, cut off from its servers; soak: long runs and memory bounds under heavy
# input, the benchmark; release: the container image and a real Prometheus (podman, promtool, prometheus).
SLOW_FOLDERS: Final = frozenset({"faults", "soak", "release"})
_OWN_BASETEMP: Final = pytest.StashKey[str]()


def is_slow_path(path: Path) -> bool:
    relative = path.resolve().relative_to(TESTS)
    return len(relative.parts) > 1 and relative.parts[0] in SLOW_FOLDERS


def pytest_configure(config: pytest.Config) -> None:
    """A base temporary folder of this session's own, unless `--basetemp` is given. pytest keeps only the three
    newest `/tmp/pytest-of-USER/pytest-N` folders, so another session started meanwhile on the machine deletes an
    older one in use: a fault test's PostgreSQL data and worker logs vanished under it (pg_ctl: permission denied)."""
    if config.option.basetemp is None:
        config.option.basetemp = tempfile.mkdtemp(prefix="cw-pytest-")
        config.stash[_OWN_BASETEMP] = config.option.basetemp


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The session's own base folder goes when everything passed; after a failure it stays, for the logs."""
    own = session.config.stash.get(_OWN_BASETEMP, None)
    if own is not None and exitstatus == 0:
        shutil.rmtree(own, ignore_errors=True)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    misplaced = []
    for item in items:
        if is_slow_path(item.path):
            item.add_marker(pytest.mark.slow)
        elif item.get_closest_marker("slow") is not None:
            misplaced.append(item.nodeid)
    if misplaced:
        folders = ", ".join(f"tests/{name}/" for name in sorted(SLOW_FOLDERS))
        raise pytest.UsageError(f"marked slow outside the slow folders ({folders}): {', '.join(misplaced)}")


DEFAULT_TEST_PARTITIONS = 3


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

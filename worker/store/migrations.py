"""Versioned schema migrations: numbered SQL files applied in order, recorded in `schema_migrations`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

import asyncpg
from pydantic import SecretStr

from worker.settings import revealed
from worker.store.db import Conn

_LOCK_KEY = 0x6375_7374_6D69_67  # "custmig": one migrator at a time across replicas


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available() -> list[Migration]:
    folder = resources.files("worker.store") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version, _, rest = entry.name.partition("_")
            found.append(Migration(int(version), rest.removesuffix(".sql"), entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda migration: migration.version)


async def _ensure_table(conn: Conn) -> None:
    await conn.execute(
        """CREATE TABLE IF NOT EXISTS schema_migrations (
               version    integer PRIMARY KEY,
               name       text NOT NULL,
               checksum   text NOT NULL,
               applied_at timestamptz NOT NULL DEFAULT now())"""
    )


async def pending(conn: Conn) -> list[Migration]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    applied: set[int] = set()
    if exists:
        applied = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
    return [migration for migration in available() if migration.version not in applied]


async def migrate(conn: Conn) -> list[Migration]:
    """Apply what is pending, each migration in its own transaction; idempotent and safe to run concurrently."""
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await _ensure_table(conn)
        done = []
        for migration in await pending(conn):
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            done.append(migration)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)


async def migrate_dsn(dsn: SecretStr | str) -> list[Migration]:
    """`migrate` over a connection of its own (the CLI, `dev`, the benchmarks and the test fixtures)."""
    conn = await asyncpg.connect(revealed(dsn))
    try:
        return await migrate(conn)
    finally:
        await conn.close()

"""Databases for tests: a new, empty database per test or module on the session's server, and migrations."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from worker.store import migrations


def dsn_with_database(dsn: str, database: str) -> str:
    """`dsn` with its database name replaced (query string, user and host kept)."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


async def migrate_database(dsn: str) -> None:
    await migrations.migrate_dsn(dsn)


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

"""The testcontainers backend of the integration suite (TEST_POSTGRES=container, tests/containers/): a reachable
engine gives a PostgreSQL built from Debian's package; none gives a one-line skip reason."""

from __future__ import annotations

import os

import asyncpg
import pytest

from tests.containers import engine_problem


def test_no_engine_is_one_line_reason(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert engine_problem() == "DOCKER_HOST is not set (e.g. podman system service unix:///run/cw-podman.sock)"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/absent.sock")
    problem = engine_problem()
    assert problem is not None and problem.startswith(f"no engine answers at unix://{tmp_path}/absent.sock")
    assert "\n" not in problem


@pytest.mark.skipif(os.environ.get("TEST_POSTGRES") != "container", reason="TEST_POSTGRES=container not set")
async def test_the_session_postgres_is_debians_in_a_container(pg_dsn: str) -> None:
    connection = await asyncpg.connect(pg_dsn)
    try:
        version = await connection.fetchval("SELECT version()")
    finally:
        await connection.close()
    assert "Debian" in version  # the embedded wheel's build does not say Debian

"""The console over HTTP without a browser: proxy sign-in (trusted addresses only), the Secure cookie behind a TLS
proxy, deny by default, refusals audited. The browser flows are in tests/browser/."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.harness.database import migrate_database
from worker.console.auth import TokenStore
from worker.console.lag import LagMonitor
from worker.console.server import build_app
from worker.settings import ConsoleSettings, KafkaSettings

KAFKA = KafkaSettings(kafka_bootstrap_servers="127.0.0.1:1")  # never reached: the lag reader is not started
PROXY_HEADERS = {"X-Forwarded-User": "carol", "X-Forwarded-Groups": "staff,cw-operators"}


@pytest.fixture
async def pool(fresh_database: str) -> AsyncIterator[asyncpg.Pool[asyncpg.Record]]:
    await migrate_database(fresh_database)
    async with asyncpg.create_pool(fresh_database, min_size=1, max_size=4) as created:
        yield created


async def _client(pool: asyncpg.Pool[asyncpg.Record], trusted: str) -> TestClient:  # type: ignore[type-arg]
    console = ConsoleSettings(console_trusted_proxies=trusted, console_operator_group="cw-operators")
    app = build_app(pool, console, KAFKA, tokens=TokenStore.empty(), lag=LagMonitor(KAFKA))
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def test_a_trusted_proxy_signs_its_user_in_with_the_groups_role(pool: asyncpg.Pool[asyncpg.Record]) -> None:
    client = await _client(pool, "127.0.0.1")
    try:
        response = await client.get("/audit", headers=PROXY_HEADERS, allow_redirects=False)
        assert response.status == 200
        assert "carol" in await response.text() and "operator" in await response.text()
        assert "HttpOnly" in response.headers["Set-Cookie"] and "SameSite=Strict" in response.headers["Set-Cookie"]
        assert "Secure" not in response.headers["Set-Cookie"]
        # The proxy names another user on the same browser: the first user's session is over, not carried on.
        other = await client.get("/audit", headers={"X-Forwarded-User": "dan"})
        assert other.status == 200 and "dan" in await other.text() and "carol" not in await other.text()
        assert "Set-Cookie" in other.headers
        client.session.cookie_jar.clear()
        behind_tls = await client.get("/", headers={**PROXY_HEADERS, "X-Forwarded-Proto": "https"})
        assert "Secure" in behind_tls.headers["Set-Cookie"]
    finally:
        await client.close()


async def test_proxy_headers_from_an_untrusted_address_are_ignored(pool: asyncpg.Pool[asyncpg.Record]) -> None:
    client = await _client(pool, "10.0.0.0/8")
    try:
        response = await client.get("/", headers=PROXY_HEADERS, allow_redirects=False)
        assert response.status == 303 and response.headers["Location"] == "/sign-in"
        assert "Set-Cookie" not in response.headers
    finally:
        await client.close()


async def test_deny_by_default_and_refusals_are_audited(pool: asyncpg.Pool[asyncpg.Record]) -> None:
    client = await _client(pool, "")
    try:
        for path in ("/", "/dead-letters", "/jobs/1", "/audit"):
            response = await client.get(path, allow_redirects=False)
            assert response.status == 303, path
            assert response.headers["X-Frame-Options"] == "DENY"
        post = await client.post("/actions/dlq_replay/start", data={"scope": "matching"})
        assert post.status == 401
        forged_sign_in = await client.post("/sign-in", data={"token": "x"}, headers={"Origin": "http://evil.example"})
        assert forged_sign_in.status == 403
        rows = await pool.fetch("SELECT actor, outcome, filter->>'why' AS why FROM audit_log ORDER BY id")
        assert [(row["actor"], row["outcome"], row["why"]) for row in rows] == [
            ("anonymous", "refused", "not_signed_in"),
            ("anonymous", "refused", "origin"),
        ]
    finally:
        await client.close()


def test_bench_console_prints_every_page_timing(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from worker.cli import main
    from worker_bench.console import PAGES

    monkeypatch.setenv("DATABASE_URL", pg_dsn)  # a database of its own on this server, dropped afterwards
    code = main(["bench-console", "--records", "600", "--rounds", "2"])
    out = capsys.readouterr().out
    assert "seeded 600 dead letters and 600 provider jobs" in out
    assert all(f"\n{page} " in out for page in PAGES)
    assert code == 0 and f"{len(PAGES)} of {len(PAGES)} pages under 300 ms" in out


async def test_a_database_that_is_down_is_a_503_page_not_a_crash() -> None:
    from worker.dev import free_port

    down = await asyncpg.create_pool(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", min_size=0)
    client = await _client(down, "127.0.0.1")
    try:
        response = await client.get("/dead-letters", headers=PROXY_HEADERS)
        assert response.status == 503
        assert "PostgreSQL cannot be reached" in await response.text()
        assert response.headers["Content-Security-Policy"].startswith("default-src 'self'")
    finally:
        await client.close()
        await down.close()


def test_a_console_port_in_use_exits_2_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    from worker.cli import EXIT_CONFIG, main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setenv("CONSOLE_PORT", str(taken.getsockname()[1]))
        monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/postgres")
        monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
        assert main(["console"]) == EXIT_CONFIG
    assert "CONSOLE_PORT: port" in capsys.readouterr().err

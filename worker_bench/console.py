"""`customer-worker bench-console`: every console page's render time with 100,000 dead letters and 100,000 provider
jobs (issue 20 §Scale; the target is under 300 ms a page). A benchmark that prints, not a timed test.

Seeds a new database (an embedded PostgreSQL, or a new database on DATABASE_URL's server, dropped afterwards) with
`worker_bench.console_scale.seed_console_scale` (set-based: dead letters over a week, provider jobs in every state,
a day of answer and rejection counts, parked events, workers, operator jobs, audit rows; nothing personal). Then
serves the console in-process and requests each page `--rounds` times over HTTP, signed in as an operator, and
prints the median and the worst."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
from aiohttp import web

from worker.console.auth import Role, TokenStore, _TokenEntry, hash_token
from worker.console.lag import LagMonitor
from worker.console.server import build_app
from worker.dev import EmbeddedPostgres, free_port
from worker.settings import ConsoleSettings, KafkaSettings
from worker.store.migrations import migrate_dsn
from worker_bench.console_scale import seed_console_scale

TARGET_MS: Final = 300.0
TOKEN: Final = "bench-" + uuid.uuid4().hex
PAGES: Final = (
    "/",
    "/dead-letters",
    "/dead-letters?window=30d",
    "/dead-letters?window=30d&reason=invalid_envelope&organization=org_scale_7",
    "/dead-letters?window=30d&code=json_syntax&state=new",
    "/dead-letters?window=30d&after={cursor}",
    "/dead-letters/{dead_letter}",
    "/parked",
    "/provider-jobs",
    "/provider-jobs?state=failed",
    "/provider-jobs?state=waiting&connection=stripe_1&error_code=rate_limited",
    "/provider-jobs?state=stuck",
    "/rejections",
    "/rejections?window=30d",
    "/rejections?window=7d&organization=org_scale_3",
    "/audit",
    "/jobs",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--records", type=int, default=100_000, help="dead letters, and provider jobs, to seed (default 100,000 each)"
    )
    parser.add_argument("--rounds", type=int, default=7, help="requests per page (default 7; the first warms up)")


async def seed(dsn: str, records: int) -> None:
    await migrate_dsn(dsn)
    await seed_console_scale(dsn, records)


async def measure(dsn: str, rounds: int) -> list[tuple[str, list[float]]]:
    pool = await asyncpg.create_pool(dsn, min_size=8, max_size=8)
    kafka = KafkaSettings(kafka_bootstrap_servers="127.0.0.1:1")  # lag is read in the background: not timed
    tokens = TokenStore([_TokenEntry("bench", Role.OPERATOR, bytes.fromhex(hash_token(TOKEN)))])
    port = free_port()
    app = build_app(pool, ConsoleSettings(console_port=port), kafka, tokens=tokens, lag=LagMonitor(kafka))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}"
    values = {
        "cursor": await _cursor(pool),
        "dead_letter": str(await pool.fetchval("SELECT max(id) / 2 FROM dead_letters")),
    }
    results: list[tuple[str, list[float]]] = []
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:  # an IP host
            await session.post(f"{base}/sign-in", data={"token": TOKEN}, headers={"Origin": base})
            for page in PAGES:
                path = page.format(**values)
                timings = []
                for _ in range(rounds):
                    started = time.perf_counter()
                    async with session.get(base + path, allow_redirects=False) as response:
                        await response.read()
                        if response.status != 200:
                            raise RuntimeError(f"{path}: HTTP {response.status}")
                    timings.append((time.perf_counter() - started) * 1000)
                results.append((page, timings[1:] if len(timings) > 1 else timings))
    finally:
        await runner.cleanup()
        await pool.close()
    return results


async def _cursor(pool: asyncpg.Pool[asyncpg.Record]) -> str:
    row = await pool.fetchrow(
        "SELECT failed_at, id FROM dead_letters ORDER BY failed_at DESC, id DESC "
        "OFFSET least(5000, (SELECT count(*) / 2 FROM dead_letters)) LIMIT 1"
    )
    assert row is not None
    return f"{row['failed_at'].isoformat()}~{row['id']}".replace("+", "%2B")


def report(results: list[tuple[str, list[float]]]) -> int:
    print(f"{'page':<76} {'median ms':>10} {'worst ms':>10}")
    slow = 0
    for page, timings in results:
        median, worst = statistics.median(timings), max(timings)
        slow += median > TARGET_MS
        over = f"  over {TARGET_MS:.0f} ms" if median > TARGET_MS else ""
        print(f"{page:<76} {median:>10.1f} {worst:>10.1f}{over}")
    print(f"{len(results) - slow} of {len(results)} pages under {TARGET_MS:.0f} ms (median)")
    return 1 if slow else 0


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_main(args))


async def _main(args: argparse.Namespace) -> int:
    external = os.environ.get("DATABASE_URL")
    with tempfile.TemporaryDirectory(prefix="cw-bench-console-") as folder:
        server = None if external else EmbeddedPostgres(Path(folder) / "pg", fast=True)
        server_dsn = external or server.start()  # type: ignore[union-attr]
        name = f"bench_console_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(server_dsn)
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()
        dsn = _with_database(server_dsn, name)
        try:
            started = time.perf_counter()
            await seed(dsn, args.records)
            print(
                f"seeded {args.records:,} dead letters and {args.records:,} provider jobs "
                f"in {time.perf_counter() - started:.1f} s"
            )
            return report(await measure(dsn, args.rounds))
        finally:
            admin = await asyncpg.connect(server_dsn)
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()
            if server is not None:
                server.stop()


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))

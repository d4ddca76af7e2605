"""`customer-worker bench-console`: every console page's render time with 100,000 dead letters and 100,000 provider
jobs (issue 20 §Scale; the target is under 300 ms a page). A benchmark that prints, not a timed test.

Seeds a new database (an embedded PostgreSQL, or a new database on DATABASE_URL's server, dropped afterwards) with
set-based INSERT ... SELECT: dead letters over 30 days, provider jobs in every state over a thousand customers
(no personal column filled), rejection counts per organization, code, path and minute, answer counts for the last
three hours, parked events, audit rows and operator jobs. Then serves the console in-process and requests each page
`--rounds` times over HTTP, signed in as an operator, and prints the median and the worst."""

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

TARGET_MS: Final = 300.0
TOKEN: Final = "bench-" + uuid.uuid4().hex
_SEED: Final = (
    # Customers: ids and keys only, no personal column.
    """INSERT INTO customers (id, organization_id, external_id, created_at, updated_at)
       SELECT gen_random_uuid(), 'org_' || (n % 50), 'cus_' || n, now(), now() FROM generate_series(1, 1000) AS n""",
    """INSERT INTO dead_letters (dlq_topic, dlq_partition, dlq_offset, source_topic, source_partition, source_offset,
         reason, codes, paths, organization_id, message_id, value_size, value_sha256, failed_at, replay_state)
       SELECT 'customers.upsert.v1.dlq', n % 12, n, 'customers.upsert.v1', n % 12, n * 3,
         (ARRAY['invalid_json', 'invalid_envelope', 'too_large', 'processing_error'])[1 + n % 4],
         CASE WHEN n % 4 = 1 THEN ARRAY['message_id_invalid'] WHEN n % 4 = 0 THEN ARRAY['json_syntax'] ELSE '{}' END,
         CASE WHEN n % 4 = 1 THEN ARRAY['message_id'] ELSE '{}' END,
         CASE WHEN n % 4 = 0 THEN NULL ELSE 'org_' || (n % 50) END, 'msg-' || n, 200 + n % 5000,
         sha256(n::text::bytea), now() - make_interval(secs => n * 25.92),
         (ARRAY['new', 'new', 'new', 'replayed', 'returned'])[1 + n % 5]
       FROM generate_series(1, $1::int) AS n""",
    """INSERT INTO provider_jobs (organization_id, customer_id, message_id, kind, provider, connection_code, status,
         attempts, next_attempt_at, lease_until, last_error, created_at, updated_at)
       SELECT c.organization_id, c.id, 'job-' || n, 'update', 'stripe', 'stripe_' || (n % 3),
         (ARRAY['pending', 'running', 'failed', 'done', 'done', 'done', 'skipped'])[1 + n % 7], n % 6,
         now() + make_interval(secs => n % 600),
         CASE WHEN n % 7 = 1 THEN now() + make_interval(secs => (n % 60) - 30) END,
         CASE WHEN n % 7 IN (0, 2) THEN jsonb_build_object('error_code',
           (ARRAY['rate_limited', 'unauthorized', 'server_error', 'invalid_request'])[1 + n % 4],
           'http_status', 400) END,
         now() - make_interval(secs => n * 20), now() - make_interval(secs => n * 10)
       FROM generate_series(1, $1::int) AS n
       JOIN (SELECT id, organization_id, row_number() OVER () - 1 AS k FROM customers) AS c ON c.k = n % 1000""",
    """INSERT INTO rejection_counts (organization_id, code, path, minute, worker_id, count)
       SELECT 'org_' || (n % 50),
         (ARRAY['invalid_email_format', 'not_a_valid_country_code', 'value_is_invalid'])[1 + n % 3],
         (ARRAY['email', 'country', 'currency', 'billing_configuration.document_locale'])[1 + n % 4],
         date_trunc('minute', now()) - make_interval(mins => n / 12), 'bench:' || (n % 2), 1 + n % 7
       FROM generate_series(1, 100000) AS n ON CONFLICT DO NOTHING""",
    """INSERT INTO answer_counts (minute, outcome, worker_id, count)
       SELECT date_trunc('minute', now()) - make_interval(mins => m), o, 'bench:0', 100 + (m * 7) % 50
       FROM generate_series(0, 720) AS m,
         unnest(ARRAY['created', 'updated', 'rejected', 'duplicate', 'dead_lettered']) AS o""",
    """INSERT INTO parked_events (outbox_id, event_id, event_key, event_type, payload, created_at, reason, error)
       SELECT n, gen_random_uuid(), 'org_' || (n % 50) || ':cus_' || n, 'customer.updated', '\\x7b7d', now(),
         (ARRAY['too_large', 'invalid_record'])[1 + n % 2], 'MessageSizeTooLargeError'
       FROM generate_series(1, 2000) AS n""",
    """INSERT INTO audit_log (actor, role, action, filter, count, outcome, remote_addr)
       SELECT 'ops-' || (n % 5), 'operator', 'dlq_replay.dry_run', '{"reason": "invalid_json"}', n % 100, 'done',
         '10.0.0.' || (n % 200) FROM generate_series(1, 20000) AS n""",
    """INSERT INTO workers_seen (worker_id, host, pid, started_at, last_seen_at, partitions, version)
       SELECT 'bench:' || n, 'bench', n, now(), now(), ARRAY[n, n + 4, n + 8], 'bench'
       FROM generate_series(0, 3) AS n""",
)
PAGES: Final = (
    "/",
    "/dead-letters",
    "/dead-letters?window=30d",
    "/dead-letters?window=30d&reason=invalid_envelope&organization=org_7",
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
    "/rejections?window=7d&organization=org_3",
    "/audit",
    "/jobs",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dead-letters", type=int, default=100_000, help="dead letters to seed (default 100,000)")
    parser.add_argument("--provider-jobs", type=int, default=100_000, help="provider jobs to seed (default 100,000)")
    parser.add_argument("--rounds", type=int, default=7, help="requests per page (default 7; the first warms up)")


async def seed(dsn: str, dead_letters: int, provider_jobs: int) -> None:
    await migrate_dsn(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        sizes = {"dead_letters": dead_letters, "provider_jobs": provider_jobs}
        for statement in _SEED:
            table = statement.split("INSERT INTO ", 1)[1].split(" ", 1)[0]
            await conn.execute(statement, *([sizes[table]] if table in sizes else []))
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


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
            await seed(dsn, args.dead_letters, args.provider_jobs)
            print(
                f"seeded {args.dead_letters:,} dead letters and {args.provider_jobs:,} provider jobs "
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

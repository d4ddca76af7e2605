"""Seed the operator console's tables at scale (issue 20): `seed_console_scale(dsn, n)` writes n dead letters and n
provider jobs (with their n customers), a day of answer and rejection counts per minute, parked events, workers,
operator jobs and audit rows, all in set-based statements (generate_series): 100,000 of each take seconds. The web
engineer times the console's pages against it.

    python -m worker_bench.console_scale DATABASE_URL [N]

The database must be migrated. Everything written is synthetic: no name, e-mail or phone number anywhere.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Final

import asyncpg

ORGANIZATIONS: Final = 50
_STATEMENTS: Final = (
    # Customers for the provider jobs' foreign key: identifiers only, no personal field set.
    "INSERT INTO customers (id, organization_id, external_id, created_at, updated_at, payment_provider, "
    "payment_provider_code) SELECT gen_random_uuid(), 'org_scale_' || (g % $2), 'cus_scale_' || g, "
    "now() - make_interval(mins => g % 10080), now(), 'stripe', 'stripe_' || (g % 5) FROM generate_series(1, $1) g",
    "INSERT INTO dead_letters (dlq_topic, dlq_partition, dlq_offset, source_topic, source_partition, source_offset, "
    "reason, codes, paths, organization_id, message_id, value_size, value_sha256, failed_at, replay_state) "
    "SELECT 'customers.upsert.dlq', g % 6, g, 'customers.upsert.v1', g % 6, g * 3, "
    "(ARRAY['invalid_json', 'invalid_envelope', 'too_large', 'processing_error', 'unreadable_record'])[1 + g % 5], "
    "ARRAY[(ARRAY['json_syntax', 'message_id_invalid', 'value_too_large', 'failed_repeatedly', 'unreadable'])"
    "[1 + g % 5]], CASE WHEN g % 5 = 1 THEN ARRAY['message_id'] ELSE '{}' END, "
    "CASE WHEN g % 5 IN (1, 3) THEN 'org_scale_' || (g % $2) END, CASE WHEN g % 5 = 3 THEN 'msg_' || g END, "
    "200 + g % 5000, sha256(int8send(g)), now() - make_interval(secs => g * 6), "
    "(ARRAY['new', 'new', 'new', 'replayed', 'returned'])[1 + g % 5] FROM generate_series(1, $1) g",
    "INSERT INTO provider_jobs (organization_id, customer_id, message_id, kind, provider, connection_code, status, "
    "attempts, next_attempt_at, lease_until, last_error, created_at, updated_at) "
    "SELECT c.organization_id, c.id, 'msg_job_' || c.external_id, 'create', 'stripe', c.payment_provider_code, "
    "(ARRAY['pending', 'running', 'failed', 'done', 'done', 'skipped'])[1 + n % 6], 1 + n % 6, "
    "now() + make_interval(secs => n % 600), CASE WHEN n % 6 = 1 THEN now() - make_interval(secs => n % 900) END, "
    "CASE WHEN n % 6 IN (0, 2) THEN jsonb_build_object('error_code', "
    "(ARRAY['rate_limited', 'card_declined', 'timeout', 'unauthorized'])[1 + n % 4]) END, "
    "c.created_at, now() FROM (SELECT *, row_number() OVER () AS n FROM customers "
    "WHERE organization_id LIKE 'org_scale_%') c",
    "INSERT INTO answer_counts (minute, outcome, worker_id, count) "
    "SELECT date_trunc('minute', now()) - make_interval(mins => m), o, 'scale-worker-' || w, 50 + (m * 7 + w) % 400 "
    "FROM generate_series(0, 1439) m, unnest(ARRAY['created', 'updated', 'rejected', 'skipped', 'duplicate', "
    "'dead_lettered']) o, generate_series(1, 2) w",
    "INSERT INTO rejection_counts (organization_id, code, path, minute, worker_id, count) "
    "SELECT 'org_scale_' || org, c, p, date_trunc('minute', now()) - make_interval(mins => m), 'scale-worker-1', "
    "1 + (m + org) % 9 FROM generate_series(0, 1439, 3) m, generate_series(0, 19) org, "
    "unnest(ARRAY['invalid_email_format', 'not_a_valid_country_code', 'value_is_invalid'], "
    "ARRAY['email', 'country', 'currency']) AS x(c, p)",
    "INSERT INTO workers_seen (worker_id, host, pid, started_at, last_seen_at, partitions, version) "
    "SELECT 'scale-worker-' || w, 'scale-host-' || w, 1000 + w, now() - interval '3 hours', now(), "
    "ARRAY[w * 2 - 2, w * 2 - 1], 'scale' FROM generate_series(1, 3) w",
    "INSERT INTO parked_events (outbox_id, event_id, event_key, event_type, payload, created_at, reason, error) "
    "SELECT g, gen_random_uuid(), 'org_scale_' || (g % $2) || ':cus_scale_' || g, "
    "(ARRAY['customer.updated', 'customer.created', 'customer.rejected'])[1 + g % 3], '\\x7b7d'::bytea, "
    "now() - make_interval(mins => g), (ARRAY['too_large', 'invalid_record'])[1 + g % 2], 'refused by the broker' "
    "FROM generate_series(1, greatest($1 / 100, 1)) g",
    "INSERT INTO operator_jobs (kind, filter, selection, state, total, done_count, created_by, rate_per_second, "
    "created_at, finished_at) SELECT 'dlq_replay', jsonb_build_object('reason', 'invalid_json'), "
    "jsonb_build_object('max_id', g * 100), 'done', 100, 100, 'scale', 200, now() - make_interval(hours => g), "
    "now() - make_interval(hours => g) + interval '1 minute' FROM generate_series(1, 200) g",
    "INSERT INTO audit_log (at, actor, role, action, filter, count, outcome, remote_addr) "
    "SELECT now() - make_interval(mins => g), 'operator-' || (g % 7), "
    "(ARRAY['operator', 'viewer'])[1 + g % 2], (ARRAY['dlq_replay', 'parked_republish', 'provider_jobs_retry'])"
    "[1 + g % 3], '{}', g % 100, (ARRAY['done', 'refused', 'started'])[1 + g % 3], '10.0.0.' || (g % 250) "
    "FROM generate_series(1, 2000) g",
)


async def seed_console_scale(dsn: str, n: int = 100_000) -> dict[str, float]:
    """Write the synthetic rows (see the module's doc); seconds per table, then ANALYZE so plans see the sizes."""
    conn = await asyncpg.connect(dsn)
    timings: dict[str, float] = {}
    try:
        for statement in _STATEMENTS:
            table = statement.split()[2]
            started = time.perf_counter()
            args: tuple[int, ...] = ()
            if "$2" in statement:
                args = (n, ORGANIZATIONS)
            elif "$1" in statement:
                args = (n,)
            await conn.execute(statement, *args)
            timings[table] = time.perf_counter() - started
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return timings


def main(argv: list[str]) -> int:
    if not argv or len(argv) > 2:
        print(__doc__, file=sys.stderr)
        return 2
    count = int(argv[1]) if len(argv) == 2 else 100_000
    started = time.perf_counter()
    timings = asyncio.run(seed_console_scale(argv[0], count))
    for table, seconds in timings.items():
        print(f"{table:<20} {seconds:6.2f} s")
    print(f"seeded {count} dead letters and {count} provider jobs in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

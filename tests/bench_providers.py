"""Provider throughput benchmark: `python -m tests.bench_providers [--rate R] [--seconds S]`.

The Stripe fake enforces a token bucket (rate R per second, burst R) and answers 429 past it; the job runner's
connection is configured with the same rate. More jobs are ready than R allows for S seconds; the benchmark prints
the achieved calls per second after the initial burst and the number of 429 answers. It lives with the tests
because it drives the local fake provider, which is test code.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

from tests.fakes.stripe_fake import FakeStripe
from tests.integration.test_providers_jobs import ProviderHarness, connection
from worker.dev import EmbeddedPostgres
from worker.observability import configure_logging
from worker.store import migrations


async def run(rate: int, seconds: float, concurrency: int) -> int:
    with tempfile.TemporaryDirectory(prefix="cw-bench-providers-") as folder, FakeStripe() as fake:
        postgres = EmbeddedPostgres(Path(folder) / "pg", fast=True)
        dsn = postgres.start()
        try:
            await migrations.migrate_dsn(dsn)
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=6)
            rated = connection("stripe", fake, code="stripe_rated", rate_limit_per_second=float(rate))
            harness = ProviderHarness(pool=pool, fakes={"stripe": fake}, connections=[rated])
            total = int(rate * (seconds + 1))
            for _ in range(total):
                customer = await harness.add_customer(
                    "stripe", code="stripe_rated", provider_payment_methods=("customer_balance",)
                )
                await harness.add_job(customer)
            fake.rate_limit(rate, burst=rate)
            print(f"{total} jobs ready, provider bucket {rate}/s (burst {rate}), runner concurrency {concurrency}")
            started = time.monotonic()
            await harness.drive(harness.runner(concurrency=concurrency), timeout=seconds * 3 + 30)
            elapsed = time.monotonic() - started
            times = sorted(request.received_at for request in fake.requests)
            steady = times[rate:]
            achieved = (len(steady) - 1) / (steady[-1] - steady[0])
            print(f"calls: {len(times)} in {elapsed:.1f} s; steady rate after the burst: {achieved:.2f} calls/s")
            print(f"429 answers: {fake.rate_limited_count}; deviation from the rate: {(achieved - rate) / rate:+.1%}")
            await harness.close()
            await pool.close()
            ok = fake.rate_limited_count == 0 and abs(achieved - rate) <= 0.1 * rate
            return 0 if ok else 1
        finally:
            postgres.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    configure_logging("WARNING", "console")
    return asyncio.run(run(args.rate, args.seconds, args.concurrency))


if __name__ == "__main__":
    sys.exit(main())

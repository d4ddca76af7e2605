"""Provider jobs retried and cancelled by an operator job (issue 20), with the real Stripe SDK against the local
fake: a job that failed for good is retried by a `provider_jobs_retry` job and links the customer; a
`provider_jobs_cancel` job ends pending ones as skipped; the command line audits both."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import orjson
import pytest

from tests.fakes.stripe_fake import FakeStripe, stripe_error_body
from tests.harness.database import migrate_database
from tests.harness.records import environ_without
from tests.integration.test_providers_jobs import ProviderHarness, connection
from worker.ops.jobs import Ids, JobRunner, ProviderJobFilter, dry_run, start_job
from worker.settings import KafkaSettings
from worker.store.db import create_pool

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes/text content:DeprecationWarning"),
]
UNUSED_KAFKA = KafkaSettings(kafka_bootstrap_servers="127.0.0.1:9")  # table-only jobs never reach the broker


@pytest.fixture(scope="module")
def stripe() -> Iterator[FakeStripe]:
    with FakeStripe() as fake:
        yield fake


@pytest.fixture
async def harness(fresh_database: str, stripe: FakeStripe) -> AsyncIterator[ProviderHarness]:
    stripe.reset()
    await migrate_database(fresh_database)
    pool = await create_pool(fresh_database, size=4)
    harness = ProviderHarness(pool=pool, fakes={"stripe": stripe}, connections=[connection("stripe", stripe)])
    try:
        yield harness
    finally:
        await harness.close()
        await pool.close()


async def _failed_create(harness: ProviderHarness) -> tuple[int, object]:
    fake = harness.fakes["stripe"]
    fake.fail_next(400, stripe_error_body("Invalid request", code="parameter_invalid"))
    customer = await harness.add_customer("stripe")
    job_id, _, _ = await harness.add_job(customer)
    await harness.drive(harness.runner())
    assert await harness.pool.fetchval("SELECT status FROM provider_jobs WHERE id = $1", job_id) == "failed"
    return job_id, customer


async def test_a_failed_job_retried_by_an_operator_links_the_customer(harness: ProviderHarness) -> None:
    job_id, customer = await _failed_create(harness)
    selection = ProviderJobFilter(state="failed", connection="stripe_main")
    assert await dry_run(harness.pool, "provider_jobs_retry", selection) == 1

    operator_job = await start_job(harness.pool, "provider_jobs_retry", selection, actor="test")
    status = await JobRunner(harness.pool, UNUSED_KAFKA).run_job(operator_job)
    assert status is not None and (status.state, status.done) == ("done", 1)
    row = await harness.pool.fetchrow(
        "SELECT status, worker_faults, next_attempt_at <= now() AS due, last_error FROM provider_jobs WHERE id = $1",
        job_id,
    )
    assert row is not None
    assert (row["status"], row["worker_faults"], row["due"]) == ("pending", 0, True)
    assert orjson.loads(row["last_error"])["retried_by_operator_job"] == operator_job

    await harness.drive(harness.runner())
    assert await harness.provider_customer_id(customer) is not None  # type: ignore[arg-type]
    assert await harness.pool.fetchval("SELECT status FROM provider_jobs WHERE id = $1", job_id) == "done"


async def test_cancel_ends_pending_jobs_as_cancelled_and_leaves_finished_ones(harness: ProviderHarness) -> None:
    failed_job, _ = await _failed_create(harness)
    pending_job, _, _ = await harness.add_job(await harness.add_customer("stripe"))  # no runner: stays pending
    calls = len(harness.fakes["stripe"].requests)

    operator_job = await start_job(harness.pool, "provider_jobs_cancel", Ids((pending_job, failed_job)), actor="t")
    status = await JobRunner(harness.pool, UNUSED_KAFKA).run_job(operator_job)
    # The failed job is not one a cancel applies to: left out of the job from the start.
    assert status is not None and (status.state, status.total, status.done) == ("done", 1, 1)
    rows = {
        r["id"]: r
        for r in await harness.pool.fetch(
            "SELECT id, status, last_error FROM provider_jobs WHERE id = ANY($1)", [pending_job, failed_job]
        )
    }
    assert rows[pending_job]["status"] == "cancelled"
    assert orjson.loads(rows[pending_job]["last_error"])["operator_job"] == operator_job
    assert rows[failed_job]["status"] == "failed"  # finished: nothing to cancel
    assert len(harness.fakes["stripe"].requests) == calls


async def test_the_command_line_retries_lists_and_audits(harness: ProviderHarness, fresh_database: str) -> None:
    job_id, _ = await _failed_create(harness)
    env = environ_without(("PROVIDERS_FILE",), DATABASE_URL=fresh_database)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "worker", *args], env=env, capture_output=True, text=True, timeout=60, check=False
        )

    listing = await asyncio.to_thread(cli, "jobs", "list", "--state", "failed")
    assert listing.returncode == 0, listing.stderr
    [line] = listing.stdout.splitlines()
    assert orjson.loads(line)["id"] == job_id
    dry = await asyncio.to_thread(cli, "jobs", "retry", "--state", "failed", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would retry 1" in dry.stdout
    done = await asyncio.to_thread(cli, "jobs", "retry", "--id", str(job_id))
    assert done.returncode == 0, done.stderr
    assert await harness.pool.fetchval("SELECT status FROM provider_jobs WHERE id = $1", job_id) == "pending"
    audit = await harness.pool.fetch("SELECT actor, role, action, count, outcome FROM audit_log ORDER BY id")
    assert [(r["action"], r["count"], r["outcome"]) for r in audit] == [
        ("provider_jobs_retry", 1, "started"),
        ("provider_jobs_retry", 1, "done"),
    ]
    assert {r["role"] for r in audit} == {"cli"}

"""Issue 9, provider side: the job runner outlives every error, and an upsert never rewrites a row's identity."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from structlog.testing import capture_logs

from tests.integration import test_providers_jobs
from tests.integration.test_providers_jobs import ORG, ProviderHarness
from worker.domain.customer import CustomerState
from worker.store.rows import rows_json, upsert_sql

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes/text content:DeprecationWarning"),
]
fakes = test_providers_jobs.fakes  # the fixtures, shared
harness = test_providers_jobs.harness


async def test_runner_survives_a_database_error_not_on_the_outage_list(harness: ProviderHarness) -> None:
    customer = await harness.add_customer("stripe")
    await harness.add_job(customer)
    # The claim now fails with UndefinedColumnError: a bug-like error, not an outage.
    await harness.pool.execute("ALTER TABLE provider_jobs RENAME COLUMN traceparent TO traceparent_gone")
    runner = harness.runner()
    with capture_logs() as logs:
        task = asyncio.create_task(runner.run())
        try:
            while sum(entry["event"] == "provider_jobs_claim_failed" for entry in logs) < 2:
                assert not task.done(), "the runner stopped"
                await asyncio.sleep(0.02)
            assert "customer_worker_provider_runner_up 1.0" in harness.metrics.render().decode()
            await harness.pool.execute("ALTER TABLE provider_jobs RENAME COLUMN traceparent_gone TO traceparent")
            while not await harness.all_finished():
                assert not task.done(), "the runner stopped"
                await asyncio.sleep(0.02)
        finally:
            runner.stop()
            await asyncio.wait_for(task, timeout=10)
    failed = [entry for entry in logs if entry["event"] == "provider_jobs_claim_failed"]
    assert failed[0]["error_type"] == "UndefinedColumnError" and failed[0]["log_level"] == "error"
    assert await harness.provider_customer_id(customer) is not None
    assert "customer_worker_provider_runner_up 0.0" in harness.metrics.render().decode()


async def test_upsert_never_changes_an_existing_rows_identity(harness: ProviderHarness) -> None:
    customer = await harness.add_customer("stripe", external_id="cus_owner")
    now = datetime.now(UTC)
    intruder = CustomerState(
        id=customer.id, organization_id="org_other", external_id="cus_other", created_at=now, updated_at=now
    )
    written = await harness.pool.fetch(upsert_sql(), rows_json([intruder]))
    assert written == []  # nothing updated: the caller raises IdentityConflictError on the short count
    row = await harness.pool.fetchrow(
        "SELECT organization_id, external_id, name FROM customers WHERE id = $1", customer.id
    )
    assert row is not None
    assert (row["organization_id"], row["external_id"], row["name"]) == (ORG, "cus_owner", customer.name)
    # The normal update of the same row still goes through.
    renamed = customer._replace(name="Renamed", id=uuid.UUID(bytes=customer.id.bytes))
    assert len(await harness.pool.fetch(upsert_sql(), rows_json([renamed]))) == 1

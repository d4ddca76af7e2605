"""Provider jobs wait out a long outage and a credentials incident with the real timings (SPEC §9, settled
2026-12-06; issue 18 case 5): the default backoff base (1 s), a short but real cap and check interval, and an
outage longer than the old horizon of 6 attempts from 1 s (15 to 31 s). Real PostgreSQL, the real SDKs, the fakes.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.integration import test_providers_jobs
from tests.integration.test_providers_jobs import ProviderHarness, connection, created_ids
from worker.domain.customer import CustomerState

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(150),
    pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes/text content:DeprecationWarning"),
]

fakes = test_providers_jobs.fakes
harness = test_providers_jobs.harness
OUTAGE_503 = 20.0
OUTAGE_REFUSED = 15.0
CREDENTIALS_INCIDENT = 25.0


async def linked(harness: ProviderHarness, customers: list[CustomerState]) -> bool:
    return all([await harness.provider_customer_id(customer) is not None for customer in customers])


async def test_an_outage_and_a_credentials_incident_longer_than_the_old_horizon(harness: ProviderHarness) -> None:
    stripe, gocardless = harness.fakes["stripe"], harness.fakes["gocardless"]
    key = "gc_rotating_token_for_the_slow_test"
    rotating = harness.add_connection(connection("gocardless", gocardless, code="gc_rotating", key=key))
    outage = [await harness.add_customer("stripe") for _ in range(5)]
    revoked = [await harness.add_customer("gocardless", code=rotating.code) for _ in range(5)]
    for customer in outage + revoked:
        await harness.add_job(customer)
    runner = harness.runner(
        timeout=2.0,
        lease_seconds=30.0,
        poll_interval=1.0,
        backoff_base=1.0,
        backoff_max=8.0,
        check_interval=5.0,
        state_refresh_interval=1.0,
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    stripe.fail_next(503, times=1_000_000)
    task = asyncio.create_task(harness.drive(runner, until=lambda: linked(harness, outage + revoked), timeout=120))

    await asyncio.sleep(OUTAGE_503)
    stripe.clear_faults()
    stripe.refuse_connections()
    await asyncio.sleep(OUTAGE_REFUSED)
    stripe.accept_connections()
    await asyncio.sleep(max(CREDENTIALS_INCIDENT - (loop.time() - started), 0.0))
    assert not await linked(harness, revoked)
    gocardless.api_keys.add(key)  # the new token is accepted
    try:
        await task
    finally:
        gocardless.api_keys.discard(key)
    elapsed = loop.time() - started

    assert elapsed > OUTAGE_503 + OUTAGE_REFUSED > 31.0  # waited past the old horizon
    # Recovery within a backoff cap (8 s) or a check interval (5 s) plus the calls.
    assert elapsed < OUTAGE_503 + OUTAGE_REFUSED + 8.0 + 5.0
    await harness.drive(runner, timeout=60)  # the follow-up checkout jobs
    jobs = await harness.jobs()
    assert {job["status"] for job in jobs} == {"done"}
    assert "customer.payment_provider_error" not in [event.event_type for event in await harness.events()]
    for fake, customers in ((stripe, outage), (gocardless, revoked)):
        ids = [await harness.provider_customer_id(customer) for customer in customers]
        assert sorted(str(pid) for pid in ids) == sorted(created_ids(fake))
    # The paused connection made test calls, not job calls: one refused create, then list calls every 5 s.
    creates_refused = [r for r in gocardless.requests_to("POST", "/customers") if r.status == 401]
    assert len(creates_refused) <= 4
    assert 3 <= len([r for r in gocardless.requests_to("GET", "/customers") if r.status == 401]) <= 7

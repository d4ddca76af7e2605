"""Provider jobs wait out everything that says nothing about the customer, and stay fair across connections
(SPEC §9, settled 2026-12-06; issue 18, cases 5 and 6).

Real PostgreSQL, the real SDKs and the local fakes. Outages of minutes are scaled down by short backoffs (a cap of
0.2 s instead of PROVIDER_BACKOFF_MAX's 5 minutes): what matters is that they outlast the old horizon of
`max_attempts` failed calls many times over. `tests/faults/test_provider_waits.py` runs one with real timings.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from tests.fakes.adyen_fake import FakeAdyen
from tests.fakes.base import FakeServer
from tests.fakes.stripe_fake import FakeStripe
from tests.integration import test_providers_jobs
from tests.integration.test_providers_jobs import (
    CREATE_PATH,
    ProviderHarness,
    connection,
    created_ids,
    creates,
)
from worker.contract.connections import ProviderName
from worker.domain.customer import CustomerState
from worker.providers.connections import metric_label
from worker.store.jobs import cancel_jobs, claim_due, prune_finished

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes/text content:DeprecationWarning"),
]

fakes = test_providers_jobs.fakes
harness = test_providers_jobs.harness
FOREVER = 1_000_000
PROXY_PAGE = "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"


@pytest.fixture(scope="module")
def noisy_stripe() -> Iterator[FakeStripe]:
    """A second Stripe account, for a connection that misbehaves while the shared fake's connection does not."""
    with FakeStripe() as fake:
        yield fake


@pytest.fixture
def noisy(noisy_stripe: FakeStripe) -> FakeStripe:
    noisy_stripe.reset()
    return noisy_stripe


async def customers_with_jobs(
    harness: ProviderHarness, provider: ProviderName, n: int, **kw: Any
) -> list[CustomerState]:
    customers = [await harness.add_customer(provider, **kw) for _ in range(n)]
    for customer in customers:
        await harness.add_job(customer)
    return customers


async def linked(harness: ProviderHarness, customers: list[CustomerState]) -> bool:
    return all([await harness.provider_customer_id(customer) is not None for customer in customers])


async def assert_each_linked_once(harness: ProviderHarness, fake: FakeServer, customers: list[CustomerState]) -> None:
    """Every customer linked, each to a provider customer of its own, and the provider made no other."""
    ids = [await harness.provider_customer_id(customer) for customer in customers]
    await asyncio.to_thread(fake.wait_for_requests, len(fake.requests))  # every call answered
    if isinstance(fake, FakeAdyen):  # the shopper reference is the external id; a create makes one payment link
        assert ids == [customer.external_id for customer in customers]
        assert len(created_ids(fake)) == len(customers)
    else:
        assert sorted(str(pid) for pid in ids) == sorted(created_ids(fake))
    assert len(set(ids)) == len(customers)
    assert "customer.payment_provider_error" not in [event.event_type for event in await harness.events()]


def stripe_fake(harness: ProviderHarness) -> FakeStripe:
    fake = harness.fakes["stripe"]
    assert isinstance(fake, FakeStripe)
    return fake


async def state_of(harness: ProviderHarness, code: str) -> str | None:
    state: str | None = await harness.pool.fetchval("SELECT state FROM provider_connections WHERE code = $1", code)
    return state


# ------------------------------------------------------------------------------------------------ outages


@pytest.mark.parametrize("provider", ["stripe", "gocardless", "adyen"])
async def test_an_outage_of_503s_proxy_pages_and_refused_connections_ends_with_each_customer_linked_once(
    harness: ProviderHarness, provider: ProviderName
) -> None:
    fake = harness.fakes[provider]
    customers = await customers_with_jobs(harness, provider, 6)
    runner = harness.runner(max_attempts=3)  # the old horizon: three failed calls failed a job for good
    task = asyncio.create_task(harness.drive(runner, until=lambda: linked(harness, customers), timeout=40))

    fake.fail_next(503, times=FOREVER)
    await asyncio.to_thread(fake.wait_for_requests, 40, timeout=20)
    fake.clear_faults()
    fake.fail_next(502, PROXY_PAGE, {"Content-Type": "text/html"}, times=FOREVER)
    await asyncio.to_thread(fake.wait_for_requests, 60, timeout=20)
    fake.clear_faults()
    fake.refuse_connections()
    await asyncio.sleep(1.5)
    fake.accept_connections()
    await task

    statuses = [request.status for request in fake.requests]
    assert statuses.count(503) >= 30 and statuses.count(502) >= 10  # far past the old horizon
    assert min(job["attempts"] for job in await harness.jobs() if job["kind"] == "create") > 3
    await harness.drive(runner)  # the follow-up jobs (checkout links) too
    await assert_each_linked_once(harness, fake, customers)


async def test_a_customer_data_error_still_fails_at_once(harness: ProviderHarness) -> None:
    await customers_with_jobs(harness, "stripe", 1, email="invalid@example.invalid")
    await harness.drive(harness.runner())
    (job,) = await harness.jobs()
    assert (job["status"], job["attempts"], job["last_error"]["error_code"]) == ("failed", 1, "email_invalid")
    assert [event.event_type for event in await harness.events()] == ["customer.payment_provider_error"]


# ------------------------------------------------------------------------------------------------ credentials


async def test_a_credentials_incident_pauses_the_connection_on_every_replica_then_resumes(
    harness: ProviderHarness,
) -> None:
    fake = harness.fakes["stripe"]
    key = "sk_test_rotating_key_for_the_incident"
    conn = harness.add_connection(connection("stripe", fake, code="stripe_rotating", key=key))
    fake.api_keys.add(key)
    customers = await customers_with_jobs(harness, "stripe", 12, code=conn.code)
    replicas = [harness.runner(check_interval=0.3) for _ in range(2)]
    fake.api_keys.discard(key)  # revoked before any call

    task = asyncio.create_task(harness.drive(*replicas, until=lambda: linked(harness, customers), timeout=30))
    await asyncio.to_thread(fake.wait_for_requests, 3, method="GET", path="/v1/customers", timeout=10)
    refused_creates = len(creates(fake, "stripe"))
    # Three test calls (about 0.3 s apart) and not one job's call more: both replicas hold the connection's jobs.
    await asyncio.to_thread(fake.wait_for_requests, 5, method="GET", path="/v1/customers", timeout=10)
    assert len(creates(fake, "stripe")) == refused_creates <= 8  # at most the calls in flight when the 401 came
    assert await state_of(harness, conn.code) == "credentials_refused"
    assert [job["status"] for job in await harness.jobs()] == ["pending"] * 12
    await replicas[0].watch.tick(asyncio.get_running_loop().time() + 3600)  # the metrics of a report now
    labels = {"provider": "stripe", "connection": metric_label(conn.organization_id, conn.code)}
    sample = harness.metrics.registry.get_sample_value
    assert sample("customer_worker_provider_connection_state", {**labels, "state": "credentials_refused"}) == 1.0
    assert sample("customer_worker_provider_connection_state", {**labels, "state": "working"}) == 0.0
    assert (sample("customer_worker_provider_connection_oldest_job_seconds", labels) or 0.0) > 0.0

    fake.api_keys.add(key)  # the incident is over
    await task
    assert await state_of(harness, conn.code) == "working"
    await harness.drive(*replicas)
    await assert_each_linked_once(harness, fake, customers)


async def test_an_inline_create_hands_a_refused_connection_over_at_once(harness: ProviderHarness) -> None:
    fake = harness.fakes["stripe"]
    conn = harness.add_connection(connection("stripe", fake, code="stripe_revoked", key="sk_test_revoked"))
    runner = harness.runner()
    customer = await harness.add_customer("stripe", code=conn.code)
    first = await runner.create_inline(conn, customer, "m-1", 5.0)
    second = await runner.create_inline(conn, customer, "m-2", 5.0)
    assert (first.provider_customer_id, second.provider_customer_id) == (None, None)
    assert len(fake.requests) == 1  # the second made no call: the connection is known to be refused


# ------------------------------------------------------------------------------------------------ rolling deploy


async def test_a_replica_without_the_connection_leaves_its_jobs_to_one_that_has_it(harness: ProviderHarness) -> None:
    fake = harness.fakes["stripe"]
    added = connection("stripe", fake, code="stripe_new")
    old_customers = await customers_with_jobs(harness, "stripe", 4)
    new_customers = await customers_with_jobs(harness, "stripe", 4, code=added.code)
    old_replica = harness.runner()  # PROVIDERS_FILE before the deploy
    harness.add_connection(added)
    new_replica = harness.runner()

    await harness.drive(old_replica, until=lambda: linked(harness, old_customers))
    await asyncio.sleep(0.3)  # more rounds of the old replica's claims
    await harness.drive(old_replica, until=lambda: linked(harness, old_customers))
    new_jobs = [job for job in await harness.jobs() if job["connection_code"] == added.code]
    assert [(job["status"], job["attempts"]) for job in new_jobs] == [("pending", 0)] * 4  # never claimed

    await harness.drive(old_replica, new_replica, until=lambda: linked(harness, new_customers))
    await harness.drive(old_replica, new_replica)
    await assert_each_linked_once(harness, fake, old_customers + new_customers)


# ------------------------------------------------------------------------------------------------ dead ends


async def test_a_dead_end_links_the_original_when_search_lags_past_one_deferral(harness: ProviderHarness) -> None:
    fake = stripe_fake(harness)
    fake.search_lag = 1.5  # the created customer is found only after 1.5 s
    fake.fail_next(500, after_processing=True, method="POST", path=CREATE_PATH["stripe"])  # created, stored 500
    (customer,) = await customers_with_jobs(harness, "stripe", 1)

    await harness.drive(harness.runner(search_window=5.0), until=lambda: linked(harness, [customer]))

    keys = {request.idempotency_key for request in creates(fake, "stripe")}
    assert len(keys) == 1  # no create under a derived key
    assert len(fake.requests_to("GET", "/v1/customers/search")) >= 3  # it kept looking
    await asyncio.to_thread(fake.wait_for_requests, len(fake.requests))
    assert len(fake.customers) == 1
    assert await harness.provider_customer_id(customer) == next(iter(fake.customers))


async def test_a_derived_key_create_waits_for_the_whole_search_window(harness: ProviderHarness) -> None:
    fake = stripe_fake(harness)
    fake.fail_next(500, after_processing=True, method="POST", path=CREATE_PATH["stripe"])
    (customer,) = await customers_with_jobs(harness, "stripe", 1)
    with search_never_finds(fake):  # as if the stored 500 had left nothing to find: the derived key creates
        await harness.drive(harness.runner(search_window=1.0), until=lambda: linked(harness, [customer]))

    searches = [r for r in fake.requests_to("GET", "/v1/customers/search") if r.status == 200]
    derived = [r for r in creates(fake, "stripe") if (r.idempotency_key or "").endswith("-r1")]
    assert len(searches) >= 2 and len(derived) == 1
    assert derived[0].received_at - searches[0].received_at >= 1.0


@contextlib.contextmanager
def search_never_finds(fake: FakeStripe) -> Iterator[None]:
    fake.search_lag = 3600.0
    try:
        yield
    finally:
        fake.search_lag = 0.0


# ------------------------------------------------------------------------------------------------ fairness


async def test_a_connection_answering_429_never_holds_back_another(harness: ProviderHarness, noisy: FakeStripe) -> None:
    throttled = harness.add_connection(connection("stripe", noisy, code="stripe_throttled"))
    noisy.fail_next(429, headers={"Retry-After": "1"}, times=FOREVER)
    await customers_with_jobs(harness, "stripe", 30, code=throttled.code)  # first: the oldest jobs
    others = await customers_with_jobs(harness, "stripe", 10)
    runner = harness.runner(concurrency=4)

    loop = asyncio.get_running_loop()
    started = loop.time()
    await harness.drive(runner, until=lambda: linked(harness, others), timeout=10)
    assert loop.time() - started < 3.0
    assert await state_of(harness, throttled.code) == "rate_limited"
    assert len(created_ids(harness.fakes["stripe"])) == 10


async def test_a_slow_connection_with_a_backlog_never_holds_back_another(
    harness: ProviderHarness, noisy: FakeStripe
) -> None:
    """Issue 18 case 6: the slots were shared and taken by due time, so a backlog of slow calls came first."""
    slow = harness.add_connection(connection("stripe", noisy, code="stripe_slow"))
    noisy.delay_next(1.0, times=FOREVER)
    await customers_with_jobs(harness, "stripe", 20, code=slow.code)
    others = await customers_with_jobs(harness, "stripe", 6, provider_payment_methods=())
    runner = harness.runner(concurrency=4, timeout=5.0)

    loop = asyncio.get_running_loop()
    started = loop.time()
    await harness.drive(runner, until=lambda: linked(harness, others), timeout=20)
    assert loop.time() - started < 2.5  # one slow call at most, not the backlog (20 calls of 1 s over 4 slots)
    noisy.clear_faults()


# ------------------------------------------------------------------------------------------------ operators


async def test_an_operator_cancels_a_waiting_job(harness: ProviderHarness) -> None:
    customers = await customers_with_jobs(harness, "gocardless", 2)
    first, second = (job["id"] for job in await harness.jobs())
    assert await cancel_jobs(harness.pool, [first, 999_999]) == [first]
    assert await cancel_jobs(harness.pool, [first]) == []  # already finished
    claimed = await claim_due(harness.pool, 10, 5.0, harness.turns())
    assert [job.id for job in claimed] == [second]
    await harness.pool.execute("UPDATE provider_jobs SET updated_at = now() - interval '2 days' WHERE id = $1", first)
    assert await prune_finished(harness.pool, timedelta(days=1)) == 1
    assert await harness.provider_customer_id(customers[0]) is None

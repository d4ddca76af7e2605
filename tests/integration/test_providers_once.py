"""One provider customer per customer and connection, whatever happens (SPEC §9, §12; issue 10).

One test per case measured on the old code, each through the real batch path, the real SDKs and the Stripe fake,
which models Stripe's documented idempotency layer (stored results, 5xx included; 400 `idempotency_error` for other
parameters; 409 while in progress; customer search).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
import stripe

from tests.fakes.stripe_fake import FakeStripe
from tests.harness.records import command, encode
from tests.integration import test_providers_jobs
from tests.integration.test_providers_jobs import ORG, ProviderHarness
from worker.contract.connections import Connection
from worker.contract.decode import Command, DecodeContext, decode
from worker.providers.idempotency import idempotency_key
from worker.security import SigningKeys
from worker.store.batch import apply_batch
from worker.store.inline import InlineCreate
from worker.store.jobs import claim_due

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes/text content:DeprecationWarning"),
]

CREATE = "/v1/customers"
fakes = test_providers_jobs.fakes  # the fixtures, shared
harness = test_providers_jobs.harness


def body(external_id: str, name: str, *, sync: bool = False) -> dict[str, Any]:
    billing: dict[str, Any] = {"payment_provider": "stripe", "sync_with_provider": True}
    if sync:
        billing["sync"] = True
    return {"external_id": external_id, "name": name, "email": "billing@acme.example", "billing_configuration": billing}


class Batches:
    """Applies commands as the worker does (`apply_batch`), with or without the inline path of `sync: true`."""

    def __init__(self, harness: ProviderHarness, *, budget: float = 2.0) -> None:
        self.harness = harness
        self.runner = harness.runner()
        self.context = DecodeContext(signing_keys=SigningKeys({}), registry=harness.registry)

        async def inline(connection: Connection, customer: Any, message_id: str) -> Any:
            return await self.runner.create_inline(connection, customer, message_id, budget)

        self.inline: InlineCreate = inline

    def commands(self, *bodies: dict[str, Any]) -> list[Command]:
        decoded = [decode(encode(command(ORG, item)), (), self.context) for item in bodies]
        assert all(isinstance(item, Command) for item in decoded)
        return [item for item in decoded if isinstance(item, Command)]

    async def apply(self, commands: Sequence[Command], *, rollback: bool = False) -> None:
        async with self.harness.pool.acquire() as conn:
            if not rollback:
                await apply_batch(
                    conn, commands, registry=self.harness.registry, now=datetime.now(UTC), inline=self.inline
                )
                return
            with pytest.raises(_RolledBackError):
                async with conn.transaction():
                    await apply_batch(
                        conn, commands, registry=self.harness.registry, now=datetime.now(UTC), inline=self.inline
                    )
                    raise _RolledBackError  # another record's failure, a dropped connection, a kill


class _RolledBackError(Exception):
    pass


def stripe_of(harness: ProviderHarness) -> FakeStripe:
    fake = harness.fakes["stripe"]
    assert isinstance(fake, FakeStripe)
    return fake


async def customer_row(harness: ProviderHarness, external_id: str) -> dict[str, Any]:
    row = await harness.pool.fetchrow(
        "SELECT id, name, provider_customer_id FROM customers WHERE organization_id = $1 AND external_id = $2",
        ORG,
        external_id,
    )
    assert row is not None
    return dict(row.items())


async def assert_one_linked_customer(harness: ProviderHarness, external_id: str, name: str) -> None:
    """Exactly one Stripe customer for the customer, linked, carrying `name` and the customer's lago id."""
    fake = stripe_of(harness)
    sent = len(fake.requests_to("POST", CREATE))
    await asyncio.to_thread(fake.wait_for_requests, sent, method="POST", path=CREATE)  # every create answered
    row = await customer_row(harness, external_id)
    mine = [c for c in fake.customers.values() if c["metadata"].get("customer_id") == external_id]
    assert [c["id"] for c in mine] == [row["provider_customer_id"]]
    assert mine[0]["metadata"]["lago_customer_id"] == str(row["id"])
    assert mine[0]["name"] == name


# ------------------------------------------------------------------------------------------------ two creates


async def test_two_background_creates_for_a_new_customer_make_one_stripe_customer(harness: ProviderHarness) -> None:
    batches = Batches(harness)
    await batches.apply(batches.commands(body("cus_twice", "First")))
    await batches.apply(batches.commands(body("cus_twice", "Second")))  # before the link exists

    await harness.drive(batches.runner)

    await assert_one_linked_customer(harness, "cus_twice", "Second")


async def test_two_sync_creates_in_one_batch_make_one_stripe_customer(harness: ProviderHarness) -> None:
    batches = Batches(harness)
    await batches.apply(batches.commands(body("cus_sync2", "First", sync=True), body("cus_sync2", "Second", sync=True)))

    await harness.drive(batches.runner)

    assert len(stripe_of(harness).requests_to("POST", CREATE)) == 1
    await assert_one_linked_customer(harness, "cus_sync2", "Second")


async def test_a_sync_create_while_a_create_is_in_flight_makes_no_second_customer(harness: ProviderHarness) -> None:
    fake = stripe_of(harness)
    batches = Batches(harness, budget=0.3)
    fake.delay_next(1.0, method="POST", path=CREATE)  # the first create outlives its inline budget
    await batches.apply(batches.commands(body("cus_inflight", "First", sync=True)))
    await batches.apply(batches.commands(body("cus_inflight", "Second", sync=True)))

    # Backoff long enough for the first request to finish: until then, Stripe answers the key with 409.
    await harness.drive(harness.runner(backoff_base=0.5, backoff_max=1.0))

    await assert_one_linked_customer(harness, "cus_inflight", "Second")


async def test_one_claim_never_takes_two_jobs_of_one_customer(harness: ProviderHarness) -> None:
    customer = await harness.add_customer("stripe", provider_customer_id="cus_linked")
    first, _, _ = await harness.add_job(customer, "update")
    await harness.add_job(customer, "update")

    claimed = await claim_due(harness.pool, 10, 5.0, harness.turns())
    assert [job.id for job in claimed] == [first]
    assert await claim_due(harness.pool, 10, 5.0, harness.turns()) == []  # the second waits while the first runs


# ------------------------------------------------------------------------------------------------ latest fields


async def test_a_name_change_right_after_a_sync_create_reaches_stripe(harness: ProviderHarness) -> None:
    batches = Batches(harness)
    created, renamed = batches.commands(body("cus_rename", "Before", sync=True), body("cus_rename", "After"))
    await batches.apply([created, renamed])

    await harness.drive(batches.runner)

    await assert_one_linked_customer(harness, "cus_rename", "After")


async def test_a_full_body_resent_with_a_new_name_pushes_it(harness: ProviderHarness) -> None:
    batches = Batches(harness)
    await batches.apply(batches.commands(body("cus_full", "Before", sync=True)))
    await batches.apply(batches.commands(body("cus_full", "After")))  # the link repeated, as producers send it

    await harness.drive(batches.runner)

    await assert_one_linked_customer(harness, "cus_full", "After")


async def test_a_change_during_a_background_create_is_pushed_after_it(harness: ProviderHarness) -> None:
    fake = stripe_of(harness)
    batches = Batches(harness)
    await batches.apply(batches.commands(body("cus_during", "Before")))
    fake.delay_next(1.0, after_processing=True, method="POST", path=CREATE)
    runner = asyncio.create_task(batches.runner.run())
    try:
        while not fake.requests_to("POST", CREATE):  # noqa: ASYNC110 - polls the fake's state (another thread)
            await asyncio.sleep(0.01)
        await batches.apply(batches.commands({"external_id": "cus_during", "name": "After"}))
    finally:
        batches.runner.stop()
        await runner
    await harness.drive(batches.runner)

    row = await customer_row(harness, "cus_during")
    (stripe_customer,) = fake.customers.values()
    assert row["name"] == "After"
    assert stripe_customer["id"] == row["provider_customer_id"]
    assert stripe_customer["name"] == "After"


# ------------------------------------------------------------------------------------------------ identical retries


async def test_a_rolled_back_sync_create_is_retried_with_the_same_request(harness: ProviderHarness) -> None:
    fake = stripe_of(harness)
    batches = Batches(harness)
    commands = batches.commands(body("cus_rollback", "Acme", sync=True))
    await batches.apply(commands, rollback=True)
    await batches.apply(commands)  # redelivered

    await harness.drive(batches.runner)

    first, second = fake.requests_to("POST", CREATE)
    assert first.raw_body == second.raw_body and first.idempotency_key == second.idempotency_key
    assert second.outcome == "replayed"
    await assert_one_linked_customer(harness, "cus_rollback", "Acme")


async def test_a_background_create_retried_after_a_change_sends_its_snapshot(harness: ProviderHarness) -> None:
    fake = stripe_of(harness)
    batches = Batches(harness)
    await batches.apply(batches.commands(body("cus_snapshot", "Before")))
    fake.drop_next(after_processing=True, method="POST", path=CREATE)  # created, but the answer is lost

    async def first_attempt_over() -> bool:
        return any(job["attempts"] == 1 and job["status"] == "pending" for job in await harness.jobs())

    await harness.drive(harness.runner(backoff_base=60.0, backoff_max=60.0), until=first_attempt_over)
    await batches.apply(batches.commands({**body("cus_snapshot", "After")}))
    await harness.pool.execute("UPDATE provider_jobs SET next_attempt_at = now()")  # due again now
    await harness.drive(batches.runner)

    first, second = fake.requests_to("POST", CREATE)
    assert second.raw_body == first.raw_body and second.outcome == "replayed"
    await assert_one_linked_customer(harness, "cus_snapshot", "After")


# ------------------------------------------------------------------------------------------------ dead ends


async def test_a_stored_500_is_resolved_by_search_and_linked(harness: ProviderHarness) -> None:
    fake = stripe_of(harness)
    batches = Batches(harness)
    await batches.apply(batches.commands(body("cus_stored500", "Acme")))
    fake.fail_next(500, after_processing=True, method="POST", path=CREATE)  # Stripe executed it, then failed

    await harness.drive(batches.runner)

    await assert_one_linked_customer(harness, "cus_stored500", "Acme")
    assert fake.requests_to("GET", "/v1/customers/search")
    events = [event.event_type for event in await harness.events()]
    assert "customer.payment_provider_created" in events
    assert "customer.payment_provider_error" not in events


async def test_a_key_refused_for_other_parameters_creates_under_a_derived_key(harness: ProviderHarness) -> None:
    fake = stripe_of(harness)
    batches = Batches(harness)
    (created,) = batches.commands(body("cus_mismatch", "Acme"))
    # The command's key was spent on another request (e.g. by an older version of the worker): a dead end, and
    # no Stripe customer carries this customer's lago id.
    client = stripe.StripeClient(fake.api_key, base_addresses={"api": fake.url}, http_client=stripe.HTTPXClient())
    key = idempotency_key(ORG, created.message_id, "create")
    await client.v1.customers.create_async({"name": "Someone else"}, options={"idempotency_key": key})
    await batches.apply([created])

    await harness.drive(batches.runner)

    await assert_one_linked_customer(harness, "cus_mismatch", "Acme")
    keys = [request.idempotency_key for request in fake.requests_to("POST", CREATE)]
    # The job's first attempt meets the dead end and finds nothing; it looks again later (search may lag a fresh
    # create), still finds nothing, and creates under the derived key.
    assert keys == [key, key, key, f"{key}-r1"]
    assert len(fake.requests_to("GET", "/v1/customers/search")) == 2
    assert [(job["status"], job["attempts"]) for job in await harness.jobs() if job["kind"] == "create"] == [
        ("done", 2)
    ]


# ------------------------------------------------------------------------------------------------ Retry-After


async def test_retry_after_of_an_inline_attempt_delays_the_background_job(harness: ProviderHarness) -> None:
    fake = stripe_of(harness)
    batches = Batches(harness, budget=0.3)
    fake.fail_next(429, headers={"Retry-After": "30"}, method="POST", path=CREATE)
    await batches.apply(batches.commands(body("cus_429", "Acme", sync=True)))

    (job,) = await harness.jobs()
    assert job["status"] == "pending"
    assert (job["next_attempt_at"] - job["created_at"]).total_seconds() >= 29
    assert await claim_due(harness.pool, 10, 5.0, harness.turns()) == []  # not due before Retry-After

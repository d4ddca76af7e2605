"""Provider jobs end to end: real PostgreSQL, the real SDKs, the local fakes (SPEC §5, §6, §9, §11).

Each provider goes through the same scenarios: create and link, 429 with Retry-After, 500, timeout, 401 (and the
broken connection it leaves), a validation error, a crash between the provider call and the database write, and
several replicas racing for the same jobs. `ProviderHarness` (also used by the other `test_providers_*` modules)
holds the database, the fakes and the connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest
from pydantic import SecretStr, TypeAdapter

from tests.fakes.adyen_fake import DEFAULT_ADYEN_KEY, DEFAULT_MERCHANT_ACCOUNT, FakeAdyen, adyen_error_body
from tests.fakes.base import FakeServer
from tests.fakes.gocardless_fake import DEFAULT_GOCARDLESS_TOKEN, FakeGoCardless
from tests.fakes.stripe_fake import DEFAULT_STRIPE_KEY, FakeStripe
from tests.harness.database import migrate_database
from tests.harness.records import RecordFactory, RecordingSink, command, encode, new_traceparent
from worker.contract.connections import Connection, ConnectionConfig, ProviderName, ProviderRegistry
from worker.contract.decode import DecodeContext
from worker.contract.events import AnyEvent
from worker.domain.customer import CustomerState, columns_of
from worker.domain.jobs import ConnectionTurn, JobResult
from worker.observability import Metrics
from worker.providers.factory import AdapterFactory
from worker.providers.idempotency import idempotency_key
from worker.providers.runner import ProviderJobRunner
from worker.security import SigningKeys
from worker.service import BatchService
from worker.store.db import create_pool
from worker.store.jobs import LeaseLostError, claim_due, claim_expired, record_success

pytestmark = [
    pytest.mark.timeout(60),
    # stripe's HTTPXClient passes the form body as `data=`; httpx deprecates that (an SDK matter, not ours).
    pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes/text content:DeprecationWarning"),
]

ORG = "org_providers"
PROVIDERS: tuple[ProviderName, ...] = ("stripe", "gocardless", "adyen")
SDK_TIMEOUT = 0.5
FINISHED = frozenset({"done", "failed", "skipped"})
#: The request that creates the provider customer (for Adyen: the payment link).
CREATE_PATH: dict[str, str] = {"stripe": "/v1/customers", "gocardless": "/customers", "adyen": "/v72/paymentLinks"}
DEFAULT_KEYS: dict[str, str] = {
    "stripe": DEFAULT_STRIPE_KEY,
    "gocardless": DEFAULT_GOCARDLESS_TOKEN,
    "adyen": DEFAULT_ADYEN_KEY,
}
_EVENTS: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)


def connection(
    provider: ProviderName,
    fake: FakeServer,
    *,
    code: str | None = None,
    key: str | None = None,
    organization_id: str = ORG,
    **settings: Any,
) -> Connection:
    if provider == "adyen":
        settings.setdefault("merchant_account", DEFAULT_MERCHANT_ACCOUNT)
    config = ConnectionConfig(
        organization_id=organization_id,
        code=code or f"{provider}_main",
        provider=provider,
        secret_env="UNUSED_IN_TESTS",
        api_base=fake.url,  # type: ignore[arg-type]  # pydantic parses the string
        rate_limit_per_second=settings.pop("rate_limit_per_second", 200.0),
        **settings,
    )
    return Connection(config=config, secret=SecretStr(key or DEFAULT_KEYS[provider]))


async def insert_customer(pool: asyncpg.Pool[asyncpg.Record], state: CustomerState) -> None:
    """A customer row as the batch would store it (written here directly: these tests are about the jobs)."""
    values = columns_of(state)
    for column in ("metadata", "tax_codes", "provider_payment_methods"):
        # orjson writes the metadata entries (plain dicts or dataclasses) as they are
        values[column] = None if values[column] is None else orjson.dumps(list(values[column])).decode()
    columns = list(values)
    placeholders = ", ".join(f"${index}" for index in range(1, len(columns) + 1))
    await pool.execute(
        f"INSERT INTO customers ({', '.join(columns)}) VALUES ({placeholders})", *(values[c] for c in columns)
    )


@dataclass(frozen=True)
class Event:
    event_type: str
    key: str
    traceparent: str | None
    body: dict[str, Any]


@dataclass
class ProviderHarness:
    pool: asyncpg.Pool[asyncpg.Record]
    fakes: dict[str, FakeServer]
    connections: list[Connection] = field(default_factory=list)
    metrics: Metrics = field(default_factory=lambda: Metrics(process_metrics=False))
    factories: list[AdapterFactory] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.connections:
            self.connections = [connection(provider, self.fakes[provider]) for provider in PROVIDERS]

    def add_connection(self, conn: Connection) -> Connection:
        self.connections.append(conn)
        return conn

    @property
    def registry(self) -> ProviderRegistry:
        return ProviderRegistry(self.connections)

    def runner(self, *, timeout: float = SDK_TIMEOUT, **options: Any) -> ProviderJobRunner:
        """A runner as one replica would have it: its own adapters, rate limiters and broken-connection memory."""
        factory = AdapterFactory(timeout=timeout, max_threads=options.get("concurrency", 4))
        self.factories.append(factory)
        settings: dict[str, Any] = {
            "concurrency": 4,
            "lease_seconds": 5.0,
            "poll_interval": 0.05,
            "backoff_base": 0.05,
            "backoff_max": 0.2,
            "search_window": 0.0,
            "state_refresh_interval": 0.05,
        }
        settings.update(options)
        return ProviderJobRunner(self.pool, self.registry, factory, self.metrics, **settings)

    def turns(self) -> list[ConnectionTurn]:
        """Every connection, with room for any number of jobs (for claims made by a test itself)."""
        return [ConnectionTurn(c.organization_id, c.code, c.provider, 100, 0) for c in self.connections]

    async def add_customer(
        self,
        provider: ProviderName,
        *,
        code: str | None = None,
        external_id: str | None = None,
        provider_customer_id: str | None = None,
        **fields: Any,
    ) -> CustomerState:
        now = datetime.now(UTC)
        values: dict[str, Any] = {
            "name": "Ada Lovelace",
            "firstname": "Ada",
            "lastname": "Lovelace",
            "email": "ada@example.com,accounts@example.com",
            "phone": "+33 1 02 03 04 05",
            "address_line1": "1 rue de la Paix",
            "city": "Paris",
            "zipcode": "75002",
            "country": "FR",
            "currency": "EUR",
        }
        if provider == "stripe":
            values["provider_payment_methods"] = ("card", "sepa_debit")
        values.update(fields)
        state = CustomerState(
            id=uuid.uuid4(),
            organization_id=ORG,
            external_id=external_id or f"cus_{uuid.uuid4().hex[:10]}",
            created_at=now,
            updated_at=now,
            payment_provider=provider,
            payment_provider_code=code or f"{provider}_main",
            provider_customer_id=provider_customer_id,
            **values,
        )
        await insert_customer(self.pool, state)
        return state

    async def add_job(
        self, customer: CustomerState, kind: str = "create", *, message_id: str | None = None
    ) -> tuple[int, str, str]:
        """(job id, message id, traceparent)."""
        message_id = message_id or str(uuid.uuid4())
        traceparent = new_traceparent()
        job_id: int = await self.pool.fetchval(
            "INSERT INTO provider_jobs (organization_id, customer_id, message_id, kind, provider, connection_code, "
            "traceparent) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            customer.organization_id,
            customer.id,
            message_id,
            kind,
            customer.payment_provider,
            customer.payment_provider_code,
            traceparent,
        )
        return job_id, message_id, traceparent

    async def jobs(self) -> list[dict[str, Any]]:
        rows = await self.pool.fetch("SELECT * FROM provider_jobs ORDER BY id")
        result = []
        for row in rows:
            job = dict(row.items())
            job["last_error"] = orjson.loads(job["last_error"]) if job["last_error"] is not None else None
            result.append(job)
        return result

    async def all_finished(self) -> bool:
        return all(job["status"] in FINISHED for job in await self.jobs())

    async def provider_customer_id(self, customer: CustomerState) -> str | None:
        value: str | None = await self.pool.fetchval(
            "SELECT provider_customer_id FROM customers WHERE id = $1", customer.id
        )
        return value

    async def events(self) -> list[Event]:
        rows = await self.pool.fetch("SELECT event_type, event_key, traceparent, payload FROM outbox ORDER BY id")
        events = []
        for row in rows:
            body = orjson.loads(row["payload"])
            _EVENTS.validate_python(body)  # every payload matches the published schema
            events.append(Event(row["event_type"], row["event_key"], row["traceparent"], body))
        return events

    async def drive(
        self,
        *runners: ProviderJobRunner,
        until: Callable[[], Awaitable[bool]] | None = None,
        timeout: float = 15.0,  # noqa: ASYNC109 - a helper with a deadline of its own
    ) -> None:
        """Run the runners until `until()` holds (default: every job finished), then stop them."""
        condition = until or self.all_finished
        tasks = [asyncio.create_task(runner.run()) for runner in runners]
        try:
            async with asyncio.timeout(timeout):
                while not await condition():
                    for task in tasks:
                        if task.done():
                            task.result()
                    await asyncio.sleep(0.02)
        finally:
            for runner in runners:
                runner.stop()
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)

    async def close(self) -> None:
        for factory in self.factories:
            await factory.aclose_all()


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeServer]]:
    servers: dict[str, FakeServer] = {"stripe": FakeStripe(), "gocardless": FakeGoCardless(), "adyen": FakeAdyen()}
    with contextlib.ExitStack() as stack:
        for server in servers.values():
            stack.enter_context(server)
        yield servers


@pytest.fixture
async def harness(fresh_database: str, fakes: dict[str, FakeServer]) -> AsyncIterator[ProviderHarness]:
    for fake in fakes.values():
        fake.reset()
    await migrate_database(fresh_database)
    pool = await create_pool(fresh_database, size=6)
    harness = ProviderHarness(pool=pool, fakes=fakes)
    try:
        yield harness
    finally:
        await harness.close()
        await pool.close()


def created_ids(fake: FakeServer) -> list[str]:
    """What the fake holds that a create made: customers, or for Adyen payment links."""
    if isinstance(fake, FakeAdyen):
        return list(fake.links)
    assert isinstance(fake, FakeStripe | FakeGoCardless)
    return list(fake.customers)


def creates(fake: FakeServer, provider: str) -> list[Any]:
    return fake.requests_to("POST", CREATE_PATH[provider])


def expected_checkout_url(fake: FakeServer) -> str:
    if isinstance(fake, FakeStripe):
        (session,) = fake.checkout_sessions.values()
        url: str = session["url"]
    elif isinstance(fake, FakeGoCardless):
        (flow,) = fake.billing_request_flows.values()
        url = flow["authorisation_url"]
    else:
        assert isinstance(fake, FakeAdyen)
        (link,) = fake.links.values()
        url = link["url"]
    return url


# ------------------------------------------------------------------------------------------------ create and link


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_create_links_customer_and_emits_events(harness: ProviderHarness, provider: ProviderName) -> None:
    fake = harness.fakes[provider]
    customer = await harness.add_customer(provider)
    _, message_id, traceparent = await harness.add_job(customer)

    await harness.drive(harness.runner())

    (created,) = created_ids(fake)
    provider_customer_id = customer.external_id if provider == "adyen" else created
    assert await harness.provider_customer_id(customer) == provider_customer_id
    jobs = await harness.jobs()
    assert [(job["kind"], job["status"], job["attempts"]) for job in jobs] == (
        [("create", "done", 1)] if provider == "adyen" else [("create", "done", 1), ("checkout", "done", 1)]
    )
    events = await harness.events()
    assert [event.event_type for event in events] == [
        "customer.payment_provider_created",
        "customer.checkout_url_generated",
    ]
    for event in events:
        assert event.key == f"{ORG}:{customer.external_id}"
        assert event.traceparent == traceparent
        assert event.body["message_id"] == message_id
        assert event.body["customer"]["billing_configuration"]["provider_customer_id"] == provider_customer_id
    assert events[1].body["checkout_url"] == expected_checkout_url(fake)

    (request,) = creates(fake, provider)
    assert request.idempotency_key == idempotency_key(ORG, message_id, "create")
    if provider == "stripe":
        assert request.body["name"] == "Ada Lovelace"
        assert request.body["email"] == "ada@example.com"  # the first address of the list
        assert request.body["address"] == {
            "line1": "1 rue de la Paix",
            "city": "Paris",
            "postal_code": "75002",
            "country": "FR",
        }
        assert request.body["metadata"] == {"lago_customer_id": str(customer.id), "customer_id": customer.external_id}
        (session_request,) = fake.requests_to("POST", "/v1/checkout/sessions")
        assert session_request.body["mode"] == "setup"
        assert session_request.body["allowed_payment_method_types"] == ["card", "sepa_debit"]
        assert session_request.body["customer"] == provider_customer_id
    elif provider == "gocardless":
        assert request.body["customers"]["company_name"] == "Ada Lovelace"
        assert request.body["customers"]["given_name"] == "Ada"
        assert request.body["customers"]["family_name"] == "Lovelace"
        assert request.body["customers"]["email"] == "ada@example.com"
    else:
        assert request.body["shopperReference"] == customer.external_id
        assert request.body["merchantAccount"] == DEFAULT_MERCHANT_ACCOUNT
    samples = harness.metrics.render().decode()
    assert f'customer_worker_provider_calls_total{{outcome="success",provider="{provider}"}}' in samples


async def test_stripe_without_methods_to_set_up_gets_no_checkout(harness: ProviderHarness) -> None:
    customer = await harness.add_customer("stripe", provider_payment_methods=("customer_balance",))
    await harness.add_job(customer)
    await harness.drive(harness.runner())
    assert [(job["kind"], job["status"]) for job in await harness.jobs()] == [("create", "done")]
    assert [event.event_type for event in await harness.events()] == ["customer.payment_provider_created"]
    assert harness.fakes["stripe"].requests_to("POST", "/v1/checkout/sessions") == []


async def test_stripe_update_pushes_fields_and_emits_nothing(harness: ProviderHarness) -> None:
    fake = harness.fakes["stripe"]
    assert isinstance(fake, FakeStripe)
    runner = harness.runner()
    customer = await harness.add_customer("stripe", provider_payment_methods=("customer_balance",))
    await harness.add_job(customer)
    await harness.drive(runner)
    (stripe_id,) = fake.customers
    await harness.pool.execute(
        "UPDATE customers SET name = 'Ada King', email = NULL, city = 'London' WHERE id = $1", customer.id
    )
    await harness.add_job(customer, "update")
    await harness.drive(runner)

    stored = fake.customers[stripe_id]
    assert (stored["name"], stored["email"], stored["address"]["city"]) == ("Ada King", None, "London")
    assert [event.event_type for event in await harness.events()] == ["customer.payment_provider_created"]
    assert [job["status"] for job in await harness.jobs()] == ["done", "done"]


async def test_checkout_job_for_a_linked_stripe_customer(harness: ProviderHarness) -> None:
    fake = harness.fakes["stripe"]
    assert isinstance(fake, FakeStripe)
    runner = harness.runner()
    customer = await harness.add_customer("stripe", provider_payment_methods=("customer_balance",))
    await harness.add_job(customer)
    await harness.drive(runner)
    await harness.pool.execute(
        'UPDATE customers SET provider_payment_methods = \'["sepa_debit", "crypto"]\' WHERE id = $1', customer.id
    )
    await harness.add_job(customer, "checkout")
    await harness.drive(runner)

    events = await harness.events()
    assert [event.event_type for event in events] == [
        "customer.payment_provider_created",
        "customer.checkout_url_generated",
    ]
    (session,) = fake.checkout_sessions.values()
    assert events[-1].body["checkout_url"] == session["url"]
    assert session["allowed_payment_method_types"] == ["sepa_debit"]


async def test_unlinked_meanwhile_is_skipped_without_a_call(harness: ProviderHarness) -> None:
    customer = await harness.add_customer("stripe")
    await harness.add_job(customer)
    await harness.pool.execute(
        "UPDATE customers SET payment_provider = NULL, payment_provider_code = NULL WHERE id = $1", customer.id
    )
    await harness.drive(harness.runner())
    (job,) = await harness.jobs()
    assert (job["status"], job["last_error"]) == ("skipped", {"skipped": "connection_unlinked"})
    assert harness.fakes["stripe"].requests == []
    assert await harness.events() == []


# ------------------------------------------------------------------------------------------------ transient failures


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_429_with_retry_after_then_success(harness: ProviderHarness, provider: ProviderName) -> None:
    fake = harness.fakes[provider]
    fake.fail_next(429, headers={"Retry-After": "1"}, method="POST", path=CREATE_PATH[provider])
    customer = await harness.add_customer(provider)
    _, message_id, _ = await harness.add_job(customer)

    await harness.drive(harness.runner())

    first, second = creates(fake, provider)
    assert first.status == 429
    assert second.received_at - first.received_at >= 0.95  # Retry-After honoured (the backoff alone is ~0.05 s)
    assert first.idempotency_key == second.idempotency_key == idempotency_key(ORG, message_id, "create")
    assert len(created_ids(fake)) == 1
    create_job = (await harness.jobs())[0]
    assert (create_job["status"], create_job["attempts"]) == ("done", 2)
    assert await harness.provider_customer_id(customer) is not None
    samples = harness.metrics.render().decode()
    assert f'customer_worker_provider_calls_total{{outcome="retryable_error",provider="{provider}"}} 1.0' in samples


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_500_then_success(harness: ProviderHarness, provider: ProviderName) -> None:
    fake = harness.fakes[provider]
    fake.fail_next(500, method="POST", path=CREATE_PATH[provider])
    customer = await harness.add_customer(provider)
    await harness.add_job(customer)

    await harness.drive(harness.runner())

    first, second = creates(fake, provider)
    assert (first.status, first.idempotency_key) == (500, second.idempotency_key)
    assert len(created_ids(fake)) == 1
    assert (await harness.jobs())[0]["attempts"] == 2
    assert (await harness.events())[0].event_type == "customer.payment_provider_created"


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_timeout_then_success_makes_one_customer(harness: ProviderHarness, provider: ProviderName) -> None:
    fake = harness.fakes[provider]
    # Created at the provider, but the answer comes after the SDK gave up: the retry must not create a second one.
    fake.delay_next(1.5, after_processing=True, method="POST", path=CREATE_PATH[provider])
    customer = await harness.add_customer(provider)
    await harness.add_job(customer)

    await harness.drive(harness.runner())

    (created,) = created_ids(fake)
    assert await harness.provider_customer_id(customer) == (customer.external_id if provider == "adyen" else created)
    keys = {request.idempotency_key for request in creates(fake, provider)}
    assert len(keys) == 1
    assert (await harness.jobs())[0]["attempts"] == 2


async def test_lost_answer_is_retried_with_the_same_key(harness: ProviderHarness) -> None:
    fake = harness.fakes["stripe"]
    fake.drop_next(after_processing=True, method="POST", path="/v1/customers")
    customer = await harness.add_customer("stripe", provider_payment_methods=("customer_balance",))
    await harness.add_job(customer)
    await harness.drive(harness.runner())
    assert [request.outcome for request in creates(fake, "stripe")] == ["dropped", "replayed"]
    assert len(created_ids(fake)) == 1


async def test_503s_beyond_max_attempts_wait_then_link(harness: ProviderHarness) -> None:
    """Issue 18 case 5: the old horizon (`max_attempts` failed calls) failed the job for good; a 5xx now waits."""
    fake = harness.fakes["gocardless"]
    fake.fail_next(503, times=8, method="POST", path="/customers")
    customer = await harness.add_customer("gocardless")
    await harness.add_job(customer)

    await harness.drive(harness.runner(max_attempts=3))

    create = next(job for job in await harness.jobs() if job["kind"] == "create")
    assert (create["status"], create["attempts"]) == ("done", 9)
    assert await harness.provider_customer_id(customer) in created_ids(fake)
    assert len(created_ids(fake)) == 1
    assert "customer.payment_provider_error" not in [event.event_type for event in await harness.events()]


# ------------------------------------------------------------------------------------------------ final failures


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_401_pauses_the_connection_until_a_test_call_succeeds(
    harness: ProviderHarness, provider: ProviderName
) -> None:
    """Issue 18 case 5: a 401 failed the job for good (and refused the connection's other jobs for a minute)."""
    fake = harness.fakes[provider]
    revoked = "sk_test_revoked_key_0000000000"
    bad = harness.add_connection(connection(provider, fake, code=f"{provider}_revoked", key=revoked))
    customers = [await harness.add_customer(provider, code=bad.code) for _ in range(3)]
    for customer in customers:
        await harness.add_job(customer)
    runner = harness.runner(concurrency=1, check_interval=0.3)

    async def paused() -> bool:
        state = await harness.pool.fetchval("SELECT state FROM provider_connections WHERE code = $1", bad.code)
        return state == "credentials_refused" and len(fake.requests) >= 2  # the 401, then a refused test call

    await harness.drive(runner, until=paused)
    assert [request.status for request in fake.requests][:2] == [401, 401]
    assert len(creates(fake, provider)) == 1  # the other jobs made no call: the connection is paused
    jobs = await harness.jobs()
    assert [job["status"] for job in jobs] == ["pending"] * 3
    assert await harness.events() == []

    fake.api_keys.add(revoked)  # the key works again (rotated back, re-enabled at the provider)
    try:
        await harness.drive(runner, until=lambda: _all_linked(harness, customers))
    finally:
        fake.api_keys.discard(revoked)
    assert await harness.pool.fetchval("SELECT state FROM provider_connections WHERE code = $1", bad.code) == "working"
    assert len(created_ids(fake)) == 3
    events = [event.event_type for event in await harness.events()]
    assert "customer.payment_provider_error" not in events
    assert events.count("customer.payment_provider_created") == 3


async def _all_linked(harness: ProviderHarness, customers: list[CustomerState]) -> bool:
    return all([await harness.provider_customer_id(customer) is not None for customer in customers])


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_validation_error_fails_at_once(harness: ProviderHarness, provider: ProviderName) -> None:
    fake = harness.fakes[provider]
    if provider == "stripe":
        customer = await harness.add_customer(provider, email="invalid@example.invalid")
        expected = ("email_invalid", 400)
    elif provider == "gocardless":
        customer = await harness.add_customer(provider, email="invalid@example.invalid")
        expected = ("validation_failed", 422)
    else:
        fake.fail_next(422, adyen_error_body(422, "702", "Unexpected input: 'xx'", "validation"), method="POST")
        customer = await harness.add_customer(provider)
        expected = ("702", 422)
    await harness.add_job(customer)

    await harness.drive(harness.runner())

    assert len(fake.requests) == 1
    (job,) = await harness.jobs()
    assert (job["status"], job["attempts"]) == ("failed", 1)
    (event,) = await harness.events()
    assert event.event_type == "customer.payment_provider_error"
    error = event.body["provider_error"]
    assert (error["error_code"], error["http_status"]) == expected
    assert "invalid@example" not in error["message"]  # the provider's text quotes the address: never passed on
    assert "xx" not in error["message"]
    if provider != "adyen":
        assert "email" in error["message"]  # the offending field is named


# ------------------------------------------------------------------------------------------------ crash and replicas


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_crash_after_the_call_before_the_write(harness: ProviderHarness, provider: ProviderName) -> None:
    fake = harness.fakes[provider]
    # The provider does the work, then holds the answer: meanwhile the replica that asked dies.
    fake.delay_next(1.0, after_processing=True, method="POST", path=CREATE_PATH[provider])
    customer = await harness.add_customer(provider)
    await harness.add_job(customer)

    doomed = harness.runner(lease_seconds=1.0)
    doomed_task = asyncio.create_task(doomed.run())
    async with asyncio.timeout(5):
        # Polled: the fake's thread stores the customer before it holds the answer, and has no event to await.
        while not created_ids(fake):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    doomed_task.cancel()  # like kill -9: no release of the lease, no write
    with contextlib.suppress(asyncio.CancelledError):
        await doomed_task
    (job,) = await harness.jobs()
    assert (job["status"], job["attempts"]) == ("running", 1)

    await harness.drive(harness.runner(lease_seconds=1.0))  # picks the job up once the lease ran out

    assert len(created_ids(fake)) == 1
    requests = creates(fake, provider)
    assert len(requests) == 2
    assert len({request.idempotency_key for request in requests}) == 1
    create_job = (await harness.jobs())[0]
    assert (create_job["status"], create_job["attempts"]) == ("done", 2)
    assert await harness.provider_customer_id(customer) is not None
    created_events = [e for e in await harness.events() if e.event_type == "customer.payment_provider_created"]
    assert len(created_events) == 1


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_replicas_run_each_job_once(harness: ProviderHarness, provider: ProviderName) -> None:
    fake = harness.fakes[provider]
    extra: dict[str, Any] = {"provider_payment_methods": ("customer_balance",)} if provider == "stripe" else {}
    customers = [await harness.add_customer(provider, **extra) for _ in range(24)]
    for customer in customers:
        await harness.add_job(customer)

    await harness.drive(*(harness.runner(concurrency=4) for _ in range(3)))

    assert len(creates(fake, provider)) == 24  # one call per job, whichever replica claimed it
    assert len(created_ids(fake)) == 24
    jobs = [job for job in await harness.jobs() if job["kind"] == "create"]
    assert {(job["status"], job["attempts"]) for job in jobs} == {("done", 1)}
    created_events = [e for e in await harness.events() if e.event_type == "customer.payment_provider_created"]
    assert sorted(e.body["external_id"] for e in created_events) == sorted(c.external_id for c in customers)


# ------------------------------------------------------------------------------------------------ inline (sync: true)


async def test_inline_create_then_background_job_reuses_the_key(harness: ProviderHarness) -> None:
    fake = harness.fakes["stripe"]
    runner = harness.runner()
    (conn,) = [c for c in harness.connections if c.provider == "stripe"]
    quick = await harness.add_customer("stripe")
    assert (await runner.create_inline(conn, quick, str(uuid.uuid4()), 2.0)).provider_customer_id in created_ids(fake)

    # The answer comes too late for the budget: None, and the background job finds the same customer.
    fake.delay_next(1.0, after_processing=True, method="POST", path="/v1/customers")
    slow = await harness.add_customer("stripe", provider_payment_methods=("customer_balance",))
    message_id = str(uuid.uuid4())
    started = asyncio.get_running_loop().time()
    assert (await runner.create_inline(conn, slow, message_id, 0.3)).provider_customer_id is None
    assert asyncio.get_running_loop().time() - started < 0.6
    await harness.add_job(slow, message_id=message_id)
    await harness.drive(runner)
    assert len(created_ids(fake)) == 2
    assert await harness.provider_customer_id(slow) in created_ids(fake)
    samples = harness.metrics.render().decode()
    assert 'customer_worker_provider_calls_total{outcome="timeout",provider="stripe"} 1.0' in samples


# ------------------------------------------------------------------------------------------------ leases and the gate


async def test_a_stale_claim_writes_nothing(harness: ProviderHarness) -> None:
    customer = await harness.add_customer("stripe")
    await harness.add_job(customer)
    (first,) = await claim_due(harness.pool, 10, 30.0, harness.turns())
    await harness.pool.execute("UPDATE provider_jobs SET lease_until = now() - interval '1 second'")
    (second,) = await claim_expired(harness.pool, 10, 30.0, harness.turns())
    assert (first.id, first.attempts, second.attempts) == (second.id, 1, 2)

    with pytest.raises(LeaseLostError):
        await record_success(harness.pool, first, JobResult("cus_stale"), datetime.now(UTC))
    assert await harness.provider_customer_id(customer) is None
    assert await harness.events() == []
    await record_success(harness.pool, second, JobResult("cus_fresh"), datetime.now(UTC))
    assert await harness.provider_customer_id(customer) == "cus_fresh"


async def test_graceful_stop_gives_jobs_back(harness: ProviderHarness) -> None:
    fake = harness.fakes["stripe"]
    fake.delay_next(3.0, method="POST", path="/v1/customers")
    customer = await harness.add_customer("stripe")
    await harness.add_job(customer)
    runner = harness.runner(drain_timeout=0.2, timeout=5.0)
    task = asyncio.create_task(runner.run())
    async with asyncio.timeout(5):
        while not fake.requests:  # noqa: ASYNC110 - the fake lives in another thread
            await asyncio.sleep(0.01)
    runner.stop()
    await asyncio.wait_for(task, 5)
    (job,) = await harness.jobs()
    assert (job["status"], job["attempts"], job["lease_until"]) == ("pending", 1, None)


async def test_crash_loops_end_in_a_failure_without_a_call(harness: ProviderHarness) -> None:
    customer = await harness.add_customer("adyen")
    await harness.add_job(customer)
    # Three claims that never recorded an outcome (the runner died in each).
    await harness.pool.execute("UPDATE provider_jobs SET attempts = 3, worker_faults = 3")
    await harness.drive(harness.runner(max_attempts=3))
    (job,) = await harness.jobs()
    assert (job["status"], job["last_error"]["error_code"]) == ("failed", "attempts_exhausted")
    assert harness.fakes["adyen"].requests == []
    assert [event.event_type for event in await harness.events()] == ["customer.payment_provider_error"]


# ------------------------------------------------------------------------------------------------ with the batch


async def test_a_command_with_sync_with_provider_ends_in_provider_events(harness: ProviderHarness) -> None:
    registry = harness.registry
    service = BatchService(
        pool=harness.pool,
        decode_context=DecodeContext(signing_keys=SigningKeys({}), registry=registry),
        registry=registry,
        dead_letters=RecordingSink(),
    )
    body = {
        "external_id": "cus_batch",
        "name": "Acme",
        "email": "billing@acme.example",
        "billing_configuration": {"payment_provider": "stripe", "sync_with_provider": True},
    }
    document = command(ORG, body)
    traceparent = new_traceparent()
    headers = (("content-type", b"application/json"), ("traceparent", traceparent.encode()))
    await service.handle([RecordFactory().record(encode(document), headers=headers)])

    await harness.drive(harness.runner())

    events = await harness.events()
    assert [event.event_type for event in events] == [
        "customer.created",
        "customer.payment_provider_created",
        "customer.checkout_url_generated",
    ]
    assert {event.body["message_id"] for event in events} == {document["message_id"]}
    assert {event.traceparent for event in events} == {traceparent}
    (stripe_id,) = created_ids(harness.fakes["stripe"])
    assert events[1].body["customer"]["billing_configuration"]["provider_customer_id"] == stripe_id
    assert events[1].body["customer"]["lago_id"] == events[0].body["customer"]["lago_id"]

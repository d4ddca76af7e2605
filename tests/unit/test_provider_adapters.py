"""Provider adapters through the real SDKs against the local fakes (no database): what each sends, how each SDK
failure is classified, and the pieces of the runner that need no database (keys, backoff, the credentials gate,
inline)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from pydantic import SecretStr

from tests.fakes.adyen_fake import DEFAULT_ADYEN_KEY, DEFAULT_MERCHANT_ACCOUNT, FakeAdyen
from tests.fakes.base import FakeServer
from tests.fakes.gocardless_fake import DEFAULT_GOCARDLESS_TOKEN, FakeGoCardless
from tests.fakes.stripe_fake import DEFAULT_STRIPE_KEY, FakeStripe
from worker.contract.connections import Connection, ConnectionConfig, ProviderName
from worker.domain.customer import CustomerState, stripe_setup_methods
from worker.observability import Metrics
from worker.providers.base import ProviderError, parse_retry_after
from worker.providers.caller import ConnectionGate, ProviderCaller, backoff_delay
from worker.providers.connections import metric_label
from worker.providers.factory import AdapterFactory
from worker.providers.idempotency import MAX_KEY_LENGTH, derived_key, idempotency_key
from worker.providers.stripe import create_params, update_params

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes/text content:DeprecationWarning"),
]

ORG = "org_unit"
KEYS = {"stripe": DEFAULT_STRIPE_KEY, "gocardless": DEFAULT_GOCARDLESS_TOKEN, "adyen": DEFAULT_ADYEN_KEY}
NOW = datetime(2026, 3, 1, tzinfo=UTC)


def customer(**fields: Any) -> CustomerState:
    values: dict[str, Any] = {
        "name": "Ada Lovelace",
        "firstname": "Ada",
        "lastname": "Lovelace",
        "email": "ada@example.com, other@example.com",
        "phone": "+33 1 02 03 04 05",
        "address_line1": "1 rue de la Paix",
        "city": "Paris",
        "zipcode": "75002",
        "country": "FR",
        "currency": "EUR",
    }
    values.update(fields)
    return CustomerState(
        id=uuid.uuid4(),
        organization_id=ORG,
        external_id=f"ext_{uuid.uuid4().hex[:8]}",
        created_at=NOW,
        updated_at=NOW,
        **values,
    )


def connection(provider: ProviderName, fake: FakeServer, *, key: str | None = None, **settings: Any) -> Connection:
    if provider == "adyen":
        settings.setdefault("merchant_account", DEFAULT_MERCHANT_ACCOUNT)
    config = ConnectionConfig(
        organization_id=ORG,
        code=f"{provider}_main",
        provider=provider,
        secret_env="UNUSED",
        api_base=fake.url,  # type: ignore[arg-type]
        **settings,
    )
    return Connection(config=config, secret=SecretStr(key or KEYS[provider]))


@pytest.fixture(scope="module")
def fake_stripe() -> Iterator[FakeStripe]:
    with FakeStripe() as fake:
        yield fake


@pytest.fixture(scope="module")
def fake_gc() -> Iterator[FakeGoCardless]:
    with FakeGoCardless() as fake:
        yield fake


@pytest.fixture(scope="module")
def fake_adyen() -> Iterator[FakeAdyen]:
    with FakeAdyen() as fake:
        yield fake


@pytest.fixture(autouse=True)
def _reset(fake_stripe: FakeStripe, fake_gc: FakeGoCardless, fake_adyen: FakeAdyen) -> None:
    for fake in (fake_stripe, fake_gc, fake_adyen):
        fake.reset()


@pytest.fixture
async def factory() -> AsyncIterator[AdapterFactory]:
    made = AdapterFactory(timeout=0.3, max_threads=2)
    try:
        yield made
    finally:
        await made.aclose_all()


async def failure(awaitable: Any) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await awaitable
    return info.value


# ---------------------------------------------------------------------------------------------------- keys, backoff


def test_idempotency_keys_are_deterministic_distinct_and_short() -> None:
    key = idempotency_key("org", "msg-1", "create")
    assert key == idempotency_key("org", "msg-1", "create")
    assert key.startswith("cw-create-")
    others = {
        idempotency_key("org", "msg-2", "create"),
        idempotency_key("org2", "msg-1", "create"),
        idempotency_key("org", "msg-1", "checkout"),
        idempotency_key("or", "gmsg-1", "create"),  # no ambiguity from concatenation
    }
    assert key not in others
    assert len(others) == 4
    longest = idempotency_key("o" * 255, "m" * 255, "checkout")
    assert len(longest) <= MAX_KEY_LENGTH
    assert len(derived_key(longest, "cs", {"any": ["params"]})) <= MAX_KEY_LENGTH
    assert derived_key(key, "cs", {"a": 1, "b": 2}) == derived_key(key, "cs", {"b": 2, "a": 1})
    assert derived_key(key, "cs", {"a": 1}) != derived_key(key, "cs", {"a": 2})


def test_retry_after_parsing() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("999999") == 3600.0
    when = datetime.now(UTC) + timedelta(seconds=30)
    parsed = parse_retry_after(format_datetime(when, usegmt=True))
    assert parsed is not None
    assert 28 <= parsed <= 31


def test_backoff_is_exponential_capped_jittered_and_honours_retry_after() -> None:
    low = [backoff_delay(n, base=1.0, cap=30.0, rng=lambda a, b: a) for n in range(1, 8)]
    high = [backoff_delay(n, base=1.0, cap=30.0, rng=lambda a, b: b) for n in range(1, 8)]
    assert high == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert low == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0]
    assert backoff_delay(1, base=1.0, cap=30.0, retry_after=7.0) == 7.0


def test_gate_mirrors_refused_connections() -> None:
    gate = ConnectionGate()
    key, other = ("org", "code"), ("org", "other")
    assert not gate.is_refused(key)
    assert gate.refuse(key) is True  # news: logged once
    assert gate.refuse(key) is False
    assert gate.is_refused(key) and not gate.is_refused(other)
    gate.mirror([other])  # the shared state: resumed elsewhere, the other one refused
    assert not gate.is_refused(key) and gate.is_refused(other)


# ---------------------------------------------------------------------------------------------------- stripe


def test_stripe_parameters() -> None:
    state = customer(name=None, address_line2=None, state=None, provider_payment_methods=("card", "link", "crypto"))
    params = create_params(state)
    assert params["name"] == "Ada Lovelace"  # firstname lastname without a name
    assert params["email"] == "ada@example.com"
    assert params.get("address") == {
        "line1": "1 rue de la Paix",
        "city": "Paris",
        "postal_code": "75002",
        "country": "FR",
    }
    assert params.get("metadata") == {"lago_customer_id": str(state.id), "customer_id": state.external_id}
    assert stripe_setup_methods(state) == ["card", "link"]
    assert stripe_setup_methods(customer(provider_payment_methods=("customer_balance",))) == []
    cleared = update_params(
        customer(
            name=None,
            firstname=None,
            lastname=None,
            email=None,
            phone=None,
            city=None,
            address_line1=None,
            zipcode=None,
            country=None,
        )
    )
    assert cleared == {"name": "", "email": "", "phone": "", "address": ""}


async def test_stripe_classifies_failures(fake_stripe: FakeStripe, factory: AdapterFactory) -> None:
    adapter = factory.adapter_for(connection("stripe", fake_stripe))
    state = customer()

    fake_stripe.fail_next(429, headers={"Retry-After": "2"})
    error = await failure(adapter.create_customer(state, "k-1"))
    assert (error.error_code, error.retryable, error.retry_after, error.http_status) == ("rate_limited", True, 2.0, 429)

    fake_stripe.fail_next(409)  # idempotency_key_in_use: the first request with this key is still running
    error = await failure(adapter.create_customer(state, "k-1"))
    assert (error.error_code, error.retryable) == ("idempotency_key_in_use", True)

    fake_stripe.fail_next(502)
    assert (await failure(adapter.create_customer(state, "k-1"))).retryable

    fake_stripe.delay_next(1.0)
    error = await failure(adapter.create_customer(state, "k-2"))
    assert (error.error_code, error.retryable, error.http_status) == ("timeout", True, None)

    fake_stripe.drop_next()
    assert (await failure(adapter.create_customer(state, "k-3"))).error_code == "network_error"

    error = await failure(adapter.create_customer(customer(email="invalid@example.invalid"), "k-4"))
    assert (error.error_code, error.retryable, error.http_status) == ("email_invalid", False, 400)
    assert "invalid@" not in error.message

    revoked = connection("stripe", fake_stripe, key="sk_test_SECRETSECRET_9999")
    bad = factory.adapter_for(
        Connection(config=revoked.config.model_copy(update={"code": "bad"}), secret=revoked.secret)
    )
    error = await failure(bad.create_customer(state, "k-5"))
    assert (error.error_code, error.retryable, error.http_status) == ("unauthorized", True, 401)
    assert error.credentials
    assert "SECRET" not in error.message and "9999" not in error.message and "sk_test" not in error.message


async def test_stripe_checkout_session_uses_methods_and_success_url(
    fake_stripe: FakeStripe, factory: AdapterFactory
) -> None:
    adapter = factory.adapter_for(connection("stripe", fake_stripe, success_url="https://billing.example/done"))
    state = customer(provider_payment_methods=("card", "customer_balance", "sepa_debit"))
    created = await adapter.create_customer(state, "k-create")
    url = await adapter.checkout_url(state, created, "k-checkout")
    again = await adapter.checkout_url(state, created, "k-checkout")  # same content, same key: replayed
    (session,) = fake_stripe.checkout_sessions.values()
    assert url == again == session["url"]
    assert session["allowed_payment_method_types"] == ["card", "sepa_debit"]
    assert session["success_url"] == "https://billing.example/done"
    assert session["mode"] == "setup"


# ---------------------------------------------------------------------------------------------------- gocardless


async def test_gocardless_create_checkout_and_failures(fake_gc: FakeGoCardless, factory: AdapterFactory) -> None:
    adapter = factory.adapter_for(connection("gocardless", fake_gc))
    state = customer(currency="CHF")
    created = await adapter.create_customer(state, "gc-1")
    assert await adapter.create_customer(state, "gc-1") == created  # 409 conflict resolved to the same customer
    assert list(fake_gc.customers) == [created]
    sent = fake_gc.requests_to("POST", "/customers")[0].body["customers"]
    assert sent == {
        "email": "ada@example.com",
        "company_name": "Ada Lovelace",
        "given_name": "Ada",
        "family_name": "Lovelace",
        "metadata": {"lago_customer_id": str(state.id), "customer_id": state.external_id},
    }
    url = await adapter.checkout_url(state, created, "gc-checkout")
    (flow,) = fake_gc.billing_request_flows.values()
    assert url == flow["authorisation_url"]
    (billing_request,) = fake_gc.billing_requests.values()
    assert billing_request["links"]["customer"] == created
    assert billing_request["mandate_request"]["currency"] == "EUR"  # CHF is no mandate currency

    fake_gc.fail_next(429, headers={"Retry-After": "3"})
    error = await failure(adapter.create_customer(state, "gc-2"))
    assert (error.error_code, error.retryable, error.retry_after) == ("rate_limited", True, 3.0)

    fake_gc.fail_next(409)  # idempotent_request_in_progress
    error = await failure(adapter.create_customer(state, "gc-2"))
    assert (error.error_code, error.retryable) == ("idempotency_key_in_use", True)

    fake_gc.delay_next(1.0)
    assert (await failure(adapter.create_customer(state, "gc-3"))).error_code == "timeout"
    assert len(fake_gc.requests_to("POST", "/customers")) == 5  # no hidden SDK retry

    error = await failure(adapter.create_customer(customer(email="no-at-sign", name=None, lastname=None), "gc-4"))
    assert (error.error_code, error.http_status, error.retryable) == ("validation_failed", 422, False)
    assert "no-at-sign" not in error.message
    assert "email" in error.message and "family_name" in error.message


# ---------------------------------------------------------------------------------------------------- adyen


async def test_adyen_link_is_the_checkout_and_replays(fake_adyen: FakeAdyen, factory: AdapterFactory) -> None:
    conn = connection("adyen", fake_adyen, return_url="https://billing.example/back", payment_link_currency="USD")
    adapter = factory.adapter_for(conn)
    state = customer()
    assert await adapter.create_customer(state, "ad-1") == state.external_id
    url = await adapter.checkout_url(state, state.external_id, "ad-1")
    (link,) = fake_adyen.links.values()
    assert url == link["url"]
    assert len(fake_adyen.requests) == 1  # the link made by the create is the checkout: no second call
    assert link["returnUrl"] == "https://billing.example/back"
    assert link["amount"] == {"value": 0, "currency": "USD"}

    other_process = AdapterFactory(timeout=0.3, max_threads=1)
    try:
        replayed = await other_process.adapter_for(conn).checkout_url(state, state.external_id, "ad-1")
    finally:
        await other_process.aclose_all()
    assert replayed == url
    assert len(fake_adyen.links) == 1


async def test_adyen_classifies_failures(fake_adyen: FakeAdyen, factory: AdapterFactory) -> None:
    adapter = factory.adapter_for(connection("adyen", fake_adyen))
    state = customer()
    fake_adyen.fail_next(422)  # 704: the same key is still in progress
    error = await failure(adapter.create_customer(state, "ad-2"))
    assert (error.error_code, error.retryable, error.http_status) == ("idempotency_key_in_use", True, 422)

    fake_adyen.fail_next(429, headers={"Retry-After": "1"})
    error = await failure(adapter.create_customer(state, "ad-2"))
    assert (error.error_code, error.retry_after) == ("rate_limited", 1.0)

    wrong_account = Connection(
        config=connection("adyen", fake_adyen, merchant_account="SomeoneElse").config.model_copy(
            update={"code": "adyen_other"}
        ),
        secret=SecretStr(DEFAULT_ADYEN_KEY),
    )
    error = await failure(factory.adapter_for(wrong_account).create_customer(state, "ad-3"))
    assert (error.error_code, error.http_status, error.retryable, error.credentials) == ("901", 403, True, True)

    unset = Connection(
        config=connection("adyen", fake_adyen).config.model_copy(
            update={"code": "adyen_unset", "merchant_account": None}
        ),
        secret=SecretStr(DEFAULT_ADYEN_KEY),
    )
    error = await failure(factory.adapter_for(unset).create_customer(state, "ad-4"))
    assert (error.error_code, error.retryable) == ("configuration_error", True)  # waits for a fixed PROVIDERS_FILE


# ---------------------------------------------------------------------------------------------------- factory, inline


async def test_factory_caches_per_connection(fake_stripe: FakeStripe, factory: AdapterFactory) -> None:
    conn = connection("stripe", fake_stripe)
    assert factory.adapter_for(conn) is factory.adapter_for(conn)
    rotated = Connection(config=conn.config, secret=SecretStr("sk_test_rotated"))
    assert factory.adapter_for(rotated) is not factory.adapter_for(conn)


async def test_inline_create(fake_gc: FakeGoCardless, factory: AdapterFactory) -> None:
    caller = ProviderCaller(factory, Metrics(process_metrics=False), backoff_base=0.05, backoff_max=0.1)
    conn = connection("gocardless", fake_gc)
    state = customer()
    fake_gc.fail_next(500)
    created = (await caller.create_inline(conn, state, "msg-1", 2.0)).provider_customer_id
    assert created is not None
    assert list(fake_gc.customers) == [created]
    # same key, same customer
    assert (await caller.create_inline(conn, state, "msg-1", 2.0)).provider_customer_id == created

    invalid = customer(email="invalid@example.invalid")
    assert (await caller.create_inline(conn, invalid, "msg-2", 2.0)).provider_customer_id is None

    fake_gc.fail_next(503, times=50)
    started = asyncio.get_running_loop().time()
    assert (await caller.create_inline(conn, state, "msg-3", 0.4)).provider_customer_id is None
    assert asyncio.get_running_loop().time() - started < 0.6
    fake_gc.clear_faults()


def test_a_connection_metric_label_names_the_code_never_the_organization() -> None:
    label = metric_label("org_acme_secret_tenant", "stripe main/€")
    assert label.startswith("stripe_main__~") and "org_acme" not in label
    assert label == metric_label("org_acme_secret_tenant", "stripe main/€")  # stable across replicas and restarts
    assert label != metric_label("org_other", "stripe main/€")  # one series per connection
    metrics = Metrics(process_metrics=False)
    metrics.provider_connection("stripe", label, "rate_limited", 12.5)
    sample = metrics.registry.get_sample_value
    labels = {"provider": "stripe", "connection": label}
    assert sample("customer_worker_provider_connection_state", {**labels, "state": "rate_limited"}) == 1.0
    assert sample("customer_worker_provider_connection_state", {**labels, "state": "working"}) == 0.0
    assert sample("customer_worker_provider_connection_oldest_job_seconds", labels) == 12.5
    with pytest.raises(ValueError, match="connection"):
        metrics.provider_connection("stripe", "org_acme/stripe_main", "working", 0.0)

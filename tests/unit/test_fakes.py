"""The provider fakes, driven only through the real SDKs (stripe, gocardless_pro, Adyen).

These tests pin down both the fakes and how each SDK must be configured to talk to them (base URL, timeouts,
SDK-internal retries, where idempotency keys go) and how it surfaces faults.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import Adyen
import gocardless_pro
import pytest
import requests
import stripe
from gocardless_pro import errors as gc_errors
from stripe.params import CustomerCreateParams
from stripe.params.checkout import SessionCreateParams

from tests.fakes.adyen_fake import DEFAULT_ADYEN_KEY, DEFAULT_MERCHANT_ACCOUNT, FakeAdyen
from tests.fakes.gocardless_fake import DEFAULT_GOCARDLESS_TOKEN, FakeGoCardless
from tests.fakes.stripe_fake import DEFAULT_STRIPE_KEY, FakeStripe

pytestmark = [
    pytest.mark.timeout(30),
    # stripe's HTTPXClient passes the form body as `data=`; httpx deprecates that (an SDK matter, not ours).
    pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes/text content:DeprecationWarning"),
]

SHORT_TIMEOUT = 0.3


# ---------------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def fake_stripe() -> Iterator[FakeStripe]:
    with FakeStripe() as fake:
        yield fake


@pytest.fixture
def fake_gc() -> Iterator[FakeGoCardless]:
    with FakeGoCardless() as fake:
        yield fake


@pytest.fixture
def fake_adyen() -> Iterator[FakeAdyen]:
    with FakeAdyen() as fake:
        yield fake


_sync_http_clients: list[stripe.HTTPClient] = []


@pytest.fixture(autouse=True)
def _close_stripe_http_clients() -> Iterator[None]:
    yield
    while _sync_http_clients:
        _sync_http_clients.pop().close()  # type: ignore[no-untyped-call]


def stripe_client(fake: FakeStripe, *, key: str = DEFAULT_STRIPE_KEY, timeout: float = 5.0) -> stripe.StripeClient:
    """Sync Stripe client: requests with an explicit timeout, SDK-internal retries off (closed after the test)."""
    http = stripe.RequestsClient(timeout=timeout)
    _sync_http_clients.append(http)
    return stripe.StripeClient(key, base_addresses={"api": fake.url}, max_network_retries=0, http_client=http)


def gc_client(fake: FakeGoCardless, *, token: str = DEFAULT_GOCARDLESS_TOKEN, timeout: float = 5.0) -> Any:
    return gocardless_pro.Client(access_token=token, base_url=fake.url, timeout=timeout)


def gc_customers_without_retries(client: Any) -> Any:
    """`client.customers` builds a new service (3 attempts, 0.5 s apart) on every access: hold one and set it."""
    service = client.customers
    service.max_network_retries = 1  # attempts, not retries: 0 would send nothing and return None
    service.retry_delay_in_seconds = 0
    return service


def adyen_links(fake: FakeAdyen, *, key: str = DEFAULT_ADYEN_KEY, timeout: float = 5.0) -> Any:
    """The Adyen SDK has no base-URL option: set `baseUrl` on the service object."""
    adyen = Adyen.Adyen(xapikey=key, platform="test", http_timeout=timeout)
    service = adyen.checkout.payment_links_api
    service.baseUrl = fake.checkout_url
    return service


def stripe_header(err: stripe.StripeError, name: str) -> str:
    """A response header of a Stripe error (case-insensitive: requests / httpx / aiohttp header mappings)."""
    assert err.headers is not None
    return err.headers[name]


STRIPE_CUSTOMER: CustomerCreateParams = {
    "name": "Ada Lovelace",
    "email": "ada@example.com",
    "phone": "+33102030405",
    "address": {"line1": "1 rue de la Paix", "city": "Paris", "postal_code": "75002", "country": "FR"},
    "metadata": {"lago_customer_id": "b1b1", "customer_id": "ext-1"},
}


def link_request(reference: str = "ext-1") -> dict[str, Any]:
    return {
        "merchantAccount": DEFAULT_MERCHANT_ACCOUNT,
        "amount": {"value": 0, "currency": "EUR"},
        "reference": reference,
        "shopperReference": "ext-1",
        "storePaymentMethodMode": "enabled",
        "recurringProcessingModel": "UnscheduledCardOnFile",
        "returnUrl": "https://example.com/done",
    }


# ---------------------------------------------------------------------------------------------------------- stripe


def test_stripe_create_update_retrieve_and_checkout(fake_stripe: FakeStripe) -> None:
    client = stripe_client(fake_stripe)
    customer = client.v1.customers.create(STRIPE_CUSTOMER, options={"idempotency_key": "create-1"})

    assert customer.id.startswith("cus_")
    assert customer.name == "Ada Lovelace"
    assert customer.address is not None
    assert customer.address.city == "Paris"
    assert customer.metadata is not None
    assert customer.metadata["customer_id"] == "ext-1"
    assert list(fake_stripe.customers) == [customer.id]
    sent = fake_stripe.requests_to("POST", "/v1/customers")[0]
    assert sent.idempotency_key == "create-1"
    assert sent.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert sent.body["address"]["line1"] == "1 rue de la Paix"

    updated = client.v1.customers.update(customer.id, {"name": "Ada King", "address": {"city": "London"}})
    assert updated.name == "Ada King"
    assert client.v1.customers.retrieve(customer.id).address.city == "London"  # type: ignore[union-attr]

    # stripe 16 pins API 2026-10-28.endive, where Checkout Sessions take `allowed_payment_method_types`.
    session_params: SessionCreateParams = {
        "mode": "setup",
        "customer": customer.id,
        "allowed_payment_method_types": ["card", "sepa_debit"],
        "success_url": "https://example.com/ok",
    }
    session = client.v1.checkout.sessions.create(session_params)
    assert session.url is not None
    assert session.url.startswith("https://checkout.stripe.com/c/pay/cs_test_")
    assert session.payment_method_types == ["card", "sepa_debit"]
    assert fake_stripe.requests[-1].body["allowed_payment_method_types"] == ["card", "sepa_debit"]
    assert fake_stripe.checkout_sessions[session.id]["customer"] == customer.id

    legacy = {"mode": "setup", "customer": customer.id, "payment_method_types": ["card"], "success_url": "https://x"}
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.checkout.sessions.create(cast(Any, legacy))
    assert info.value.code == "payment_method_types_no_longer_supported"


def test_stripe_idempotent_replay_and_mismatch(fake_stripe: FakeStripe) -> None:
    client = stripe_client(fake_stripe)
    first = client.v1.customers.create(STRIPE_CUSTOMER, options={"idempotency_key": "k-1"})
    again = client.v1.customers.create(STRIPE_CUSTOMER, options={"idempotency_key": "k-1"})

    assert again.id == first.id
    assert len(fake_stripe.customers) == 1
    assert again.last_response is not None
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    assert again.last_response.idempotency_key == "k-1"
    assert again.last_response.headers["Original-Request"] == first.last_response.request_id  # type: ignore[union-attr]
    assert [r.outcome for r in fake_stripe.requests] == ["handled", "replayed"]

    with pytest.raises(stripe.IdempotencyError) as info:
        client.v1.customers.create({"name": "Someone else"}, options={"idempotency_key": "k-1"})
    assert info.value.http_status == 400
    assert len(fake_stripe.customers) == 1


def test_stripe_unknown_key_is_authentication_error(fake_stripe: FakeStripe) -> None:
    with pytest.raises(stripe.AuthenticationError) as info:
        stripe_client(fake_stripe, key="sk_test_wrong_key_000000").v1.customers.create({"name": "x"})
    assert info.value.http_status == 401
    assert "Invalid API Key" in str(info.value.user_message)
    assert fake_stripe.customers == {}


def test_stripe_validation_error(fake_stripe: FakeStripe) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        stripe_client(fake_stripe).v1.customers.create({"email": "invalid@example.invalid"})
    assert (info.value.http_status, info.value.code, info.value.param) == (400, "email_invalid", "email")
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        stripe_client(fake_stripe).v1.customers.create(cast(Any, {"nickname": "x"}))
    assert unknown.value.code == "parameter_unknown"


def test_stripe_429_retry_after_then_success(fake_stripe: FakeStripe) -> None:
    client = stripe_client(fake_stripe)
    fake_stripe.fail_next(429, headers={"Retry-After": "2"})

    with pytest.raises(stripe.RateLimitError) as info:
        client.v1.customers.create({"name": "x"}, options={"idempotency_key": "k-429"})
    assert info.value.http_status == 429
    assert stripe_header(info.value, "Retry-After") == "2"  # case-insensitive mapping
    assert info.value.code is None or info.value.code == "rate_limit"

    customer = client.v1.customers.create({"name": "x"}, options={"idempotency_key": "k-429"})
    assert list(fake_stripe.customers) == [customer.id]
    assert len(fake_stripe.requests) == 2  # max_network_retries=0: no hidden SDK retry


def test_stripe_500_is_api_error(fake_stripe: FakeStripe) -> None:
    fake_stripe.fail_next(500)
    with pytest.raises(stripe.APIError) as info:
        stripe_client(fake_stripe).v1.customers.create({"name": "x"})
    assert info.value.http_status == 500
    assert len(fake_stripe.requests) == 1


def test_stripe_timeout_then_replay_makes_one_customer(fake_stripe: FakeStripe) -> None:
    client = stripe_client(fake_stripe, timeout=SHORT_TIMEOUT)
    fake_stripe.delay_next(2.0, after_processing=True)  # created, but the answer comes too late

    started = time.monotonic()
    with pytest.raises(stripe.APIConnectionError):
        client.v1.customers.create({"name": "x"}, options={"idempotency_key": "k-slow"})
    assert time.monotonic() - started < 1.5
    assert len(fake_stripe.customers) == 1

    customer = client.v1.customers.create({"name": "x"}, options={"idempotency_key": "k-slow"})
    assert list(fake_stripe.customers) == [customer.id]


def test_stripe_dropped_connection_is_connection_error(fake_stripe: FakeStripe) -> None:
    client = stripe_client(fake_stripe)
    fake_stripe.drop_next()
    with pytest.raises(stripe.APIConnectionError):
        client.v1.customers.create({"name": "x"}, options={"idempotency_key": "k-drop"})
    assert fake_stripe.customers == {}

    fake_stripe.drop_next(after_processing=True)  # created, then the answer is lost
    with pytest.raises(stripe.APIConnectionError):
        client.v1.customers.create({"name": "x"}, options={"idempotency_key": "k-drop"})
    assert len(fake_stripe.customers) == 1
    customer = client.v1.customers.create({"name": "x"}, options={"idempotency_key": "k-drop"})
    assert list(fake_stripe.customers) == [customer.id]
    assert [r.outcome for r in fake_stripe.requests] == ["dropped", "dropped", "replayed"]


def test_stripe_in_progress_key_is_409(fake_stripe: FakeStripe) -> None:
    client = stripe_client(fake_stripe)
    fake_stripe.delay_next(0.5)  # the first request is held *before* processing: its key is in progress
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.v1.customers.create, {"name": "x"}, {"idempotency_key": "k-busy"})
        while not fake_stripe.requests:
            time.sleep(0.01)
        with pytest.raises(stripe.APIError) as info:
            client.v1.customers.create({"name": "x"}, options={"idempotency_key": "k-busy"})
        assert info.value.http_status == 409
        body = cast(dict[str, Any], info.value.json_body)  # a generic APIError: the code is only in the body
        assert body["error"]["code"] == "idempotency_key_in_use"
        assert first.result().id in fake_stripe.customers
    answered = fake_stripe.wait_for_requests(2, method="POST", path="/v1/customers")
    assert sorted(r.outcome for r in answered) == ["handled", "in_progress"]
    assert len(fake_stripe.customers) == 1


def test_stripe_token_bucket(fake_stripe: FakeStripe) -> None:
    client = stripe_client(fake_stripe)
    fake_stripe.rate_limit(rate_per_second=0.5, burst=2)
    client.v1.customers.create({"name": "a"})
    client.v1.customers.create({"name": "b"})
    with pytest.raises(stripe.RateLimitError) as info:
        client.v1.customers.create({"name": "c"})
    assert int(stripe_header(info.value, "Retry-After")) >= 1
    assert fake_stripe.rate_limited_count == 1
    assert len(fake_stripe.customers) == 2


@pytest.mark.parametrize("library", ["httpx", "aiohttp"])
async def test_stripe_async_create_replay_and_timeout(library: str) -> None:
    async with FakeStripe() as fake_stripe:
        await _drive_stripe_async(fake_stripe, library)


async def _drive_stripe_async(fake_stripe: FakeStripe, library: str) -> None:
    http: stripe.HTTPClient = (
        stripe.HTTPXClient(timeout=SHORT_TIMEOUT) if library == "httpx" else stripe.AIOHTTPClient(timeout=SHORT_TIMEOUT)
    )
    client = stripe.StripeClient(
        DEFAULT_STRIPE_KEY, base_addresses={"api": fake_stripe.url}, max_network_retries=0, http_client=http
    )
    try:
        first = await client.v1.customers.create_async(STRIPE_CUSTOMER, options={"idempotency_key": "a-1"})
        again = await client.v1.customers.create_async(STRIPE_CUSTOMER, options={"idempotency_key": "a-1"})
        assert again.id == first.id
        assert len(fake_stripe.customers) == 1

        fake_stripe.delay_next(2.0, after_processing=True)
        with pytest.raises(stripe.APIConnectionError):
            await client.v1.customers.create_async({"name": "slow"}, options={"idempotency_key": "a-2"})
        fake_stripe.fail_next(429, headers={"Retry-After": "1"})
        with pytest.raises(stripe.RateLimitError) as info:
            await client.v1.customers.create_async({"name": "slow"}, options={"idempotency_key": "a-2"})
        assert stripe_header(info.value, "retry-after") == "1"
        replayed = await client.v1.customers.create_async({"name": "slow"}, options={"idempotency_key": "a-2"})
        assert replayed.name == "slow"
        assert len(fake_stripe.customers) == 2
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]


# ---------------------------------------------------------------------------------------------------------- gocardless


GC_CUSTOMER: dict[str, Any] = {
    "email": "ada@example.com",
    "company_name": "Analytical Engines Ltd",
    "given_name": "Ada",
    "family_name": "Lovelace",
    "metadata": {"lago_customer_id": "b1b1", "customer_id": "ext-1"},
}


def test_gocardless_create_get_and_billing_request_flow(fake_gc: FakeGoCardless) -> None:
    client = gc_client(fake_gc)
    customer = client.customers.create(params=GC_CUSTOMER, headers={"Idempotency-Key": "gc-1"})
    assert customer.id.startswith("CU")
    assert customer.company_name == "Analytical Engines Ltd"
    assert client.customers.get(customer.id).email == "ada@example.com"
    sent = fake_gc.requests_to("POST", "/customers")[0]
    assert sent.body == {"customers": GC_CUSTOMER}
    assert sent.idempotency_key == "gc-1"

    billing_request = client.billing_requests.create(
        params={"mandate_request": {"scheme": "sepa_core", "currency": "EUR"}, "links": {"customer": customer.id}}
    )
    assert billing_request.id.startswith("BRQ")
    assert billing_request.links.customer == customer.id
    flow = client.billing_request_flows.create(
        params={"redirect_uri": "https://example.com/ok", "links": {"billing_request": billing_request.id}}
    )
    assert flow.authorisation_url.startswith("https://pay-sandbox.gocardless.com/billing/static/flow?id=BRF")
    assert list(fake_gc.billing_request_flows) == [flow.id]


def test_gocardless_repeated_key_resolves_to_existing_customer(fake_gc: FakeGoCardless) -> None:
    client = gc_client(fake_gc)
    first = client.customers.create(params=GC_CUSTOMER, headers={"Idempotency-Key": "gc-same"})
    again = client.customers.create(params=GC_CUSTOMER, headers={"Idempotency-Key": "gc-same"})

    assert again.id == first.id
    assert len(fake_gc.customers) == 1
    assert [(r.method, r.path, r.status) for r in fake_gc.requests] == [
        ("POST", "/customers", 201),
        ("POST", "/customers", 409),
        ("GET", f"/customers/{first.id}", 200),
    ]
    conflict = fake_gc.requests[1]
    assert conflict.outcome == "idempotency_conflict"

    strict = gocardless_pro.Client(
        access_token=DEFAULT_GOCARDLESS_TOKEN, base_url=fake_gc.url, raise_on_idempotency_conflict=True
    )
    with pytest.raises(gc_errors.IdempotentCreationConflictError) as info:
        strict.customers.create(params={"company_name": "Other"}, headers={"Idempotency-Key": "gc-same"})
    assert info.value.conflicting_resource_id == first.id
    assert info.value.code == 409


def test_gocardless_sdk_retry_after_timeout_resolves_through_conflict(fake_gc: FakeGoCardless) -> None:
    """Default service: a timed-out create is retried by the SDK with the same key; the 409 leads to the GET."""
    client = gc_client(fake_gc, timeout=SHORT_TIMEOUT)
    fake_gc.delay_next(3.0, after_processing=True)
    customer = client.customers.create(params=GC_CUSTOMER, headers={"Idempotency-Key": "gc-slow"})
    assert list(fake_gc.customers) == [customer.id]
    assert [(r.method, r.status) for r in fake_gc.requests] == [("POST", None), ("POST", 409), ("GET", 200)]


def test_gocardless_timeout_and_drop_without_sdk_retries(fake_gc: FakeGoCardless) -> None:
    customers = gc_customers_without_retries(gc_client(fake_gc, timeout=SHORT_TIMEOUT))
    fake_gc.delay_next(2.0)
    with pytest.raises(requests.exceptions.Timeout):
        customers.create(params=GC_CUSTOMER, headers={"Idempotency-Key": "gc-t"})
    fake_gc.drop_next()
    with pytest.raises(requests.exceptions.ConnectionError):
        customers.create(params=GC_CUSTOMER, headers={"Idempotency-Key": "gc-d"})
    assert len(fake_gc.requests_to("POST", "/customers")) == 2


def test_gocardless_unknown_token_is_authentication_error(fake_gc: FakeGoCardless) -> None:
    with pytest.raises(gc_errors.AuthenticationError) as info:
        gc_client(fake_gc, token="wrong").customers.create(params=GC_CUSTOMER)
    assert info.value.code == 401
    assert info.value.errors[0]["reason"] == "access_token_not_found"


def test_gocardless_validation_error(fake_gc: FakeGoCardless) -> None:
    with pytest.raises(gc_errors.ValidationFailedError) as info:
        gc_client(fake_gc).customers.create(params={"email": "no-at-sign", "given_name": "Ada"})
    fields = sorted(e["field"] for e in info.value.errors)
    assert fields == ["email", "family_name"]
    assert fake_gc.customers == {}


def test_gocardless_429_then_success_and_500(fake_gc: FakeGoCardless) -> None:
    client = gc_client(fake_gc)
    fake_gc.fail_next(429, headers={"Retry-After": "3"})
    with pytest.raises(gc_errors.RateLimitError) as info:
        client.customers.create(params=GC_CUSTOMER, headers={"Idempotency-Key": "gc-429"})
    assert info.value.code == 429
    # The SDK's exceptions carry only the JSON error, not the HTTP headers: Retry-After is not readable from it.
    assert fake_gc.requests[0].response_headers["Retry-After"] == "3"
    customer = client.customers.create(params=GC_CUSTOMER, headers={"Idempotency-Key": "gc-429"})
    assert list(fake_gc.customers) == [customer.id]

    fake_gc.fail_next(500)
    with pytest.raises(gc_errors.GoCardlessInternalError) as server_error:
        client.customers.create(params=GC_CUSTOMER)
    assert server_error.value.code == 500
    assert len(fake_gc.requests) == 3  # a 5xx is not retried by the SDK


def test_gocardless_token_bucket(fake_gc: FakeGoCardless) -> None:
    client = gc_client(fake_gc)
    fake_gc.rate_limit(rate_per_second=0.5, burst=1)
    client.customers.create(params=GC_CUSTOMER)
    with pytest.raises(gc_errors.RateLimitError):
        client.customers.create(params=GC_CUSTOMER)
    assert fake_gc.rate_limited_count == 1
    assert fake_gc.requests[-1].response_headers["RateLimit-Remaining"] == "0"


# ---------------------------------------------------------------------------------------------------------- adyen


def test_adyen_create_payment_link(fake_adyen: FakeAdyen) -> None:
    result = adyen_links(fake_adyen).payment_links(link_request(), idempotency_key="ad-1")
    assert result.status_code == 201
    link = result.message
    assert link["url"] == f"https://test.adyen.link/{link['id']}"
    assert link["shopperReference"] == "ext-1"
    assert link["reference"] == "ext-1"
    assert list(fake_adyen.links) == [link["id"]]
    sent = fake_adyen.requests[0]
    assert sent.path == "/v72/paymentLinks"
    assert sent.headers["X-API-Key"] == DEFAULT_ADYEN_KEY
    assert sent.idempotency_key == "ad-1"


def test_adyen_idempotent_replay(fake_adyen: FakeAdyen) -> None:
    links = adyen_links(fake_adyen)
    first = links.payment_links(link_request(), idempotency_key="ad-same").message
    again = links.payment_links(link_request(), idempotency_key="ad-same").message
    other_body = links.payment_links(link_request("other"), idempotency_key="ad-same").message
    assert again["id"] == first["id"] == other_body["id"]  # Adyen replays the first answer for a known key
    assert len(fake_adyen.links) == 1
    assert [r.outcome for r in fake_adyen.requests] == ["handled", "replayed", "replayed"]


def test_adyen_in_progress_key_is_422_704_transient(fake_adyen: FakeAdyen) -> None:
    links = adyen_links(fake_adyen)
    fake_adyen.delay_next(0.5)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(links.payment_links, link_request(), "ad-busy")
        while not fake_adyen.requests:
            time.sleep(0.01)
        with pytest.raises(Adyen.AdyenAPIUnprocessableEntity) as info:
            links.payment_links(link_request(), idempotency_key="ad-busy")
        assert info.value.status_code == 422
        assert info.value.error_code == "704"
        assert info.value.headers["transient-error"] == "true"
        assert first.result().message["id"] in fake_adyen.links
    assert len(fake_adyen.links) == 1


def test_adyen_errors(fake_adyen: FakeAdyen) -> None:
    with pytest.raises(Adyen.AdyenAPIAuthenticationError) as auth:
        adyen_links(fake_adyen, key="wrong").payment_links(link_request())
    assert auth.value.status_code == 401

    links = adyen_links(fake_adyen)
    fake_adyen.fail_next(429, headers={"Retry-After": "1"})
    with pytest.raises(Adyen.AdyenError) as limited:
        links.payment_links(link_request(), idempotency_key="ad-429")
    assert limited.value.status_code == 429
    assert limited.value.headers["Retry-After"] == "1"
    assert links.payment_links(link_request(), idempotency_key="ad-429").status_code == 201

    fake_adyen.fail_next(500)
    with pytest.raises(Adyen.AdyenAPICommunicationError) as server_error:
        links.payment_links(link_request())
    assert server_error.value.status_code == 500
    assert server_error.value.message["errorType"] == "internal"

    bad = link_request()
    bad["merchantAccount"] = "SomeoneElse"
    with pytest.raises(Adyen.AdyenAPIInvalidPermission) as forbidden:
        links.payment_links(bad)
    assert forbidden.value.error_code == "901"
    assert len(fake_adyen.links) == 1


def test_adyen_timeout_and_token_bucket(fake_adyen: FakeAdyen) -> None:
    slow = adyen_links(fake_adyen, timeout=SHORT_TIMEOUT)
    fake_adyen.delay_next(2.0, after_processing=True)
    with pytest.raises(requests.exceptions.Timeout):
        slow.payment_links(link_request(), idempotency_key="ad-slow")
    assert slow.payment_links(link_request(), idempotency_key="ad-slow").message["id"] in fake_adyen.links
    assert len(fake_adyen.links) == 1

    fake_adyen.rate_limit(rate_per_second=0.5, burst=1)
    slow.payment_links(link_request("r2"))
    with pytest.raises(Adyen.AdyenError) as info:
        slow.payment_links(link_request("r3"))
    assert info.value.status_code == 429
    assert fake_adyen.rate_limited_count == 1


def test_fake_stops_promptly_with_held_requests() -> None:
    fake = FakeStripe().start()
    fake.delay_next(30.0)

    def call() -> None:
        with contextlib.suppress(stripe.StripeError):
            stripe_client(fake, timeout=5).v1.customers.create({"name": "held"})

    worker = threading.Thread(target=call)
    worker.start()
    while not fake.requests:
        time.sleep(0.01)
    started = time.monotonic()
    fake.stop()
    assert time.monotonic() - started < 2.0
    worker.join(5)


# ---------------------------------------------------------------------------------------- documented idempotency


def test_stripe_stores_an_executed_500_and_replays_it(fake_stripe: FakeStripe) -> None:
    client = stripe_client(fake_stripe)
    fake_stripe.fail_next(500, after_processing=True, method="POST", path="/v1/customers")
    for _ in range(2):
        with pytest.raises(stripe.APIError) as info:
            client.v1.customers.create(STRIPE_CUSTOMER, options={"idempotency_key": "k-500"})
        assert info.value.http_status == 500
        assert stripe_header(info.value, "Stripe-Should-Retry") == "false"
    assert len(fake_stripe.customers) == 1  # executed once, and only once
    assert [r.outcome for r in fake_stripe.requests] == ["fault", "replayed"]


def test_stripe_stores_nothing_for_a_500_before_execution_or_a_validation_error(fake_stripe: FakeStripe) -> None:
    client = stripe_client(fake_stripe)
    fake_stripe.fail_next(500, method="POST", path="/v1/customers")
    with pytest.raises(stripe.APIError):
        client.v1.customers.create(STRIPE_CUSTOMER, options={"idempotency_key": "k-early"})
    assert client.v1.customers.create(STRIPE_CUSTOMER, options={"idempotency_key": "k-early"}).id
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.customers.create({"email": "not-an-address"}, options={"idempotency_key": "k-invalid"})
    assert client.v1.customers.create({"email": "a@b.example"}, options={"idempotency_key": "k-invalid"}).id


def test_stripe_search_uses_the_query_language(fake_stripe: FakeStripe) -> None:
    client = stripe_client(fake_stripe)
    ada = client.v1.customers.create({"name": "Ada", "metadata": {"lago_customer_id": "L1", "customer_id": "e1"}})
    client.v1.customers.create({"name": "Bob", "metadata": {"lago_customer_id": "L2", "customer_id": "e2"}})

    def ids(query: str) -> list[str]:
        return sorted(c.id for c in client.v1.customers.search({"query": query}).data)

    assert ids("metadata['lago_customer_id']:'L1'") == [ada.id]
    assert ids("metadata['lago_customer_id']:'L3'") == []
    assert len(ids("name:'Ada' OR name:'Bob'")) == 2
    assert ids("name~'ad' AND -metadata['customer_id']:'e2'") == [ada.id]
    with pytest.raises(stripe.InvalidRequestError):
        ids("name:'Ada' AND name:'Bob' OR name:'Cy'")


def test_gocardless_binds_a_key_to_what_a_failed_create_made(fake_gc: FakeGoCardless) -> None:
    client = gc_client(fake_gc)
    fake_gc.fail_next(500, after_processing=True, method="POST", path="/customers")
    with pytest.raises(gc_errors.GoCardlessInternalError):
        gc_customers_without_retries(client).create(params=GC_CUSTOMER, headers={"Idempotency-Key": "gc-500"})
    again = client.customers.create(params=GC_CUSTOMER, headers={"Idempotency-Key": "gc-500"})
    assert list(fake_gc.customers) == [again.id]  # the retry resolves to the conflicting resource

"""Stripe through its official SDK (SPEC §9): customers and Checkout Sessions in setup mode.

One `StripeClient` per connection, on the SDK's async httpx client (no thread per call), with the SDK's own retries
off (`max_network_retries=0`): the job runner owns retries, backoff and `Retry-After`, so that a retry is visible,
counted and bounded in one place. Every POST carries our deterministic idempotency key; without one the SDK would
add a random key and a retry could create a second customer.
"""

from __future__ import annotations

from typing import Any, Final, cast

import httpx
import stripe
from stripe.params import CustomerCreateParams, CustomerUpdateParams
from stripe.params.checkout import SessionCreateParams

from worker.contract.connections import Connection, ProviderName
from worker.contract.email import first_email
from worker.domain.customer import STRIPE_DEFAULT_PAYMENT_METHODS, CustomerState, stripe_setup_methods
from worker.providers.base import (
    DEFAULT_TIMEOUT,
    ProviderError,
    base_url,
    full_name,
    header,
    network_error,
    parse_retry_after,
    response_error,
    status_error,
)
from worker.providers.idempotency import derived_key

DEFAULT_SUCCESS_URL: Final = "https://stripe.com/"
"""Where Stripe's hosted setup page sends the customer back when the connection sets no `success_url` (Lago's
default)."""

_PROVIDER: Final[ProviderName] = "stripe"
# Stripe's address fields and the customer columns they come from.
_ADDRESS: Final = (
    ("line1", "address_line1"),
    ("line2", "address_line2"),
    ("city", "city"),
    ("postal_code", "zipcode"),
    ("state", "state"),
    ("country", "country"),
)


def create_params(customer: CustomerState) -> CustomerCreateParams:
    """Name (or `firstname lastname`), first e-mail, address, phone and the two ids in metadata; unset fields are
    left out rather than sent empty."""
    params: CustomerCreateParams = {
        "metadata": {"lago_customer_id": str(customer.id), "customer_id": customer.external_id},
    }
    name = full_name(customer)
    if name:
        params["name"] = name
    email = first_email(customer.email)
    if email:
        params["email"] = email
    if customer.phone:
        params["phone"] = customer.phone
    address = {field: value for field, column in _ADDRESS if (value := getattr(customer, column))}
    if address:
        params["address"] = cast(Any, address)
    return params


def update_params(customer: CustomerState) -> CustomerUpdateParams:
    """Name, e-mail, address and phone as they are now; a cleared value is sent as "" (Stripe's unset)."""
    address = {field: getattr(customer, column) or "" for field, column in _ADDRESS}
    return {
        "name": full_name(customer) or "",
        "email": first_email(customer.email) or "",
        "phone": customer.phone or "",
        "address": cast(Any, address) if any(address.values()) else "",
    }


def _error(exc: stripe.StripeError) -> ProviderError:
    if isinstance(exc, stripe.APIConnectionError):
        # The SDK wraps the httpx exception; only its type is looked at (its text can hold the URL).
        return network_error(_PROVIDER, timed_out=isinstance(exc.__cause__, httpx.TimeoutException))
    status = exc.http_status
    error = exc.error
    code = exc.code or (error.code if error is not None else None)
    param = error.param if error is not None else None
    kind = error.type if error is not None else None
    result = status_error(
        _PROVIDER,
        status,
        provider_code=code or kind,
        details=[param] if param else (),
        retry_after=parse_retry_after(header(exc.headers, "Retry-After")),
        in_progress=status == 409 and code == "idempotency_key_in_use",
    )
    # A key used with other parameters, or a stored 5xx that Stripe will replay for that key whatever we do.
    stored_failure = status is not None and status >= 500 and header(exc.headers, "Stripe-Should-Retry") == "false"
    if (status == 400 and kind == "idempotency_error") or stored_failure:
        result.dead_end = True
        result.retryable = False
    return result


def search_query(customer: CustomerState) -> str:
    """Stripe's search syntax; the id is a UUID, so it needs no escaping."""
    return f"metadata['lago_customer_id']:'{customer.id}'"


class StripeAdapter:
    provider: Final[ProviderName] = _PROVIDER
    checkout_with_create: Final = False

    def __init__(self, connection: Connection, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        config = connection.config
        self._http = stripe.HTTPXClient(timeout=timeout)
        api = base_url(config.api_base)
        self._client = stripe.StripeClient(
            connection.secret.get_secret_value(),
            base_addresses={"api": api} if api else None,
            max_network_retries=0,
            http_client=self._http,
        )
        self._success_url = str(config.success_url) if config.success_url else DEFAULT_SUCCESS_URL

    async def create_customer(self, customer: CustomerState, key: str) -> str:
        try:
            created = await self._client.v1.customers.create_async(
                create_params(customer), options={"idempotency_key": key}
            )
        except stripe.StripeError as exc:
            raise _error(exc) from None  # `from None`: the SDK error's text must not ride along in a traceback
        if not created.id:
            raise response_error(_PROVIDER)
        return created.id

    async def find_customer(self, customer: CustomerState) -> str | None:
        try:
            found = await self._client.v1.customers.search_async({"query": search_query(customer), "limit": 2})
        except stripe.StripeError as exc:
            raise _error(exc) from None
        # The oldest, should an earlier mistake have left two.
        ids = sorted((item.created, item.id) for item in found.data if item.id)
        return ids[0][1] if ids else None

    async def update_customer(self, customer: CustomerState, provider_customer_id: str, key: str) -> None:
        params = update_params(customer)
        try:
            await self._client.v1.customers.update_async(
                provider_customer_id, params, options={"idempotency_key": derived_key(key, "upd", params)}
            )
        except stripe.StripeError as exc:
            raise _error(exc) from None

    async def checkout_url(self, customer: CustomerState, provider_customer_id: str, key: str) -> str:
        methods = stripe_setup_methods(customer) or list(STRIPE_DEFAULT_PAYMENT_METHODS)
        # stripe 16 pins an API version where Checkout Sessions take `allowed_payment_method_types`.
        params: SessionCreateParams = {
            "mode": "setup",
            "customer": provider_customer_id,
            "allowed_payment_method_types": cast(Any, methods),
            "success_url": self._success_url,
        }
        try:
            session = await self._client.v1.checkout.sessions.create_async(
                params, options={"idempotency_key": derived_key(key, "cs", params)}
            )
        except stripe.StripeError as exc:
            raise _error(exc) from None
        if not session.url:
            raise response_error(_PROVIDER)
        return session.url

    async def check_credentials(self) -> None:
        try:
            await self._client.v1.customers.list_async({"limit": 1})
        except stripe.StripeError as exc:
            raise _error(exc) from None

    async def aclose(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]

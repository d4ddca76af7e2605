"""GoCardless through its official SDK, `gocardless_pro` (SPEC §9): customers, billing requests and their flows.

The SDK is synchronous (requests): calls run in the factory's bounded thread pool. Its services retry network
errors themselves (3 attempts, 0.5 s apart, on every fresh `client.customers`); we hold one service object per
resource with a single attempt, so the job runner alone decides about retries and backoff.

Idempotency: a create with a known `Idempotency-Key` answers 409 `idempotent_creation_conflict`, which the SDK turns
into a GET of the existing customer or billing request, so a repeated create returns the first one. A billing
request flow has no GET, so it goes without a key of ours (the SDK adds a random one): a flow is a short-lived
authorisation page for the billing request, and a second one after a retry does no harm.

The SDK's exceptions keep only the JSON error, not the HTTP headers, so `Retry-After` of a 429 would be lost; the
small `ApiClient` subclass below copies it onto the exception before it leaves the SDK.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Final, TypeVar

import requests
from gocardless_pro import errors as gc_errors
from gocardless_pro import services as gc_services
from gocardless_pro.api_client import ApiClient

from worker.contract.connections import Connection, ProviderName
from worker.contract.email import first_email
from worker.domain.customer import CustomerState
from worker.providers.base import (
    DEFAULT_TIMEOUT,
    ProviderError,
    base_url,
    network_error,
    parse_retry_after,
    response_error,
    status_error,
)
from worker.providers.idempotency import derived_key

LIVE_URL: Final = "https://api.gocardless.com"
SANDBOX_URL: Final = "https://api-sandbox.gocardless.com"
DEFAULT_REDIRECT_URL: Final = "https://gocardless.com/"
"""Where the hosted flow sends the customer back when the connection sets no `success_url` (Lago's default)."""
DEFAULT_MANDATE_CURRENCY: Final = "EUR"
MANDATE_CURRENCIES: Final = frozenset({"AUD", "CAD", "DKK", "EUR", "GBP", "NZD", "SEK", "USD"})
"""Currencies GoCardless takes mandates in; any other customer currency gets a mandate in the default currency."""

_PROVIDER: Final[ProviderName] = "gocardless"
_RETRY_AFTER_ATTRIBUTE: Final = "customer_worker_retry_after"
T = TypeVar("T")


class _HeaderKeepingApiClient(ApiClient):  # type: ignore[misc]
    """The SDK's API client, plus: a failed answer's `Retry-After` is kept on the exception it raises.

    Not public API: gocardless_pro 3.22.0 has no public way to read a failed answer's headers (its `ApiError` keeps
    only the JSON body) nor to give `Client` another `ApiClient`, so this overrides `_handle_errors`, and the
    services are built on it directly (`gocardless_pro.services`, keyword arguments as their constructors name
    them). Revisit when the SDK exposes the response or its headers on errors."""

    def _handle_errors(self, response: requests.Response) -> None:
        try:
            super()._handle_errors(response)
        except gc_errors.ApiError as exc:
            setattr(exc, _RETRY_AFTER_ATTRIBUTE, response.headers.get("Retry-After"))
            raise


def create_params(customer: CustomerState) -> dict[str, Any]:
    """E-mail (the first), `company_name` (name), `given_name`, `family_name`, and the two ids in metadata."""
    params: dict[str, Any] = {
        "metadata": {"lago_customer_id": str(customer.id), "customer_id": customer.external_id},
    }
    for field, value in (
        ("email", first_email(customer.email)),
        ("company_name", customer.name),
        ("given_name", customer.firstname),
        ("family_name", customer.lastname),
    ):
        if value:
            params[field] = value
    return params


def update_params(customer: CustomerState) -> dict[str, Any]:
    """The create's fields that have a value (GoCardless refuses null for some of them)."""
    params = create_params(customer)
    del params["metadata"]
    return params


def _error(exc: Exception) -> ProviderError:
    if isinstance(exc, requests.RequestException):
        return network_error(_PROVIDER, timed_out=isinstance(exc, requests.Timeout))
    if not isinstance(exc, gc_errors.ApiError):
        # MalformedResponseError and the like: the answer was not GoCardless's JSON (a proxy page, a cut body).
        status_code = getattr(exc, "status_code", None)
        return status_error(_PROVIDER, status_code if isinstance(status_code, int) else None)
    status = exc.code if isinstance(exc.code, int) else None
    reasons = [item.get("reason") for item in exc.errors or () if isinstance(item, dict)]
    fields = [item.get("field") for item in exc.errors or () if isinstance(item, dict)]
    reason = next((r for r in reasons if isinstance(r, str)), None)
    return status_error(
        _PROVIDER,
        status,
        provider_code=reason or exc.type,
        details=fields,
        retry_after=parse_retry_after(getattr(exc, _RETRY_AFTER_ATTRIBUTE, None)),
        in_progress=status == 409 and reason == "idempotent_request_in_progress",
    )


class GoCardlessAdapter:
    provider: Final[ProviderName] = _PROVIDER
    checkout_with_create: Final = False

    def __init__(self, connection: Connection, *, executor: Executor, timeout: float = DEFAULT_TIMEOUT) -> None:
        config = connection.config
        self._executor = executor
        url = base_url(config.api_base) or (LIVE_URL if config.environment == "live" else SANDBOX_URL)
        api = _HeaderKeepingApiClient(url, connection.secret.get_secret_value(), timeout=timeout)
        # One attempt each (`max_network_retries` counts attempts, not retries), no SDK-side sleeping.
        single: dict[str, Any] = {
            "max_network_retries": 1,
            "retry_delay_in_seconds": 0,
            "raise_on_idempotency_conflict": False,
        }
        self._customers: Any = gc_services.CustomersService(api, **single)
        self._billing_requests: Any = gc_services.BillingRequestsService(api, **single)
        self._flows: Any = gc_services.BillingRequestFlowsService(api, **single)
        self._redirect_url = str(config.success_url) if config.success_url else DEFAULT_REDIRECT_URL

    async def _run(self, call: Callable[[], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except (requests.RequestException, gc_errors.GoCardlessProError) as exc:
            raise _error(exc) from None

    async def create_customer(self, customer: CustomerState, key: str) -> str:
        params = create_params(customer)
        created = await self._run(lambda: self._customers.create(params=params, headers={"Idempotency-Key": key}))
        customer_id = getattr(created, "id", None)
        if not isinstance(customer_id, str) or not customer_id:
            raise response_error(_PROVIDER)
        return customer_id

    async def find_customer(self, customer: CustomerState) -> str | None:
        """GoCardless has no dead end to resolve: a known key answers 409 with the conflicting resource, which the
        SDK fetches and returns (the create's own answer)."""
        return None

    async def update_customer(self, customer: CustomerState, provider_customer_id: str, key: str) -> None:
        # A PUT is idempotent by nature (it sets values): no key needed.
        params = update_params(customer)
        await self._run(lambda: self._customers.update(provider_customer_id, params=params))

    async def checkout_url(self, customer: CustomerState, provider_customer_id: str, key: str) -> str:
        currency = customer.currency if customer.currency in MANDATE_CURRENCIES else DEFAULT_MANDATE_CURRENCY
        billing_request_params = {
            "mandate_request": {"currency": currency},
            "links": {"customer": provider_customer_id},
        }
        billing_request = await self._run(
            lambda: self._billing_requests.create(
                params=billing_request_params, headers={"Idempotency-Key": derived_key(key, "br")}
            )
        )
        billing_request_id = getattr(billing_request, "id", None)
        if not isinstance(billing_request_id, str) or not billing_request_id:
            raise response_error(_PROVIDER)
        flow_params = {
            "redirect_uri": self._redirect_url,
            "exit_uri": self._redirect_url,
            "links": {"billing_request": billing_request_id},
        }
        flow = await self._run(lambda: self._flows.create(params=flow_params))
        url = getattr(flow, "authorisation_url", None)
        if not isinstance(url, str) or not url:
            raise response_error(_PROVIDER)
        return url

    async def check_credentials(self) -> None:
        await self._run(lambda: self._customers.list(params={"limit": 1}))

    async def aclose(self) -> None:
        """requests opens a connection per call here: nothing is held open."""

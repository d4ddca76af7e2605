"""Adyen through its official SDK (SPEC §9): no customer object, a payment link per customer.

The provider customer id is the shopper reference, which is the customer's external id; the one provider call of a
create is the payment link (Checkout API, `paymentLinks`) that stores the shopper's payment method for later
(`storePaymentMethodMode: enabled`, `UnscheduledCardOnFile`). Its URL is the checkout URL, so a create yields both.

The SDK is synchronous (requests): calls run in the factory's bounded thread pool. It has no base-URL setting, so a
connection's `api_base` (a sandbox, a proxy, a local fake) is set on the service object. Adyen keeps an idempotency
key's first answer and replays it for any repeat, whatever the body; a key still in progress answers 422 `704`.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections import OrderedDict
from concurrent.futures import Executor
from functools import partial
from typing import Any, Final

import Adyen
import requests
from Adyen.exceptions import AdyenEndpointInvalidFormat

from worker.contract.connections import Connection, ProviderName
from worker.domain.customer import CustomerState
from worker.providers.base import (
    DEFAULT_TIMEOUT,
    ProviderError,
    base_url,
    configuration_error,
    header,
    network_error,
    parse_retry_after,
    response_error,
    status_error,
)

_PROVIDER: Final[ProviderName] = "adyen"
_RECENT_LINKS: Final = 1024
_MAX_REFERENCE: Final = 80  # Adyen's limit for a merchant reference
_VERSIONED: Final = re.compile(r"/v\d+$")


def link_request(customer: CustomerState, connection: Connection) -> dict[str, Any]:
    config = connection.config
    reference = customer.external_id
    if len(reference) > _MAX_REFERENCE:
        # Long external ids keep a readable prefix and stay unique through a hash of the whole id.
        reference = f"{reference[:63]}-{hashlib.sha256(reference.encode()).hexdigest()[:16]}"
    request: dict[str, Any] = {
        "merchantAccount": config.merchant_account,
        "amount": {"value": config.payment_link_amount, "currency": config.payment_link_currency},
        "reference": reference,
        "shopperReference": customer.external_id,
        "storePaymentMethodMode": "enabled",
        "recurringProcessingModel": "UnscheduledCardOnFile",
    }
    if config.return_url is not None:
        request["returnUrl"] = str(config.return_url)
    return request


_CHECK_LINK_ID: Final = "PLCREDENTIALCHECK0000"


def _error(exc: Exception) -> ProviderError:
    if isinstance(exc, requests.RequestException):
        return network_error(_PROVIDER, timed_out=isinstance(exc, requests.Timeout))
    if isinstance(exc, AdyenEndpointInvalidFormat | Adyen.AdyenInvalidRequestError):
        return configuration_error(_PROVIDER, "the SDK refused the connection settings")
    assert isinstance(exc, Adyen.AdyenError)
    # Never read `message`, `raw_request` or `raw_response`: they carry the request, shopper data included.
    status = exc.status_code if isinstance(exc.status_code, int) else None
    code = exc.error_code if isinstance(exc.error_code, str) else None
    return status_error(
        _PROVIDER,
        status,
        provider_code=code,
        retry_after=parse_retry_after(header(exc.headers, "Retry-After")),
        in_progress=status == 422 and code == "704",
    )


class AdyenAdapter:
    provider: Final[ProviderName] = _PROVIDER
    checkout_with_create: Final = True

    def __init__(self, connection: Connection, *, executor: Executor, timeout: float = DEFAULT_TIMEOUT) -> None:
        config = connection.config
        self._connection = connection
        self._executor = executor
        live = config.environment == "live"
        client = Adyen.Adyen(
            xapikey=connection.secret.get_secret_value(),
            platform="live" if live else "test",
            live_endpoint_prefix=config.live_url_prefix,
            http_timeout=timeout,
            http_force="requests",
        )
        self._links: Any = client.checkout.payment_links_api
        api = base_url(config.api_base)
        if api is not None:
            # The SDK's default is `https://checkout-test.adyen.com/v72`: keep its API version unless one is given.
            version = _VERSIONED.search(self._links.baseUrl)
            self._links.baseUrl = api if _VERSIONED.search(api) or version is None else api + version.group(0)
        # Links made by `create_customer` in this process, by key, so that `checkout_url` for the same key needs no
        # second call. Across processes the same key makes Adyen replay the first link instead.
        self._recent: OrderedDict[str, str] = OrderedDict()

    async def _create_link(self, customer: CustomerState, key: str) -> str:
        if not self._connection.config.merchant_account:
            raise configuration_error(_PROVIDER, "merchant_account is not set")
        call = partial(self._links.payment_links, link_request(customer, self._connection), idempotency_key=key)
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except (requests.RequestException, Adyen.AdyenError) as exc:
            raise _error(exc) from None
        message = getattr(result, "message", None)
        url = message.get("url") if isinstance(message, dict) else None
        if not isinstance(url, str) or not url:
            raise response_error(_PROVIDER)
        return url

    async def create_customer(self, customer: CustomerState, key: str) -> str:
        url = await self._create_link(customer, key)
        self._recent[key] = url
        while len(self._recent) > _RECENT_LINKS:
            self._recent.popitem(last=False)
        return customer.external_id

    async def find_customer(self, customer: CustomerState) -> str | None:
        """Adyen has no customer object: there is nothing to look up."""
        return None

    async def update_customer(self, customer: CustomerState, provider_customer_id: str, key: str) -> None:
        """Nothing to push: Adyen keeps no customer record of ours."""

    async def checkout_url(self, customer: CustomerState, provider_customer_id: str, key: str) -> str:
        recent = self._recent.pop(key, None)
        if recent is not None:
            return recent
        return await self._create_link(customer, key)

    async def check_credentials(self) -> None:
        """Reads a payment link that does not exist: Adyen has no cheaper read in the Checkout API, and its 404
        (or 422) shows that the credentials were accepted."""
        call = partial(self._links.get_payment_link, _CHECK_LINK_ID)
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except (requests.RequestException, Adyen.AdyenError) as exc:
            raise _error(exc) from None

    async def aclose(self) -> None:
        self._recent.clear()

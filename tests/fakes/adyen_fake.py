"""A fake Adyen Checkout API (payment links) for the real `Adyen` SDK.

The Adyen SDK has no base-URL setting: point each service object at the fake, e.g.
`adyen.checkout.payment_links_api.baseUrl = fake.checkout_url` (`{url}/v72`, the version Adyen 16.0.0 uses; any
`/v<N>` prefix is served). Auth is `X-API-Key`. Idempotency follows Adyen's documentation: a key whose request
completed replays the first response (the body of the repeat is not compared), and a key whose first request is
still in progress answers 422 with errorCode `704` and `transient-error: true`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from tests.fakes.base import RESOURCE_ID_KEY, FakeServer, Handler, IdempotencyEntry

DEFAULT_ADYEN_KEY = "AQEfake_adyen_api_key_0123456789"
DEFAULT_MERCHANT_ACCOUNT = "FakeMerchantECOM"
SDK_CHECKOUT_VERSION = "v72"
STORE_PAYMENT_METHOD_MODES = ("askForConsent", "disabled", "enabled")
RECURRING_MODELS = ("CardOnFile", "Subscription", "UnscheduledCardOnFile")


def psp_reference() -> str:
    return "".join(secrets.choice("0123456789ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(16))


def adyen_error_body(status: int, error_code: str, message: str, error_type: str) -> dict[str, Any]:
    return {
        "status": status,
        "errorCode": error_code,
        "message": message,
        "errorType": error_type,
        "pspReference": psp_reference(),
    }


class AdyenApiError(Exception):
    def __init__(self, status: int, error_code: str, message: str, error_type: str = "validation") -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message
        self.error_type = error_type


class FakeAdyen(FakeServer):
    """Fake Adyen Checkout. `links` holds the created payment links by id.

    - `api_keys`: accepted `X-API-Key` values (default: `DEFAULT_ADYEN_KEY`); others get 401.
    - `merchant_accounts`: accepted `merchantAccount` values (None: any); others get 403 `901`.
    - `link_base_url`: prefix of a link's `url`.
    """

    name = "adyen"

    def __init__(
        self,
        *,
        api_keys: Iterable[str] = (DEFAULT_ADYEN_KEY,),
        merchant_accounts: Iterable[str] | None = (DEFAULT_MERCHANT_ACCOUNT,),
        link_base_url: str = "https://test.adyen.link",
        **kwargs: Any,
    ) -> None:
        super().__init__(api_keys=api_keys, **kwargs)
        self.merchant_accounts: set[str] | None = None if merchant_accounts is None else set(merchant_accounts)
        self.link_base_url = link_base_url
        self.links: dict[str, dict[str, Any]] = {}

    @property
    def api_key(self) -> str:
        return sorted(self.api_keys)[0]

    @property
    def checkout_url(self) -> str:
        """The value for a Checkout service object's `baseUrl` (`{url}/v72`)."""
        return f"{self.url}/{SDK_CHECKOUT_VERSION}"

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self.links.clear()

    # ------------------------------------------------------------------ routes

    def setup_routes(self, app: web.Application) -> None:
        app.router.add_post(r"/{version:v\d+}/paymentLinks", self._wrap(self._create_link))
        app.router.add_get(r"/{version:v\d+}/paymentLinks/{id}", self._wrap(self._get_link))

    def _wrap(self, handler: Callable[[web.Request], web.Response]) -> Handler:
        async def wrapped(request: web.Request) -> web.Response:
            try:
                return handler(request)
            except AdyenApiError as err:
                return self.error_response(
                    err.status, adyen_error_body(err.status, err.error_code, err.message, err.error_type)
                )

        return wrapped

    # ------------------------------------------------------------------ hooks

    def extract_credential(self, request: web.Request) -> str | None:
        return request.headers.get("X-API-Key") or None

    def default_error_body(self, status: int) -> Any:
        if status == 401:
            return adyen_error_body(401, "000", "HTTP Status Response - Unauthorized", "security")
        if status == 403:
            return adyen_error_body(403, "010", "Not allowed", "security")
        if status == 404:
            return adyen_error_body(404, "000", "HTTP Status Response - Not Found", "validation")
        if status == 422:
            return adyen_error_body(422, "704", "request already processed or in progress", "validation")
        if status == 429:
            return adyen_error_body(429, "000", "Too Many Requests", "security")
        if status >= 500:
            return adyen_error_body(status, "000", "An unknown error occurred", "internal")
        return adyen_error_body(status, "702", "Unexpected input", "validation")

    def response_headers(self, request: web.Request) -> dict[str, str]:
        headers = {"pspReference": psp_reference()}
        key = request.headers.get("Idempotency-Key")
        if key:
            headers["Idempotency-Key"] = key  # Adyen echoes the key on idempotent requests
        return headers

    def idempotency_repeat_response(
        self, request: web.Request, key: str, entry: IdempotencyEntry, same_request: bool
    ) -> tuple[web.Response, str]:
        assert entry.response is not None
        return entry.response.to_response(), "replayed"

    def idempotency_in_progress_response(self, request: web.Request, key: str) -> web.Response:
        return self.error_response(422, self.default_error_body(422), {"transient-error": "true"})

    # ------------------------------------------------------------------ payment links

    def _create_link(self, request: web.Request) -> web.Response:
        params = self.body_of(request)
        if not isinstance(params, dict):
            raise AdyenApiError(400, "702", "Unexpected input: the request body is not a JSON object")
        merchant = params.get("merchantAccount")
        if not merchant:
            raise AdyenApiError(422, "702", "Required field 'merchantAccount' is not provided.")
        if self.merchant_accounts is not None and merchant not in self.merchant_accounts:
            raise AdyenApiError(403, "901", "Invalid Merchant Account", "security")
        amount = params.get("amount")
        if (
            not isinstance(amount, dict)
            or not isinstance(amount.get("value"), int)
            or not isinstance(amount.get("currency"), str)
        ):
            raise AdyenApiError(422, "100", "No amount specified")
        if not params.get("reference"):
            raise AdyenApiError(422, "130", "Required field 'reference' is not provided.")
        mode = params.get("storePaymentMethodMode")
        if mode is not None and mode not in STORE_PAYMENT_METHOD_MODES:
            raise AdyenApiError(422, "702", f"Invalid storePaymentMethodMode: {mode}")
        model = params.get("recurringProcessingModel")
        if model is not None and model not in RECURRING_MODELS:
            raise AdyenApiError(422, "702", f"Invalid recurringProcessingModel: {model}")
        if mode == "enabled" and not params.get("shopperReference"):
            raise AdyenApiError(422, "14_030", "shopperReference is required when storePaymentMethodMode is enabled")
        link_id = "PL" + secrets.token_hex(8).upper()
        expires = params.get("expiresAt") or (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        link = dict(params)
        link.update(
            id=link_id,
            url=f"{self.link_base_url}/{link_id}",
            status="active",
            expiresAt=expires,
            reusable=bool(params.get("reusable", False)),
        )
        with self._lock:
            self.links[link_id] = link
        request[RESOURCE_ID_KEY] = link_id
        return self.json_response(link, status=201)

    def _get_link(self, request: web.Request) -> web.Response:
        link = self.links.get(request.match_info["id"])
        if link is None:
            raise AdyenApiError(422, "14_004", f"Payment link '{request.match_info['id']}' not found")
        return self.json_response(link)

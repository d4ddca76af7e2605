"""A fake Stripe API (v1, form-encoded) for the real `stripe` SDK.

Configure the SDK with `stripe.StripeClient(key, base_addresses={"api": fake.url}, max_network_retries=0,
http_client=...)`. Covers customers (create / retrieve / update / search) and Checkout Sessions (create), with
Stripe's error shapes and its idempotency layer as documented:

- a key's first result is stored once an endpoint began executing, a 5xx included, and replayed for every repeat
  (`Idempotent-Replayed: true`; a stored 5xx with `Stripe-Should-Retry: false`, which an executed 5xx also carries);
  a request that failed validation (a 4xx of the endpoint) or authentication stores nothing;
- a key reused with other parameters or on another endpoint: 400 `idempotency_error`;
- a key whose first request is still executing: 409 `idempotency_key_in_use`;
- `GET /v1/customers/search` with Stripe's query language: `field:'value'` clauses (`email`, `name`, `phone`,
  `metadata['key']`), `-` to negate, `~` for a substring (`name`, `email`, `phone`), joined by `AND` or by `OR`.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from tests.fakes.base import (
    RESOURCE_ID_KEY,
    FakeServer,
    Handler,
    IdempotencyEntry,
    new_id,
    parse_nested_form,
)

DEFAULT_STRIPE_KEY = "sk_test_fake_4eC39HqLyjWDarjtT1zdp7dc"

ADDRESS_FIELDS = ("city", "country", "line1", "line2", "postal_code", "state")
# The parameters of stripe 16.1.0's `CustomerCreateParams` / `CustomerUpdateParams` (API 2026-10-28.endive).
CUSTOMER_CREATE_PARAMS = frozenset(
    {
        "address",
        "balance",
        "business_name",
        "cash_balance",
        "description",
        "email",
        "expand",
        "individual_name",
        "invoice_prefix",
        "invoice_settings",
        "metadata",
        "name",
        "next_invoice_sequence",
        "payment_method",
        "phone",
        "preferred_locales",
        "shipping",
        "source",
        "tax",
        "tax_exempt",
        "tax_id_data",
        "test_clock",
        "validate",
    }
)
CUSTOMER_UPDATE_PARAMS = (CUSTOMER_CREATE_PARAMS - {"payment_method", "tax_id_data", "test_clock"}) | {"default_source"}
#: From this API version on, Checkout Sessions take `allowed_payment_method_types`; `payment_method_types` is gone.
PAYMENT_METHOD_TYPES_REMOVED_IN = "2026-09-30"
CHECKOUT_MODES = ("payment", "setup", "subscription")


_CLAUSE = re.compile(r"^(-?)(metadata\['((?:[^'\\]|\\.)+)'\]|email|name|phone)([:~])'((?:[^'\\]|\\.)*)'$")
SEARCH_FIELDS = ("email", "name", "phone")


def parse_search_query(query: str) -> Callable[[dict[str, Any]], bool]:
    """A predicate for Stripe's search query language (the subset customers need); raises StripeApiError."""
    text = query.strip()
    joins = {word for word in (" AND ", " OR ") if word in text}
    if len(joins) > 1:
        raise StripeApiError(400, "You cannot combine AND and OR in a search query.", param="query")
    parts = text.split(joins.pop()) if joins else [text]
    clauses: list[Callable[[dict[str, Any]], bool]] = []
    for part in parts:
        match = _CLAUSE.match(part.strip())
        if match is None:
            raise StripeApiError(400, f"Invalid search query: {part.strip()!r}", param="query")
        negate, field, meta_key, operator, raw = match.groups()
        value = raw.replace("\\'", "'")
        if meta_key is not None and operator == "~":
            raise StripeApiError(400, "metadata fields support exact match only.", param="query")

        def clause(
            customer: dict[str, Any], field: str = field, key: str | None = meta_key, op: str = operator, v: str = value
        ) -> bool:
            actual = customer["metadata"].get(key.replace("\\'", "'")) if key is not None else customer.get(field)
            if not isinstance(actual, str):
                return False
            return v.lower() in actual.lower() if op == "~" else actual == v

        if negate:

            def negated(customer: dict[str, Any], inner: Callable[[dict[str, Any]], bool] = clause) -> bool:
                return not inner(customer)

            clauses.append(negated)
        else:
            clauses.append(clause)
    if joins == set() and len(parts) == 1:
        return clauses[0]
    if " OR " in text:
        return lambda customer: any(clause(customer) for clause in clauses)
    return lambda customer: all(clause(customer) for clause in clauses)


class StripeApiError(Exception):
    """Raised inside handlers; becomes a Stripe error answer."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param


def stripe_error_body(
    message: str, *, type_: str = "invalid_request_error", code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"type": type_, "message": message}
    if code is not None:
        error["code"] = code
        error["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
    if param is not None:
        error["param"] = param
    return {"error": error}


class FakeStripe(FakeServer):
    """Fake Stripe. `customers` / `checkout_sessions` hold the stored objects by id.

    - `api_keys`: accepted secret keys (default: `DEFAULT_STRIPE_KEY`); others get 401.
    - `invalid_emails`: e-mails answered with 400 `email_invalid` (param `email`); an e-mail without `@` is
      also invalid.
    - `checkout_base_url`: prefix of the returned Checkout Session `url`.
    - `search_lag`: seconds before a created customer is found by search (0 by default).
    """

    name = "stripe"

    def __init__(
        self,
        *,
        api_keys: Iterable[str] = (DEFAULT_STRIPE_KEY,),
        invalid_emails: Iterable[str] = ("invalid@example.invalid",),
        checkout_base_url: str = "https://checkout.stripe.com/c/pay",
        **kwargs: Any,
    ) -> None:
        super().__init__(api_keys=api_keys, **kwargs)
        self.invalid_emails: set[str] = set(invalid_emails)
        self.checkout_base_url = checkout_base_url
        self.customers: dict[str, dict[str, Any]] = {}
        self.checkout_sessions: dict[str, dict[str, Any]] = {}
        #: Seconds before a new customer shows in search results (Stripe: "usually within a minute", up to an hour
        #: during outages; search is not for read-after-write).
        self.search_lag = 0.0
        self._searchable_at: dict[str, float] = {}

    @property
    def api_key(self) -> str:
        """One accepted key (the first, in sorted order)."""
        return sorted(self.api_keys)[0]

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self.customers.clear()
            self.checkout_sessions.clear()
            self._searchable_at.clear()
            self.search_lag = 0.0

    # ------------------------------------------------------------------ routes

    def setup_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/customers", self._wrap(self._create_customer))
        app.router.add_get("/v1/customers", self._wrap(self._list_customers))
        app.router.add_get("/v1/customers/search", self._wrap(self._search_customers))
        app.router.add_get("/v1/customers/{id}", self._wrap(self._get_customer))
        app.router.add_post("/v1/customers/{id}", self._wrap(self._update_customer))
        app.router.add_post("/v1/checkout/sessions", self._wrap(self._create_checkout_session))
        app.router.add_get("/v1/checkout/sessions/{id}", self._wrap(self._get_checkout_session))

    def _wrap(self, handler: Callable[[web.Request], web.Response]) -> Handler:
        async def wrapped(request: web.Request) -> web.Response:
            try:
                result: web.Response = handler(request)
            except StripeApiError as err:
                return self.error_response(
                    err.status, stripe_error_body(err.message, type_=err.type, code=err.code, param=err.param)
                )
            return result

        return wrapped

    # ------------------------------------------------------------------ hooks

    def parse_body(self, request: web.Request, raw: bytes) -> Any:
        if not raw:
            return {}
        pairs = parse_qsl(raw.decode("utf-8", errors="replace"), keep_blank_values=True)
        return parse_nested_form(pairs, keep_dict_keys=frozenset({"metadata"}))

    def extract_credential(self, request: web.Request) -> str | None:
        token = super().extract_credential(request)
        if token is not None:
            return token
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("basic "):  # Stripe also takes the key as the basic-auth user name
            try:
                return base64.b64decode(auth[6:]).decode().partition(":")[0] or None
            except (binascii.Error, UnicodeDecodeError):
                return None
        return None

    def default_error_body(self, status: int) -> Any:
        if status == 429:
            return stripe_error_body(
                "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits.",
                code="rate_limit",
            )
        if status == 401:
            return stripe_error_body("Invalid API Key provided.")
        if status == 404:
            return stripe_error_body("Unrecognized request URL.")
        if status == 409:
            return stripe_error_body(
                "There is currently another in-progress request using this Idempotent Key (that probably means you "
                "submitted twice, and the other request is still going through). Please retry this request in a "
                "few seconds.",
                code="idempotency_key_in_use",
            )
        if status >= 500:
            return stripe_error_body("An unknown error occurred while processing your request.", type_="api_error")
        return stripe_error_body("Invalid request.")

    def unauthorized_response(self, request: web.Request) -> web.Response:
        credential = self.extract_credential(request)
        if credential is None:
            message = (
                "You did not provide an API key. You need to provide your API key in the Authorization header, "
                "using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY')."
            )
        else:
            message = f"Invalid API Key provided: {credential[:8]}{'*' * 12}{credential[-4:]}"
        return self.error_response(401, stripe_error_body(message), {"WWW-Authenticate": 'Bearer realm="Stripe"'})

    def not_found_response(self, request: web.Request) -> web.Response:
        return self.error_response(
            404,
            stripe_error_body(
                f"Unrecognized request URL ({request.method}: {request.path}). Please see https://stripe.com/docs."
            ),
        )

    def response_headers(self, request: web.Request) -> dict[str, str]:
        headers = {"Request-Id": new_id("req_", 14)}
        if request.headers.get("Stripe-Version"):
            headers["Stripe-Version"] = request.headers["Stripe-Version"]
        if request.headers.get("Idempotency-Key"):
            headers["Idempotency-Key"] = request.headers["Idempotency-Key"]
        return headers

    def idempotency_repeat_response(
        self, request: web.Request, key: str, entry: IdempotencyEntry, same_request: bool
    ) -> tuple[web.Response, str]:
        assert entry.response is not None
        if entry.path != request.path or entry.method != request.method:
            message = (
                "Keys for idempotent requests can only be used for the same endpoint they were first used for "
                f"('{entry.method} {entry.path}' vs '{request.method} {request.path}'). Try using a key other than "
                f"'{key}' if you meant to execute a different request."
            )
            return self.error_response(400, stripe_error_body(message, type_="idempotency_error")), "idempotency_error"
        if not same_request:
            message = (
                "Keys for idempotent requests can only be used with the same parameters they were first used with. "
                f"Try using a key other than '{key}' if you meant to execute a different request."
            )
            return self.error_response(400, stripe_error_body(message, type_="idempotency_error")), "idempotency_error"
        original = entry.response.headers.get("Request-Id", "")
        headers = {"Idempotent-Replayed": "true", "Original-Request": original}
        if entry.response.status >= 500:
            headers["Stripe-Should-Retry"] = "false"  # the same key will only ever get this answer
        return entry.response.to_response(headers), "replayed"

    def idempotency_in_progress_response(self, request: web.Request, key: str) -> web.Response:
        return self.error_response(409, self.default_error_body(409))

    def stores_response(self, status: int, resource_id: str | None) -> bool:
        """Stripe keeps the result of every request whose endpoint began executing, a 500 included; an endpoint's
        4xx here is a validation failure, which stores nothing."""
        return 200 <= status < 300 or status >= 500

    def executed_failure_headers(self) -> dict[str, str]:
        return {"Stripe-Should-Retry": "false"}

    # ------------------------------------------------------------------ validation helpers

    @staticmethod
    def _reject_unknown(params: dict[str, Any], allowed: frozenset[str], prefix: str = "") -> None:
        for name in params:
            if name not in allowed:
                shown = f"{prefix}[{name}]" if prefix else name
                raise StripeApiError(400, f"Received unknown parameter: {shown}", code="parameter_unknown", param=shown)

    def _check_email(self, email: Any) -> None:
        if email in (None, ""):
            return
        if not isinstance(email, str) or email in self.invalid_emails or "@" not in email:
            raise StripeApiError(400, f"Invalid email address: {email}", code="email_invalid", param="email")

    @staticmethod
    def _address(value: Any) -> dict[str, Any] | None:
        if value in (None, ""):
            return None
        if not isinstance(value, dict):
            raise StripeApiError(400, "Invalid hash", code="parameter_invalid_empty", param="address")
        FakeStripe._reject_unknown(value, frozenset(ADDRESS_FIELDS), "address")
        return {f: (value.get(f) or None) for f in ADDRESS_FIELDS}

    @staticmethod
    def _metadata(current: dict[str, str], value: Any) -> dict[str, str]:
        if value in (None, ""):
            return {} if value == "" else current
        if not isinstance(value, dict):
            raise StripeApiError(400, "Invalid hash", code="parameter_invalid_empty", param="metadata")
        merged = dict(current)
        for key, item in value.items():
            if len(key) > 40:
                raise StripeApiError(
                    400,
                    "Metadata keys can have up to 40 characters.",
                    code="parameter_invalid_string_too_long",
                    param=f"metadata[{key}]",
                )
            if item == "":
                merged.pop(key, None)
                continue
            if not isinstance(item, str) or len(item) > 500:
                raise StripeApiError(
                    400,
                    "Metadata values can have up to 500 characters.",
                    code="parameter_invalid_string_too_long",
                    param=f"metadata[{key}]",
                )
            merged[key] = item
        if len(merged) > 50:
            raise StripeApiError(400, "Metadata can have up to 50 keys.", param="metadata")
        return merged

    def _customer_or_404(self, customer_id: str, param: str = "id") -> dict[str, Any]:
        customer = self.customers.get(customer_id)
        if customer is None:
            raise StripeApiError(
                404 if param == "id" else 400,
                f"No such customer: '{customer_id}'",
                code="resource_missing",
                param=param,
            )
        return customer

    # ------------------------------------------------------------------ customers

    def _create_customer(self, request: web.Request) -> web.Response:
        params: dict[str, Any] = self.body_of(request) or {}
        self._reject_unknown(params, CUSTOMER_CREATE_PARAMS)
        self._check_email(params.get("email"))
        customer_id = new_id("cus_", 14)
        customer: dict[str, Any] = {
            "id": customer_id,
            "object": "customer",
            "address": self._address(params.get("address")),
            "balance": int(params.get("balance") or 0),
            "business_name": params.get("business_name") or None,
            "created": int(time.time()),
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "description": params.get("description") or None,
            "discount": None,
            "email": params.get("email") or None,
            "individual_name": params.get("individual_name") or None,
            "invoice_prefix": customer_id[4:12].upper(),
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": None,
                "footer": None,
                "rendering_options": None,
            },
            "livemode": False,
            "metadata": self._metadata({}, params.get("metadata")),
            "name": params.get("name") or None,
            "next_invoice_sequence": 1,
            "phone": params.get("phone") or None,
            "preferred_locales": list(params.get("preferred_locales") or []),
            "shipping": None,
            "tax_exempt": params.get("tax_exempt") or "none",
            "test_clock": None,
        }
        with self._lock:
            self.customers[customer_id] = customer
            self._searchable_at[customer_id] = time.monotonic() + self.search_lag
        request[RESOURCE_ID_KEY] = customer_id
        return self.json_response(customer)

    def _list_customers(self, request: web.Request) -> web.Response:
        limit = int(request.query.get("limit") or 10)
        with self._lock:
            found = sorted(self.customers.values(), key=lambda c: (-c["created"], c["id"]))
        return self.json_response(
            {"object": "list", "data": found[:limit], "has_more": len(found) > limit, "url": "/v1/customers"}
        )

    def _search_customers(self, request: web.Request) -> web.Response:
        query = request.query.get("query")
        if not query:
            raise StripeApiError(400, "Missing required param: query.", code="parameter_missing", param="query")
        matches = parse_search_query(query)
        limit = int(request.query.get("limit") or 10)
        now = time.monotonic()
        with self._lock:
            indexed = (c for c in self.customers.values() if self._searchable_at.get(c["id"], 0.0) <= now)
            found = sorted((c for c in indexed if matches(c)), key=lambda c: (-c["created"], c["id"]))
        return self.json_response(
            {
                "object": "search_result",
                "data": found[:limit],
                "has_more": len(found) > limit,
                "next_page": None,
                "url": "/v1/customers/search",
            }
        )

    def _get_customer(self, request: web.Request) -> web.Response:
        return self.json_response(self._customer_or_404(request.match_info["id"]))

    def _update_customer(self, request: web.Request) -> web.Response:
        params: dict[str, Any] = self.body_of(request) or {}
        customer = self._customer_or_404(request.match_info["id"])
        self._reject_unknown(params, CUSTOMER_UPDATE_PARAMS)
        self._check_email(params.get("email"))
        updated = dict(customer)
        for name in ("name", "email", "phone", "description", "business_name", "individual_name"):
            if name in params:
                updated[name] = params[name] or None  # "" unsets
        if "address" in params:
            updated["address"] = self._address(params["address"])
        if "metadata" in params:
            updated["metadata"] = self._metadata(customer["metadata"], params["metadata"])
        if "preferred_locales" in params:
            updated["preferred_locales"] = list(params["preferred_locales"] or [])
        if "tax_exempt" in params:
            updated["tax_exempt"] = params["tax_exempt"] or "none"
        with self._lock:
            self.customers[customer["id"]] = updated
        request[RESOURCE_ID_KEY] = customer["id"]
        return self.json_response(updated)

    # ------------------------------------------------------------------ checkout sessions

    def _create_checkout_session(self, request: web.Request) -> web.Response:
        params: dict[str, Any] = self.body_of(request) or {}
        mode = params.get("mode")
        if not mode:
            raise StripeApiError(400, "Missing required param: mode.", code="parameter_missing", param="mode")
        if mode not in CHECKOUT_MODES:
            raise StripeApiError(
                400,
                f"Invalid mode: must be one of {', '.join(CHECKOUT_MODES)}",
                code="parameter_invalid_empty",
                param="mode",
            )
        ui_mode = params.get("ui_mode") or "hosted"
        if ui_mode == "hosted" and not params.get("success_url"):
            raise StripeApiError(
                400, "Missing required param: success_url.", code="parameter_missing", param="success_url"
            )
        version = request.headers.get("Stripe-Version", "")
        if "payment_method_types" in params and version[:10] >= PAYMENT_METHOD_TYPES_REMOVED_IN:
            raise StripeApiError(
                400,
                f"`payment_method_types` is not supported on API version {version}: use "
                "`allowed_payment_method_types` or dynamic payment methods.",
                code="payment_method_types_no_longer_supported",
                param="payment_method_types",
            )
        methods = params.get("allowed_payment_method_types", params.get("payment_method_types"))
        if methods is not None and not isinstance(methods, list):
            raise StripeApiError(
                400, "Invalid array", code="parameter_invalid_empty", param="allowed_payment_method_types"
            )
        if mode == "setup" and not methods and not params.get("currency"):
            raise StripeApiError(
                400,
                "You must provide `currency` in setup mode when `allowed_payment_method_types` is not passed.",
                code="parameter_missing",
                param="currency",
            )
        customer_id = params.get("customer")
        if customer_id:
            self._customer_or_404(customer_id, param="customer")
        session_id = new_id("cs_test_", 58)
        session: dict[str, Any] = {
            "id": session_id,
            "object": "checkout.session",
            "cancel_url": params.get("cancel_url"),
            "client_reference_id": params.get("client_reference_id"),
            "created": int(time.time()),
            "currency": params.get("currency"),
            "customer": customer_id or None,
            "customer_email": params.get("customer_email"),
            "expires_at": int(time.time()) + 24 * 3600,
            "livemode": False,
            "metadata": self._metadata({}, params.get("metadata")),
            "mode": mode,
            "allowed_payment_method_types": list(methods) if methods else None,
            "payment_method_types": list(methods or ["card"]),
            "payment_status": "no_payment_required" if mode == "setup" else "unpaid",
            "setup_intent": new_id("seti_", 24) if mode == "setup" else None,
            "status": "open",
            "success_url": params.get("success_url"),
            "ui_mode": ui_mode,
            "url": f"{self.checkout_base_url}/{session_id}" if ui_mode == "hosted" else None,
        }
        with self._lock:
            self.checkout_sessions[session_id] = session
        request[RESOURCE_ID_KEY] = session_id
        return self.json_response(session)

    def _get_checkout_session(self, request: web.Request) -> web.Response:
        session = self.checkout_sessions.get(request.match_info["id"])
        if session is None:
            raise StripeApiError(
                404, f"No such checkout.session: '{request.match_info['id']}'", code="resource_missing", param="id"
            )
        return self.json_response(session)

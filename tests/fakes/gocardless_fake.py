"""A fake GoCardless Pro API for the real `gocardless_pro` SDK.

Configure the SDK with `gocardless_pro.Client(access_token=token, base_url=fake.url, timeout=...)`. Covers
customers (create / get / update), billing requests (create / get) and billing request flows (create), with
GoCardless's error envelope and its idempotency rule: a repeated `Idempotency-Key` on a create answers 409
`invalid_state` / `idempotent_creation_conflict` with `links.conflicting_resource_id`, which the SDK turns into a
GET of the existing resource.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from typing import Any

from aiohttp import web

from tests.fakes.base import RESOURCE_ID_KEY, FakeServer, Handler, IdempotencyEntry

DEFAULT_GOCARDLESS_TOKEN = "sandbox_fake_access_token_0123456789"
DOCS = "https://developer.gocardless.com/api-reference"

CUSTOMER_FIELDS = (
    "address_line1",
    "address_line2",
    "address_line3",
    "city",
    "company_name",
    "country_code",
    "danish_identity_number",
    "email",
    "family_name",
    "given_name",
    "language",
    "phone_number",
    "postal_code",
    "region",
    "swedish_identity_number",
)


def gc_id(prefix: str, length: int = 12) -> str:
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    return prefix + "".join(secrets.choice(alphabet) for _ in range(length))


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class GoCardlessApiError(Exception):
    def __init__(self, status: int, type_: str, message: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.errors = errors


def gocardless_error_body(
    status: int,
    type_: str,
    message: str,
    errors: list[dict[str, Any]] | None = None,
    *,
    request_id: str | None = None,
) -> dict[str, Any]:
    """GoCardless's error envelope. `code` is the HTTP status (an integer), as the API sends it."""
    errs = errors if errors is not None else []
    reason = next((e.get("reason") for e in errs if e.get("reason")), None)
    anchor = reason or type_
    return {
        "error": {
            "message": message,
            "documentation_url": f"{DOCS}#{anchor}",
            "type": type_,
            "request_id": request_id or gc_id("", 16),
            "errors": errs,
            "code": status,
        }
    }


def validation_error(field: str, message: str, envelope: str) -> dict[str, Any]:
    return {"field": field, "message": message, "request_pointer": f"/{envelope}/{field}"}


class FakeGoCardless(FakeServer):
    """Fake GoCardless Pro. `customers`, `billing_requests`, `billing_request_flows` hold the stored resources.

    - `api_keys`: accepted access tokens (default: `DEFAULT_GOCARDLESS_TOKEN`); others get 401.
    - `invalid_emails`: e-mails answered with 422 `validation_failed` (field `email`); an e-mail without `@` too.
    - `authorisation_base_url`: prefix of a flow's `authorisation_url`.
    """

    name = "gocardless"

    def __init__(
        self,
        *,
        api_keys: Iterable[str] = (DEFAULT_GOCARDLESS_TOKEN,),
        invalid_emails: Iterable[str] = ("invalid@example.invalid",),
        authorisation_base_url: str = "https://pay-sandbox.gocardless.com/billing/static/flow",
        creditor_id: str = "CR000FAKE00001",
        **kwargs: Any,
    ) -> None:
        super().__init__(api_keys=api_keys, **kwargs)
        self.invalid_emails: set[str] = set(invalid_emails)
        self.authorisation_base_url = authorisation_base_url
        self.creditor_id = creditor_id
        self.customers: dict[str, dict[str, Any]] = {}
        self.billing_requests: dict[str, dict[str, Any]] = {}
        self.billing_request_flows: dict[str, dict[str, Any]] = {}

    @property
    def access_token(self) -> str:
        return sorted(self.api_keys)[0]

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self.customers.clear()
            self.billing_requests.clear()
            self.billing_request_flows.clear()

    # ------------------------------------------------------------------ routes

    def setup_routes(self, app: web.Application) -> None:
        app.router.add_post("/customers", self._wrap(self._create_customer))
        app.router.add_get("/customers", self._wrap(self._list_customers))
        app.router.add_get("/customers/{id}", self._wrap(self._get_customer))
        app.router.add_put("/customers/{id}", self._wrap(self._update_customer))
        app.router.add_post("/billing_requests", self._wrap(self._create_billing_request))
        app.router.add_get("/billing_requests/{id}", self._wrap(self._get_billing_request))
        app.router.add_post("/billing_request_flows", self._wrap(self._create_flow))

    def _wrap(self, handler: Callable[[web.Request], web.Response]) -> Handler:
        async def wrapped(request: web.Request) -> web.Response:
            try:
                return handler(request)
            except GoCardlessApiError as err:
                return self.error_response(
                    err.status, gocardless_error_body(err.status, err.type, err.message, err.errors)
                )

        return wrapped

    # ------------------------------------------------------------------ hooks

    def default_error_body(self, status: int) -> Any:
        if status == 401:
            return gocardless_error_body(
                401,
                "invalid_api_usage",
                "Access token not found",
                [{"reason": "access_token_not_found", "message": "Access token not found"}],
            )
        if status == 403:
            return gocardless_error_body(
                403,
                "invalid_api_usage",
                "Access token not active",
                [{"reason": "access_token_not_active", "message": "Access token not active"}],
            )
        if status == 404:
            return gocardless_error_body(
                404,
                "invalid_api_usage",
                "Resource not found",
                [{"reason": "resource_not_found", "message": "Resource not found"}],
            )
        if status == 409:
            return gocardless_error_body(
                409,
                "invalid_state",
                "A request with this idempotency key is already in progress",
                [{"reason": "idempotent_request_in_progress", "message": "Request is already in progress"}],
            )
        if status == 422:
            return gocardless_error_body(
                422, "validation_failed", "Validation failed", [validation_error("email", "is invalid", "customers")]
            )
        if status == 429:
            return gocardless_error_body(
                429,
                "invalid_api_usage",
                "Rate limit exceeded",
                [{"reason": "rate_limit_exceeded", "message": "Rate limit exceeded"}],
            )
        if status >= 500:
            return gocardless_error_body(
                status,
                "gocardless",
                "Uh-oh! Something went wrong. We've been notified and will look into it.",
                [{"reason": "internal_server_error", "message": "Internal server error"}],
            )
        return gocardless_error_body(
            status,
            "invalid_api_usage",
            "Invalid document structure",
            [{"reason": "invalid_document_structure", "message": "Invalid document structure"}],
        )

    def rate_limited_response(self, request: web.Request, retry_after: int) -> web.Response:
        assert self._bucket is not None
        reset = formatdate(time.time() + retry_after, usegmt=True)
        return self.error_response(
            429,
            self.default_error_body(429),
            {
                "Retry-After": str(retry_after),
                "RateLimit-Limit": str(self._bucket.burst),
                "RateLimit-Remaining": "0",
                "RateLimit-Reset": reset,
            },
        )

    def idempotency_repeat_response(
        self, request: web.Request, key: str, entry: IdempotencyEntry, same_request: bool
    ) -> tuple[web.Response, str]:
        """GoCardless answers any reuse of a key that already created something with 409 and the resource's id."""
        message = "A resource has already been created with this idempotency key"
        body = gocardless_error_body(
            409,
            "invalid_state",
            message,
            [
                {
                    "reason": "idempotent_creation_conflict",
                    "message": message,
                    "links": {"conflicting_resource_id": entry.resource_id},
                }
            ],
        )
        return self.error_response(409, body), "idempotency_conflict"

    def idempotency_in_progress_response(self, request: web.Request, key: str) -> web.Response:
        return self.error_response(409, self.default_error_body(409))

    def stores_response(self, status: int, resource_id: str | None) -> bool:
        """GoCardless guarantees one resource per key: once a create made its resource, the key is bound to it (a
        repeat gets the 409 naming it) even if the answer was an error; a request that made nothing can be retried."""
        return 200 <= status < 300 or resource_id is not None

    def response_headers(self, request: web.Request) -> dict[str, str]:
        return {"x-request-id": gc_id("", 16)}

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _envelope(request: web.Request, name: str) -> dict[str, Any]:
        body = FakeServer.body_of(request)
        params = body.get(name) if isinstance(body, dict) else None
        if not isinstance(params, dict):
            raise GoCardlessApiError(
                400,
                "invalid_api_usage",
                "Invalid document structure",
                [{"reason": "invalid_document_structure", "message": f"Expected a '{name}' object"}],
            )
        return params

    def _validate_customer(self, params: dict[str, Any], *, creating: bool) -> None:
        errors: list[dict[str, Any]] = []
        for name in params:
            if name not in CUSTOMER_FIELDS and name != "metadata":
                errors.append(validation_error(name, "is not a permitted parameter", "customers"))
        email = params.get("email")
        if email is not None and (not isinstance(email, str) or "@" not in email or email in self.invalid_emails):
            errors.append(validation_error("email", "is invalid", "customers"))
        if creating and not params.get("company_name") and not (params.get("given_name") and params.get("family_name")):
            for name in ("given_name", "family_name"):
                if not params.get(name):
                    errors.append(validation_error(name, "must be provided if company_name is blank", "customers"))
        metadata = params.get("metadata")
        if metadata is not None:
            if not isinstance(metadata, dict) or len(metadata) > 3:
                errors.append(validation_error("metadata", "has too many keys (maximum 3)", "customers"))
            else:
                for key, value in metadata.items():
                    if len(key) > 50 or not isinstance(value, str) or len(value) > 500:
                        errors.append(validation_error(f"metadata.{key}", "is too long", "customers"))
        if errors:
            raise GoCardlessApiError(422, "validation_failed", "Validation failed", errors)

    def _customer_or_404(self, customer_id: str) -> dict[str, Any]:
        customer = self.customers.get(customer_id)
        if customer is None:
            raise GoCardlessApiError(
                404,
                "invalid_api_usage",
                "Resource not found",
                [{"reason": "resource_not_found", "message": "Resource not found"}],
            )
        return customer

    def _new_customer(self, params: dict[str, Any]) -> dict[str, Any]:
        customer: dict[str, Any] = {name: params.get(name) for name in CUSTOMER_FIELDS}
        customer.update(
            id=gc_id("CU"),
            created_at=_now(),
            language=params.get("language") or "en",
            metadata=dict(params.get("metadata") or {}),
        )
        with self._lock:
            self.customers[customer["id"]] = customer
        return customer

    # ------------------------------------------------------------------ customers

    def _create_customer(self, request: web.Request) -> web.Response:
        params = self._envelope(request, "customers")
        self._validate_customer(params, creating=True)
        customer = self._new_customer(params)
        request[RESOURCE_ID_KEY] = customer["id"]
        return self.json_response({"customers": customer}, status=201)

    def _list_customers(self, request: web.Request) -> web.Response:
        limit = int(request.query.get("limit") or 50)
        with self._lock:
            found = list(self.customers.values())[:limit]
        return self.json_response(
            {"customers": found, "meta": {"cursors": {"before": None, "after": None}, "limit": limit}}
        )

    def _get_customer(self, request: web.Request) -> web.Response:
        return self.json_response({"customers": self._customer_or_404(request.match_info["id"])})

    def _update_customer(self, request: web.Request) -> web.Response:
        customer = self._customer_or_404(request.match_info["id"])
        params = self._envelope(request, "customers")
        self._validate_customer(params, creating=False)
        updated = dict(customer)
        for name, value in params.items():
            updated[name] = dict(value or {}) if name == "metadata" else value
        with self._lock:
            self.customers[customer["id"]] = updated
        return self.json_response({"customers": updated})

    # ------------------------------------------------------------------ billing requests

    def _create_billing_request(self, request: web.Request) -> web.Response:
        params = self._envelope(request, "billing_requests")
        mandate_request = params.get("mandate_request")
        payment_request = params.get("payment_request")
        if not mandate_request and not payment_request:
            raise GoCardlessApiError(
                422,
                "validation_failed",
                "Validation failed",
                [
                    validation_error(
                        "mandate_request", "must be provided if payment_request is blank", "billing_requests"
                    )
                ],
            )
        links = params.get("links") or {}
        customer_id = links.get("customer") if isinstance(links, dict) else None
        if customer_id:
            if customer_id not in self.customers:
                raise GoCardlessApiError(
                    400,
                    "invalid_api_usage",
                    "Linked resource not found",
                    [
                        {
                            "reason": "linked_resource_not_found",
                            "message": "Linked resource not found",
                            "links": {"customer": customer_id},
                        }
                    ],
                )
        else:
            customer_id = self._new_customer({})["id"]
        br_id = gc_id("BRQ", 10)
        mandate: dict[str, Any] | None = None
        if isinstance(mandate_request, dict):
            mandate = {
                "currency": mandate_request.get("currency"),
                "scheme": mandate_request.get("scheme"),
                "verify": mandate_request.get("verify") or "recommended",
                "metadata": mandate_request.get("metadata"),
                "links": {},
            }
        billing_request: dict[str, Any] = {
            "id": br_id,
            "created_at": _now(),
            "status": "pending",
            "mandate_request": mandate,
            "payment_request": payment_request if isinstance(payment_request, dict) else None,
            "metadata": params.get("metadata") or {},
            "fallback_enabled": bool(params.get("fallback_enabled", False)),
            "links": {
                "customer": customer_id,
                "customer_billing_detail": gc_id("CBD", 10),
                "creditor": self.creditor_id,
                "organisation": "OR000FAKE00001",
                "mandate_request": gc_id("MRQ", 10) if mandate is not None else None,
                "payment_request": gc_id("PRQ", 10) if payment_request else None,
            },
            "actions": [
                {"type": "collect_customer_details", "required": True, "completes_actions": [], "status": "pending"},
                {"type": "collect_bank_account", "required": True, "completes_actions": [], "status": "pending"},
            ],
        }
        with self._lock:
            self.billing_requests[br_id] = billing_request
        request[RESOURCE_ID_KEY] = br_id
        return self.json_response({"billing_requests": billing_request}, status=201)

    def _get_billing_request(self, request: web.Request) -> web.Response:
        billing_request = self.billing_requests.get(request.match_info["id"])
        if billing_request is None:
            raise GoCardlessApiError(
                404,
                "invalid_api_usage",
                "Resource not found",
                [{"reason": "resource_not_found", "message": "Resource not found"}],
            )
        return self.json_response({"billing_requests": billing_request})

    def _create_flow(self, request: web.Request) -> web.Response:
        params = self._envelope(request, "billing_request_flows")
        links = params.get("links") or {}
        br_id = links.get("billing_request") if isinstance(links, dict) else None
        if not br_id:
            raise GoCardlessApiError(
                422,
                "validation_failed",
                "Validation failed",
                [validation_error("links.billing_request", "can't be blank", "billing_request_flows")],
            )
        if br_id not in self.billing_requests:
            raise GoCardlessApiError(
                400,
                "invalid_api_usage",
                "Linked resource not found",
                [
                    {
                        "reason": "linked_resource_not_found",
                        "message": "Linked resource not found",
                        "links": {"billing_request": br_id},
                    }
                ],
            )
        flow_id = gc_id("BRF", 10)
        created = datetime.now(UTC)
        flow: dict[str, Any] = {
            "id": flow_id,
            "authorisation_url": f"{self.authorisation_base_url}?id={flow_id}",
            "auto_fulfil": True,
            "created_at": _now(),
            "expires_at": (created + timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "exit_uri": params.get("exit_uri"),
            "redirect_uri": params.get("redirect_uri"),
            "language": params.get("language"),
            "lock_bank_account": bool(params.get("lock_bank_account", False)),
            "lock_currency": bool(params.get("lock_currency", False)),
            "lock_customer_details": bool(params.get("lock_customer_details", False)),
            "show_redirect_buttons": bool(params.get("show_redirect_buttons", False)),
            "show_success_redirect_button": bool(params.get("show_success_redirect_button", False)),
            "skip_success_screen": bool(params.get("skip_success_screen", False)),
            "session_token": params.get("session_token"),
            "prefilled_customer": params.get("prefilled_customer"),
            "prefilled_bank_account": params.get("prefilled_bank_account"),
            "links": {"billing_request": br_id},
        }
        with self._lock:
            self.billing_request_flows[flow_id] = flow
        request[RESOURCE_ID_KEY] = flow_id
        return self.json_response({"billing_request_flows": flow}, status=201)

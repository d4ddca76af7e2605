"""What the job runner and the inline path need from a payment provider, and the one error type they handle.

An adapter wraps one connection (one organization's account at one provider) on the provider's official SDK. It
turns every SDK failure into a `ProviderError` whose fields are safe to store, log and publish: a stable
`error_code`, a `message` composed here from codes and parameter names (never the provider's free text, which can
quote the request: Stripe answers "Invalid email address: <the address>", and its 401 repeats part of the key), the
HTTP status, and whether a retry may succeed.

Retryable (SPEC §9, settled 2026-12-06: they say nothing about the customer, so the job waits for as long as it
takes): network errors and timeouts, 429, 5xx (an unreadable answer such as a proxy's HTML page included), 401 and
403 (`credentials`: the connection is paused on every replica until a test call succeeds), a connection that
cannot work as configured, Stripe 409 `idempotency_key_in_use` and Adyen 422 `704` (the same idempotency key is
still being processed), GoCardless 409 `idempotent_request_in_progress`. Any other 4xx is an answer about the
customer's own data, and final.

Dead ends (`dead_end`): the key can never bring an answer any more. Stripe refuses a key reused with other parameters
(400 `idempotency_error`) and replays a stored 5xx for ever (`Stripe-Should-Retry: false`). A create job that meets
one looks the customer up (`find_customer`) before it creates under a new, derived key.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final, Literal, Protocol

from worker.contract.connections import ProviderName
from worker.domain.customer import CustomerState

#: ``success``; ``retryable_error`` (network, 429, 5xx: will be retried); ``permanent_error`` (other 4xx, or attempts
#: exhausted); ``timeout`` (the inline budget ran out, the call goes on as a background job).
ProviderCallOutcome = Literal["success", "retryable_error", "permanent_error", "timeout"]


DEFAULT_TIMEOUT: Final = 10.0
"""Seconds an SDK waits for one HTTP answer before the call counts as a (retryable) timeout."""

MAX_RETRY_AFTER: Final = 3600.0
"""A `Retry-After` beyond an hour is read as an hour: a job is never parked for days by one header."""

# Stable codes for failures that mean the same thing at every provider; provider codes are used for the rest.
NETWORK_ERROR: Final = "network_error"
TIMEOUT: Final = "timeout"
RATE_LIMITED: Final = "rate_limited"
SERVER_ERROR: Final = "server_error"
UNAUTHORIZED: Final = "unauthorized"
FORBIDDEN: Final = "forbidden"
IDEMPOTENCY_IN_PROGRESS: Final = "idempotency_key_in_use"
INVALID_REQUEST: Final = "invalid_request"
CONFIGURATION_ERROR: Final = "configuration_error"
UNEXPECTED_RESPONSE: Final = "unexpected_response"

_CANNED: Final[Mapping[str, str]] = {
    NETWORK_ERROR: "network error talking to the provider",
    TIMEOUT: "the provider did not answer in time",
    RATE_LIMITED: "rate limited by the provider",
    SERVER_ERROR: "the provider failed to process the request",
    UNAUTHORIZED: "the provider refused the connection's credentials",
    FORBIDDEN: "the connection's credentials lack a permission",
    IDEMPOTENCY_IN_PROGRESS: "a request with the same idempotency key is still in progress",
    UNEXPECTED_RESPONSE: "the provider sent an answer the SDK could not read",
}

# What may appear in a message or an error code: codes, parameter paths, numbers. Anything else (an e-mail's `@`,
# quotes around echoed values, ...) is dropped, so a provider detail can never smuggle request data through.
_CODE_UNSAFE: Final = re.compile(r"[^a-z0-9_.]+")
_DETAIL_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_.\[\]-]+")
_MAX_DETAIL: Final = 60
_MAX_DETAILS: Final = 8


class ProviderError(Exception):
    """A provider call failed. Every field is safe to log, store and publish (see the module docstring)."""

    def __init__(
        self,
        provider: ProviderName,
        error_code: str,
        message: str,
        *,
        http_status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        dead_end: bool = False,
    ) -> None:
        super().__init__(f"{provider} {error_code}")
        self.dead_end = dead_end
        self.provider: ProviderName = provider
        self.error_code = error_code
        self.message = message
        self.http_status = http_status
        self.retryable = retryable
        self.retry_after = retry_after

    @property
    def credentials(self) -> bool:
        """The provider refused the connection's credentials (401) or their permissions (403)."""
        return self.http_status in (401, 403)

    def as_event(self) -> dict[str, Any]:
        """The `provider_error` object of a `customer.payment_provider_error` event (SPEC §6)."""
        return {
            "provider": self.provider,
            "error_code": self.error_code,
            "message": self.message,
            "http_status": self.http_status,
        }

    def as_record(self) -> dict[str, Any]:
        """What `provider_jobs.last_error` keeps."""
        return {**self.as_event(), "retryable": self.retryable, "retry_after": self.retry_after}

    def __repr__(self) -> str:
        return (
            f"ProviderError(provider={self.provider!r}, error_code={self.error_code!r}, "
            f"http_status={self.http_status!r}, retryable={self.retryable!r})"
        )


class ProviderAdapter(Protocol):
    """One connection at one provider. Keys come from `worker.providers.idempotency`; the same key on a retry makes the
    provider answer with what the first call did instead of doing it twice."""

    @property
    def provider(self) -> ProviderName: ...

    @property
    def checkout_with_create(self) -> bool:
        """True when `create_customer` already made the checkout link (Adyen): `checkout_url` with the create's key
        then returns that link without a second one."""
        ...

    async def create_customer(self, customer: CustomerState, key: str) -> str:
        """Create the customer at the provider; returns the provider customer id."""
        ...

    async def update_customer(self, customer: CustomerState, provider_customer_id: str, key: str) -> None:
        """Push the customer's current name, e-mail, address and phone."""
        ...

    async def find_customer(self, customer: CustomerState) -> str | None:
        """The provider customer made for `customer` by an earlier call, if the provider can tell (Stripe: search on
        `metadata['lago_customer_id']`); None when there is none or no way to look."""
        ...

    async def checkout_url(self, customer: CustomerState, provider_customer_id: str, key: str) -> str:
        """Make a checkout / payment-method setup link; returns its URL."""
        ...

    async def check_credentials(self) -> None:
        """A cheap read call that tests the connection's credentials; raises ProviderError. Any answer other than
        401/403 (even a 404) shows that they were accepted."""
        ...

    async def aclose(self) -> None: ...


# ---------------------------------------------------------------------------------------------------- helpers


def safe_code(value: object, default: str) -> str:
    """A provider's error code as a stable identifier (`email_invalid`, `704`); `default` when it has none."""
    if not isinstance(value, str | int) or isinstance(value, bool):
        return default
    code = _CODE_UNSAFE.sub("_", str(value).strip().lower()).strip("_")[:_MAX_DETAIL]
    return code or default


def compose_message(error_code: str, http_status: int | None, details: Iterable[object] = ()) -> str:
    """A message from our own words plus identifiers only (parameter names, provider codes, HTTP status)."""
    base = _CANNED.get(error_code) or (f"the provider rejected the request ({error_code})")
    cleaned: list[str] = []
    for detail in details:
        if not isinstance(detail, str):
            continue
        text = _DETAIL_UNSAFE.sub("", detail)[:_MAX_DETAIL]
        if text and text not in cleaned:
            cleaned.append(text)
        if len(cleaned) >= _MAX_DETAILS:
            break
    if cleaned:
        base += f"; fields: {', '.join(cleaned)}"
    if http_status is not None:
        base += f" (HTTP {http_status})"
    return base


def header(headers: object, name: str) -> str | None:
    """A header from whatever mapping an SDK kept (requests, httpx, aiohttp, a dict), case-insensitively."""
    if not isinstance(headers, Mapping):
        return None
    try:
        value = headers.get(name)
    except (TypeError, KeyError):
        value = None
    if value is None:
        wanted = name.lower()
        for key, item in headers.items():
            if isinstance(key, str) and key.lower() == wanted:
                value = item
                break
    return value if isinstance(value, str) else None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """`Retry-After` in seconds: a number of seconds, or an HTTP date; None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        current = time.time() if now is None else now
        seconds = when.timestamp() - current
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def status_error(
    provider: ProviderName,
    http_status: int | None,
    *,
    provider_code: object = None,
    details: Iterable[object] = (),
    retry_after: float | None = None,
    in_progress: bool = False,
) -> ProviderError:
    """The error for an HTTP answer, classified by status (SPEC §9): 401, 403, 429 and 5xx retryable, other 4xx
    final."""
    if in_progress:
        code, retryable = IDEMPOTENCY_IN_PROGRESS, True
    elif http_status == 401:
        code, retryable = UNAUTHORIZED, True
    elif http_status == 429:
        code, retryable = RATE_LIMITED, True
    elif http_status is not None and http_status >= 500:
        code, retryable = SERVER_ERROR, True
    elif http_status == 403:
        code, retryable = safe_code(provider_code, FORBIDDEN), True
    elif http_status is None:
        code, retryable = UNEXPECTED_RESPONSE, True
    else:
        code, retryable = safe_code(provider_code, INVALID_REQUEST), False
    return ProviderError(
        provider,
        code,
        compose_message(code, http_status, details),
        http_status=http_status,
        retryable=retryable,
        retry_after=retry_after if retryable else None,
    )


def network_error(provider: ProviderName, *, timed_out: bool) -> ProviderError:
    code = TIMEOUT if timed_out else NETWORK_ERROR
    return ProviderError(provider, code, compose_message(code, None), retryable=True)


def configuration_error(provider: ProviderName, what: str) -> ProviderError:
    """A connection that cannot work as configured (e.g. Adyen without `merchant_account`): nothing about the
    customer, so the job waits (visibly) until an operator fixes PROVIDERS_FILE and restarts the worker."""
    return ProviderError(provider, CONFIGURATION_ERROR, f"the connection is misconfigured: {what}", retryable=True)


def response_error(provider: ProviderName) -> ProviderError:
    """A 2xx answer without what it must carry (an id, a URL)."""
    return ProviderError(provider, UNEXPECTED_RESPONSE, compose_message(UNEXPECTED_RESPONSE, None), retryable=True)


def base_url(value: object) -> str | None:
    """`api_base` of a connection as a string without a trailing slash (SDKs append `/v1/...` themselves)."""
    if value is None:
        return None
    text = str(value).rstrip("/")
    return text or None


def full_name(customer: CustomerState) -> str | None:
    """`name`, or `firstname lastname` when there is no name (SPEC §9)."""
    if customer.name:
        return customer.name
    joined = " ".join(part for part in (customer.firstname, customer.lastname) if part)
    return joined or None


def utc_now() -> datetime:
    return datetime.now(UTC)

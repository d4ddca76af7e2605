"""Lago's error codes (SPEC §3, §8, §11), and every reason the worker gives for a record or an event it could not
settle the normal way: dead letters (SPEC §7), parked events and dropped records (SPEC §12).

They are wire values (headers, table columns, metric labels): producers and alerts match on them, so they never
change spelling.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal


class ErrorCode(StrEnum):
    VALUE_IS_MANDATORY = "value_is_mandatory"
    VALUE_IS_INVALID = "value_is_invalid"
    VALUE_IS_TOO_LONG = "value_is_too_long"
    VALUE_IS_OUT_OF_RANGE = "value_is_out_of_range"
    VALUE_ALREADY_EXIST = "value_already_exist"
    INVALID_VALUE = "invalid_value"
    INVALID_COUNT = "invalid_count"
    INVALID_EMAIL_FORMAT = "invalid_email_format"
    INVALID_TIMEZONE = "invalid_timezone"
    NOT_A_VALID_COUNTRY_CODE = "not_a_valid_country_code"
    NOT_A_VALID_LANGUAGE_CODE = "not_a_valid_language_code"
    PAYMENT_PROVIDER_NOT_FOUND = "payment_provider_not_found"
    PAYMENT_PROVIDER_CODE_MISSING = "payment_provider_code_missing"
    INVALID_SIGNATURE = "invalid_signature"
    # Under `base` when a rejection reached `rules.MAX_ERROR_PATHS` and more errors were left out (SPEC §12).
    ERRORS_OMITTED = "errors_omitted"


class DlqReason(StrEnum):
    INVALID_JSON = "invalid_json"
    INVALID_ENVELOPE = "invalid_envelope"
    TOO_LARGE = "too_large"
    PROCESSING_ERROR = "processing_error"
    UNREADABLE_RECORD = "unreadable_record"


class RefusalReason(StrEnum):
    """Why the broker refused a record for good: the reason an event is parked (`parked_events.reason`), and why a
    dead letter went out as a headers-only stub."""

    TOO_LARGE = "too_large"
    INVALID_RECORD = "invalid_record"


class DropReason(StrEnum):
    """Why a record was settled with neither an event nor a dead letter (`customer_worker_records_skipped_total`)."""

    DEAD_LETTER_REFUSED = "dead_letter_refused"
    """Even the dead letter's headers-only stub was refused by the broker."""


ProviderCallOutcome = Literal["success", "retryable_error", "permanent_error", "timeout"]
"""How a payment provider call ended (the `outcome` label of `customer_worker_provider_calls_total`): `success`;
`retryable_error` (network, 429, 5xx: will be retried); `permanent_error` (other 4xx, or attempts exhausted);
`timeout` (the inline budget ran out, the call goes on as a background job)."""


BASE = "base"
"""Error path of command-wide problems."""

Errors = dict[str, list[str]]
"""`{path: [codes]}` as carried by `customer.rejected`."""

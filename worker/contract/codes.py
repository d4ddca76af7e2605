"""Lago's error codes (SPEC §3, §8, §11) and the dead-letter reasons (SPEC §7).

They are wire values: producers match on them, so they never change spelling.
"""

from __future__ import annotations

from enum import StrEnum


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


BASE = "base"
"""Error path of command-wide problems."""

Errors = dict[str, list[str]]
"""`{path: [codes]}` as carried by `customer.rejected`."""

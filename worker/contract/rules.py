"""Turning pydantic's errors into Lago's `{path: [codes]}`, plus the rules that span several fields."""

from __future__ import annotations

from typing import Any, Final

from pydantic import ValidationError

from worker.contract.codes import ErrorCode, Errors
from worker.contract.datasets import STRIPE_PAYMENT_METHODS

_CUSTOM_CODES: Final = frozenset(code.value for code in ErrorCode)
_BUILTIN_CODES: Final = {
    "missing": ErrorCode.VALUE_IS_MANDATORY.value,
    "string_too_long": ErrorCode.VALUE_IS_TOO_LONG.value,
    # The only list with a length bound is `metadata`.
    "too_long": ErrorCode.INVALID_COUNT.value,
    "greater_than_equal": ErrorCode.VALUE_IS_OUT_OF_RANGE.value,
    "less_than_equal": ErrorCode.VALUE_IS_OUT_OF_RANGE.value,
}
_PAYMENT_METHODS_PATH: Final = "billing_configuration.provider_payment_methods"


def add_error(errors: Errors, path: str, code: str) -> None:
    codes = errors.setdefault(path, [])
    if code not in codes:
        codes.append(code)


def pydantic_errors(exc: ValidationError, errors: Errors) -> None:
    """Every other pydantic error type is a wrong JSON type or shape: `value_is_invalid` (SPEC §3)."""
    for error in exc.errors(include_url=False, include_context=False, include_input=False):
        kind = error["type"]
        code = kind if kind in _CUSTOM_CODES else _BUILTIN_CODES.get(kind, ErrorCode.VALUE_IS_INVALID.value)
        add_error(errors, ".".join(str(part) for part in error["loc"]), code)


def cross_field_errors(customer: dict[str, Any], errors: Errors) -> None:
    """Rules a single field validator cannot see. Read from the raw body so they are reported even when other
    fields fail; wrong types are left to pydantic, which has already reported them."""
    _metadata_keys_unique(customer.get("metadata"), errors)
    billing = customer.get("billing_configuration")
    # Stripe only: checked unless the command itself names another provider (or none).
    if (
        isinstance(billing, dict)
        and "provider_payment_methods" in billing
        and billing.get("payment_provider", "stripe") == "stripe"
    ):
        _stripe_payment_methods(billing["provider_payment_methods"], errors)


def _metadata_keys_unique(metadata: Any, errors: Errors) -> None:
    if not isinstance(metadata, list):
        return
    seen: set[str] = set()
    for index, item in enumerate(metadata):
        key = item.get("key") if isinstance(item, dict) else None
        if not isinstance(key, str) or not key.strip():
            continue
        if key in seen:
            add_error(errors, f"metadata.{index}.key", ErrorCode.VALUE_ALREADY_EXIST.value)
        seen.add(key)


def _stripe_payment_methods(methods: Any, errors: Errors) -> None:
    if methods is None or methods == []:
        add_error(errors, _PAYMENT_METHODS_PATH, ErrorCode.VALUE_IS_MANDATORY.value)
        return
    if not isinstance(methods, list) or not all(isinstance(method, str) for method in methods):
        return
    chosen = set(methods)
    if (
        not chosen <= STRIPE_PAYMENT_METHODS
        or ("link" in chosen and "card" not in chosen)
        or ("customer_balance" in chosen and len(chosen) > 1)
    ):
        add_error(errors, _PAYMENT_METHODS_PATH, ErrorCode.VALUE_IS_INVALID.value)

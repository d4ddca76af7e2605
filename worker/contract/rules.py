"""Turning pydantic's errors into Lago's `{path: [codes]}`, plus the rules that span several fields."""

from __future__ import annotations

from typing import Any, Final

from pydantic import ValidationError

from worker.contract.codes import BASE, ErrorCode, Errors
from worker.contract.customer import MAX_PAYMENT_METHODS, MAX_TAX_CODES, METADATA_FIELDS, PG_INT_MAX
from worker.contract.datasets import STRIPE_PAYMENT_METHODS

MAX_METADATA_ITEMS: Final = 5
MAX_ERROR_PATHS: Final = 50
"""A rejection reports at most this many paths besides `base`; past it, `base` gets `errors_omitted`."""

_CUSTOM_CODES: Final = frozenset(code.value for code in ErrorCode)
_BUILTIN_CODES: Final = {
    "missing": ErrorCode.VALUE_IS_MANDATORY.value,
    "string_too_long": ErrorCode.VALUE_IS_TOO_LONG.value,
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
    for error in exc.errors(include_url=False, include_context=False):
        kind = error["type"]
        loc = error["loc"]
        value = error.get("input")
        code = kind if kind in _CUSTOM_CODES else _BUILTIN_CODES.get(kind, ErrorCode.VALUE_IS_INVALID.value)
        if kind == "literal_error" and isinstance(value, str):
            code = _ONE_OF_CODES.get(str(loc[-1]), ErrorCode.VALUE_IS_INVALID.value)
        elif kind in _INTEGER_TYPES and _is_huge_integer(value):
            code = ErrorCode.VALUE_IS_OUT_OF_RANGE.value
        elif _is_required_text(loc) and (value is None or kind == "string_pattern_mismatch"):
            code = ErrorCode.VALUE_IS_MANDATORY.value
        add_error(errors, ".".join(str(part) for part in loc), code)


# A value outside a closed set (a `literal_error` on a string) is reported with the field's own code.
_ONE_OF_CODES: Final = {
    "finalize_zero_amount_invoice": ErrorCode.INVALID_VALUE.value,
    "timezone": ErrorCode.INVALID_TIMEZONE.value,
    "document_locale": ErrorCode.NOT_A_VALID_LANGUAGE_CODE.value,
}


def _is_required_text(loc: tuple[int | str, ...]) -> bool:
    """`external_id` and metadata keys and values: null or blank is `value_is_mandatory`, not a wrong type."""
    return loc == ("external_id",) or (len(loc) == 3 and loc[0] == "metadata" and loc[2] in ("key", "value"))


_INTEGER_TYPES: Final = frozenset({"int_type", "int_from_float"})


def _is_huge_integer(value: Any) -> bool:
    # The JSON parser reads integers beyond 64 bits as floats: they are integers out of range, not a wrong type.
    return isinstance(value, float) and value.is_integer() and abs(value) > PG_INT_MAX


def cross_field_errors(customer: dict[str, Any], errors: Errors) -> int:
    """Rules a single field validator cannot see. Read from the raw body so they are reported even when other
    fields fail; wrong types are left to pydantic, which has already reported them.

    Returns the unknown fields of metadata items, counted in the same pass over them."""
    unknown = _metadata(customer.get("metadata"), errors)
    billing = customer.get("billing_configuration")
    # Stripe only: checked unless the command itself names another provider (or none).
    if (
        isinstance(billing, dict)
        and "provider_payment_methods" in billing
        and billing.get("payment_provider", "stripe") == "stripe"
    ):
        _stripe_payment_methods(billing["provider_payment_methods"], errors)
    return unknown


def _metadata(metadata: Any, errors: Errors) -> int:
    if not isinstance(metadata, list):
        return 0
    if _plain_metadata(metadata):
        return 0
    if len(metadata) > MAX_METADATA_ITEMS:
        add_error(errors, "metadata", ErrorCode.INVALID_COUNT.value)
    unknown = 0
    seen: set[str] = set()
    for index, item in enumerate(metadata):
        if not isinstance(item, dict):
            continue
        if not item.keys() <= METADATA_FIELDS:
            unknown += len(item.keys() - METADATA_FIELDS)
        key = item.get("key")
        if not isinstance(key, str) or not key.strip():
            continue  # a missing, blank or mistyped key is reported by pydantic
        if key in seen:
            add_error(errors, f"metadata.{index}.key", ErrorCode.VALUE_ALREADY_EXIST.value)
        seen.add(key)
    return unknown


def _plain_metadata(metadata: list[Any]) -> bool:
    """The usual case, checked cheaply: at most 5 items, each a dict of known fields with a distinct string key."""
    if len(metadata) > MAX_METADATA_ITEMS:
        return False
    try:
        keys = {item["key"] for item in metadata if item.keys() <= METADATA_FIELDS and item["key"].strip()}
    except (AttributeError, KeyError, TypeError):  # an item that is not a dict, a key that is absent or no string
        return False
    return len(keys) == len(metadata)


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


def bound_lists(customer: dict[str, Any], errors: Errors) -> dict[str, Any]:
    """Lists longer than their bound get the list's error, and only their first items are checked further: the
    work and the number of errors stay bounded whatever the list's length. Returns `customer` itself when every
    list is within bounds (the usual case), else a shallow copy with the long lists cut."""
    tax_codes = customer.get("tax_codes")
    metadata = customer.get("metadata")
    billing = customer.get("billing_configuration")
    methods = billing.get("provider_payment_methods") if type(billing) is dict else None
    if (
        (type(tax_codes) is not list or len(tax_codes) <= MAX_TAX_CODES)
        and (type(metadata) is not list or len(metadata) <= MAX_METADATA_ITEMS)
        and (type(methods) is not list or len(methods) <= MAX_PAYMENT_METHODS)
    ):
        return customer  # the usual case, settled without a loop or a call
    return _cut_lists(customer, errors)


def _cut_lists(customer: dict[str, Any], errors: Errors) -> dict[str, Any]:
    cut: dict[str, Any] = {}
    for name, bound, code in (
        ("tax_codes", MAX_TAX_CODES, ErrorCode.INVALID_COUNT),
        ("metadata", MAX_METADATA_ITEMS, ErrorCode.INVALID_COUNT),
    ):
        items = customer.get(name)
        if isinstance(items, list) and len(items) > bound:
            add_error(errors, name, code.value)
            cut[name] = items[:bound]
    billing = customer.get("billing_configuration")
    if isinstance(billing, dict):
        methods = billing.get("provider_payment_methods")
        if isinstance(methods, list) and len(methods) > MAX_PAYMENT_METHODS:
            add_error(errors, _PAYMENT_METHODS_PATH, ErrorCode.VALUE_IS_INVALID.value)
            cut["billing_configuration"] = {**billing, "provider_payment_methods": methods[:MAX_PAYMENT_METHODS]}
    return {**customer, **cut} if cut else customer


def capped(errors: Errors) -> Errors:
    """At most `MAX_ERROR_PATHS` paths besides `base`, the first ones found; `base: errors_omitted` says more were
    left out, so that a rejection event stays small whatever the command."""
    others = [path for path in errors if path != BASE]
    if len(others) <= MAX_ERROR_PATHS:
        return errors
    kept = {path: errors[path] for path in others[:MAX_ERROR_PATHS]}
    kept[BASE] = [*errors.get(BASE, ()), ErrorCode.ERRORS_OMITTED.value]
    return kept

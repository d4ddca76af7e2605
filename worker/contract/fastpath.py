"""A fast path for the common case: a well-formed command with no error and no unknown field.

msgspec parses and type-checks the whole value in one pass in C (strict JSON types, lengths, ranges, closed sets),
then the few rules that need Python run on the result, with the very functions the full validation uses. Anything
unusual (a NUL, an unknown field, any error, an invalid signature) makes the fast path give up, and `decode` runs the
full pydantic validation, which is the reference: it collects every error with its Lago code. The fast path only ever
accepts what the full validation accepts, with the same result; a property test holds it to that.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType
from pydantic_core import PydanticCustomError

from worker.contract.customer import PG_INT_MAX, CustomerInput, _blank_country, _email
from worker.contract.datasets import (
    CURRENCY_CODES,
    CUSTOMER_TYPES,
    FINALIZE_ZERO_AMOUNT_INVOICE,
    LANGUAGE_CODES,
    PAYMENT_PROVIDERS,
    TIMEZONES,
)
from worker.contract.rules import MAX_METADATA_ITEMS, cross_field_errors

NonBlank = Annotated[str, Meta(pattern=r"\S")]
NonNegative = Annotated[int, Meta(ge=0, le=PG_INT_MAX)]
Identifier = Annotated[str, Meta(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f-\x9f]*$")]

# Closed sets as Literal types built from the same datasets as the full validation (checked in C by msgspec).
if TYPE_CHECKING:
    Currency = str
    Timezone = str
    CustomerType = str
    Finalize = str
    Language = str
    Provider = str
else:
    Currency = Literal[tuple(sorted(CURRENCY_CODES))]
    Timezone = Literal[tuple(sorted(TIMEZONES))]
    CustomerType = Literal[tuple(sorted(CUSTOMER_TYPES))]
    Finalize = Literal[tuple(sorted(FINALIZE_ZERO_AMOUNT_INVOICE))]
    Language = Literal[tuple(sorted(LANGUAGE_CODES))]
    Provider = Literal[PAYMENT_PROVIDERS]

Text = str | None | UnsetType


class _Strict(Struct, forbid_unknown_fields=True, omit_defaults=True):
    pass


class _Address(_Strict):
    address_line1: Text = UNSET
    address_line2: Text = UNSET
    city: Text = UNSET
    zipcode: Text = UNSET
    state: Text = UNSET
    country: Text = UNSET


class _Metadata(_Strict):
    key: Annotated[NonBlank, Meta(max_length=20)]
    value: Annotated[NonBlank, Meta(max_length=100)]
    display_in_invoice: bool | UnsetType | None = UNSET


class _Billing(_Strict):
    invoice_grace_period: NonNegative | UnsetType | None = UNSET
    document_locale: Language | UnsetType | None = UNSET
    payment_provider: Provider | UnsetType | None = UNSET
    payment_provider_code: Text = UNSET
    provider_customer_id: Text = UNSET
    sync: bool | UnsetType | None = UNSET
    sync_with_provider: bool | UnsetType | None = UNSET
    provider_payment_methods: list[str] | UnsetType | None = UNSET


class _Customer(_Address):
    external_id: NonBlank | UnsetType = UNSET
    name: Annotated[str, Meta(max_length=255)] | UnsetType | None = UNSET
    firstname: Text = UNSET
    lastname: Text = UNSET
    legal_name: Text = UNSET
    legal_number: Text = UNSET
    tax_identification_number: Text = UNSET
    phone: Text = UNSET
    url: Text = UNSET
    logo_url: Text = UNSET
    email: Text = UNSET
    currency: Currency | UnsetType | None = UNSET
    timezone: Timezone | UnsetType | None = UNSET
    customer_type: CustomerType | UnsetType | None = UNSET
    net_payment_term: NonNegative | UnsetType | None = UNSET
    finalize_zero_amount_invoice: Finalize | UnsetType | None = UNSET
    tax_codes: list[NonBlank] | UnsetType | None = UNSET
    metadata: Annotated[list[_Metadata], Meta(max_length=MAX_METADATA_ITEMS)] | UnsetType | None = UNSET
    shipping_address: _Address | UnsetType | None = UNSET
    billing_configuration: _Billing | UnsetType | None = UNSET


class _Envelope(Struct):
    """Unknown envelope fields are ignored, as in the full path (they are not customer fields)."""

    message_id: Identifier
    organization_id: Identifier
    customer: _Customer
    occurred_at: Any = None


_DECODER: Final = msgspec.json.Decoder(_Envelope)


class Envelope:
    """The fast path's reading of a command: the envelope fields and the customer as CustomerInput."""

    __slots__ = ("customer", "message_id", "occurred_at", "organization_id")

    def __init__(self, message_id: str, organization_id: str, occurred_at: Any, customer: CustomerInput) -> None:
        self.message_id = message_id
        self.organization_id = organization_id
        self.occurred_at = occurred_at
        self.customer = customer


def read(value: bytes) -> Envelope | None:
    """The command when it is plainly valid (type- and rule-wise; the signature and the provider lookup are left to
    the caller); None for anything else, which then takes the full path."""
    try:
        envelope = _DECODER.decode(value)
    except (msgspec.DecodeError, ValueError, RecursionError):  # bad UTF-8 is a ValueError; deep nesting recurses
        return None
    if envelope.customer.external_id is UNSET:
        return None
    customer: dict[str, Any] = msgspec.to_builtins(envelope.customer)
    try:
        if "email" in customer and customer["email"] is not None:
            customer["email"] = _email(customer["email"])
        if "country" in customer and customer["country"] is not None:
            customer["country"] = _blank_country(customer["country"])
        shipping = customer.get("shipping_address")
        if shipping is not None and shipping.get("country") is not None:
            shipping["country"] = _blank_country(shipping["country"])
    except PydanticCustomError:
        return None
    errors: dict[str, list[str]] = {}
    # Unknown fields were refused by the decoder, so no metadata item has any: the count is 0.
    cross_field_errors(customer, errors)
    if errors:
        return None
    return Envelope(envelope.message_id, envelope.organization_id, envelope.occurred_at, customer)  # type: ignore[arg-type]

"""The stored customer and how a valid command changes it (SPEC §4). Pure: no I/O, no clock, no ids made here."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, NamedTuple, TypedDict
from uuid import UUID

from worker.contract.customer import CustomerInput
from worker.contract.datasets import STRIPE_METHODS_WITHOUT_SETUP
from worker.contract.fields import Place, Source, column_of, in_place


class StoredMetadataItem(TypedDict):
    """One metadata item as stored and as shown in events (a plain dict: no conversion on either side); the body's
    item, before its defaults, is `worker.contract.customer.MetadataItem`."""

    key: str
    value: str
    display_in_invoice: bool


class CustomerState(NamedTuple):
    """One row of `customers` (its metadata included); field names are the column names, in column order. The
    columns are those of `worker.contract.fields.FIELDS` (a test holds them equal); they are written out here for
    the type checker. The order is the positional layout of rows and stored job snapshots: append, never reorder.

    A named tuple rather than a dataclass: a state is built for every command, and a tuple is built in one C call
    (`_make`), where a 43-field dataclass runs 43 attribute assignments in Python."""

    id: UUID
    organization_id: str
    external_id: str
    created_at: datetime
    updated_at: datetime
    high_water_mark: datetime | None = None
    name: str | None = None
    firstname: str | None = None
    lastname: str | None = None
    legal_name: str | None = None
    legal_number: str | None = None
    tax_identification_number: str | None = None
    phone: str | None = None
    url: str | None = None
    logo_url: str | None = None
    email: str | None = None
    address_line1: str | None = None
    address_line2: str | None = None
    city: str | None = None
    zipcode: str | None = None
    state: str | None = None
    country: str | None = None
    currency: str | None = None
    timezone: str | None = None
    customer_type: str | None = None
    net_payment_term: int | None = None
    finalize_zero_amount_invoice: str = "inherit"
    invoice_grace_period: int | None = None
    document_locale: str | None = None
    payment_provider: str | None = None
    payment_provider_code: str | None = None
    provider_customer_id: str | None = None
    provider_payment_methods: tuple[str, ...] | None = None
    shipping_address_line1: str | None = None
    shipping_address_line2: str | None = None
    shipping_city: str | None = None
    shipping_zipcode: str | None = None
    shipping_state: str | None = None
    shipping_country: str | None = None
    tax_codes: tuple[str, ...] = ()
    metadata: tuple[StoredMetadataItem, ...] = ()


COLUMNS: Final = CustomerState._fields
_POSITION: Final = {name: index for index, name in enumerate(COLUMNS)}
_UPDATED_AT: Final = _POSITION["updated_at"]
_DEFAULTS: Final = tuple(CustomerState._field_defaults.get(name) for name in COLUMNS)

# How a command's body becomes columns, from the field table (derived once: `patch_of` runs per command). Top-level
# and billing fields are named as their columns; shipping fields carry the `shipping_` prefix.
_PLAIN_FIELD_SET: Final = frozenset(column_of(field) for field in in_place(Place.TOP, Source.PLAIN, Source.ADDRESS))
_ADDRESS_FIELD_SET: Final = frozenset(column_of(field) for field in in_place(Place.TOP, Source.ADDRESS))
_SHIPPING_COLUMNS: Final = tuple((field.name, column_of(field)) for field in in_place(Place.SHIPPING, Source.ADDRESS))
_BILLING_FIELDS: Final = tuple(field.name for field in in_place(Place.BILLING, Source.PLAIN))
_BILLING_FIELD_SET: Final = frozenset(_BILLING_FIELDS)
PROVIDER_PUSHED_FIELDS: Final = frozenset({"name", "firstname", "lastname", "email", "phone", *_ADDRESS_FIELD_SET})
"""Changes that are pushed to a linked Stripe customer (SPEC §9)."""
STRIPE_DEFAULT_PAYMENT_METHODS: Final = ("card",)
"""What a Stripe-linked customer without payment methods gets (Lago's default)."""


def stripe_setup_methods(state: CustomerState) -> list[str]:
    """The customer's Stripe payment methods that a Checkout Session in setup mode collects (SPEC §11: all but
    `customer_balance` and `crypto`); empty when none needs setup."""
    methods = state.provider_payment_methods or STRIPE_DEFAULT_PAYMENT_METHODS
    return [method for method in methods if method not in STRIPE_METHODS_WITHOUT_SETUP]


def _address_value(value: str | None) -> str | None:
    # Whitespace-only address fields are blank, hence null (SPEC §3 and §11).
    return value if value is None or value.strip() else None


def patch_of(body: CustomerInput) -> dict[str, Any]:
    """The columns a command sets: absent fields are left out, `null` ones are present as None (SPEC §4)."""
    patch: dict[str, Any] = {name: body[name] for name in _PLAIN_FIELD_SET.intersection(body)}  # type: ignore[literal-required]
    for name in _ADDRESS_FIELD_SET.intersection(patch):
        patch[name] = _address_value(patch[name])
    if "finalize_zero_amount_invoice" in body:
        patch["finalize_zero_amount_invoice"] = body["finalize_zero_amount_invoice"] or "inherit"
    if "tax_codes" in body:
        patch["tax_codes"] = tuple(dict.fromkeys(body["tax_codes"] or ()))  # duplicates collapse (SPEC §3)
    if "metadata" in body:
        patch["metadata"] = tuple(
            # Validated items are fresh dicts: kept as they are unless display_in_invoice needs its default.
            item
            if item.get("display_in_invoice") is not None
            else StoredMetadataItem(key=item["key"], value=item["value"], display_in_invoice=False)
            for item in body["metadata"] or ()
        )
    if "shipping_address" in body:
        shipping = body["shipping_address"]
        for name, column in _SHIPPING_COLUMNS:
            if shipping is None:
                patch[column] = None
            elif name in shipping:
                patch[column] = _address_value(shipping[name])  # type: ignore[literal-required]
    if "billing_configuration" in body:
        billing = body["billing_configuration"]
        if billing is None:
            patch.update(dict.fromkeys(_BILLING_FIELDS))
        else:
            patch.update({name: billing[name] for name in _BILLING_FIELD_SET.intersection(billing)})  # type: ignore[literal-required]
            methods = billing.get("provider_payment_methods")
            if methods:
                patch["provider_payment_methods"] = tuple(dict.fromkeys(methods))
            if "payment_provider" in billing and billing["payment_provider"] is None:
                # Explicit `payment_provider: null` unlinks (SPEC §9).
                patch["payment_provider_code"] = None
                patch["provider_customer_id"] = None
    return patch


def new_customer(
    customer_id: UUID, organization_id: str, external_id: str, now: datetime, patch: dict[str, Any]
) -> CustomerState:
    values = list(_DEFAULTS)
    values[:5] = (customer_id, organization_id, external_id, now, now)
    return _patched(values, patch)


def columns_of(state: CustomerState) -> dict[str, Any]:
    return dict(zip(COLUMNS, state, strict=True))


def apply_patch(state: CustomerState, now: datetime, patch: dict[str, Any]) -> CustomerState:
    values = list(state)
    values[_UPDATED_AT] = now
    return _patched(values, patch)


def _patched(values: list[Any], patch: dict[str, Any]) -> CustomerState:
    for name, value in patch.items():
        values[_POSITION[name]] = value
    return CustomerState._make(values)


def is_stale(state: CustomerState | None, occurred_at: datetime | None) -> bool:
    """SPEC §5 and §11: earlier than the high-water mark is stale; equal is not; no timestamp never is."""
    if state is None or occurred_at is None or state.high_water_mark is None:
        return False
    return occurred_at < state.high_water_mark


def advance_high_water_mark(current: datetime | None, occurred_at: datetime | None) -> datetime | None:
    if occurred_at is None:
        return current
    if current is None or occurred_at > current:
        return occurred_at
    return current

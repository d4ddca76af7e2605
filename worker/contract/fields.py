"""The Lago customer fields: one table that says, for each, its name in the body and the event, its column, where it
sits (top level, `billing_configuration` or `shipping_address`) and how a command sets it.

Everything else is derived from or checked against this table:

* `worker.domain.customer` derives the merge (`patch_of`'s field sets) from it; `CustomerState` is written out for
  the type checker, and `tests/unit/test_field_source.py` holds its fields equal to the table's columns.
* `worker.domain.events.lago_customer` derives the event payload (keys, order, nesting) from it.
* `worker.store.rows` takes the SQL types of the set-based statements from it.
* `worker.observability.redaction` drops the personal fields it flags.
* `worker.contract.events.LagoCustomer` (hence `schemas/`) and the body models of `worker.contract.customer` are
  written out for pydantic and the type checker; tests hold their fields equal to the table.
* The `customers` table is history (migrations); `tests/integration/test_customers_table.py` holds its columns,
  types and nullability equal to the table and `CustomerState`.

The rows are in the order of Lago's customer object, which is the order of the event payload's keys.
"""

from __future__ import annotations

from enum import Enum
from typing import Final, NamedTuple


class Place(Enum):
    """Where a field sits in the body and in the event's customer object."""

    TOP = "top"
    BILLING = "billing_configuration"
    SHIPPING = "shipping_address"


class Source(Enum):
    """How the column gets its value."""

    PLAIN = "plain"
    """Copied from the body as validated (`null` included)."""
    ADDRESS = "address"
    """Copied from the body; blank (whitespace-only) is null (SPEC §3 and §11)."""
    RULE = "rule"
    """From the body through a rule of its own in `worker.domain.customer.patch_of`."""
    IDENTITY = "identity"
    """From the body or the envelope when the customer is created; never changed after."""
    WORKER = "worker"
    """Set by the worker (ids, timestamps, the stale guard's mark); not in the body."""
    DERIVED = "derived"
    """Computed for the event from other fields (`lago_customer`); no column."""


class LagoField(NamedTuple):
    name: str
    """The key in the body and in the event (inside its object); for a field in neither, the column."""
    column: str | None
    """The `customers` column; None for an event-only field."""
    sql_type: str | None
    """The column's type as PostgreSQL names it (`information_schema.columns.udt_name`)."""
    place: Place
    source: Source
    in_event: bool = True
    """Shown in the event's customer object."""
    personal: bool = False
    """Personal data: never logged (`worker.observability.redaction`)."""


def _top(name: str, sql_type: str = "text", source: Source = Source.PLAIN, *, personal: bool = False) -> LagoField:
    return LagoField(name, name, sql_type, Place.TOP, source, personal=personal)


def _address(place: Place, prefix: str = "") -> tuple[LagoField, ...]:
    names = ("address_line1", "address_line2", "city", "zipcode", "state", "country")
    # The country alone identifies no one, and is logged as such.
    return tuple(
        LagoField(name, prefix + name, "text", place, Source.ADDRESS, personal=name != "country") for name in names
    )


def _billing(name: str, sql_type: str = "text", source: Source = Source.PLAIN) -> LagoField:
    return LagoField(name, name, sql_type, Place.BILLING, source)


FIELDS: Final[tuple[LagoField, ...]] = (
    LagoField("lago_id", "id", "uuid", Place.TOP, Source.WORKER),
    LagoField("organization_id", "organization_id", "text", Place.TOP, Source.IDENTITY, in_event=False),
    LagoField("external_id", "external_id", "text", Place.TOP, Source.IDENTITY),
    _top("name", personal=True),
    _top("firstname", personal=True),
    _top("lastname", personal=True),
    _top("customer_type"),
    _top("email", personal=True),
    _top("phone", personal=True),
    _top("url", personal=True),
    _top("logo_url", personal=True),
    _top("legal_name", personal=True),
    _top("legal_number", personal=True),
    _top("tax_identification_number", personal=True),
    *_address(Place.TOP),
    _top("currency"),
    _top("timezone"),
    LagoField("applicable_timezone", None, None, Place.TOP, Source.DERIVED),
    _top("net_payment_term", "int4"),
    _top("finalize_zero_amount_invoice", source=Source.RULE),
    _billing("invoice_grace_period", "int4"),
    _billing("payment_provider"),
    _billing("payment_provider_code"),
    _billing("provider_customer_id"),
    _billing("provider_payment_methods", "jsonb", Source.RULE),
    _billing("document_locale"),
    *_address(Place.SHIPPING, "shipping_"),
    _top("metadata", "jsonb", Source.RULE),
    _top("tax_codes", "jsonb", Source.RULE),
    _top("created_at", "timestamptz", Source.WORKER),
    _top("updated_at", "timestamptz", Source.WORKER),
    LagoField("high_water_mark", "high_water_mark", "timestamptz", Place.TOP, Source.WORKER, in_event=False),
)

COMMAND_FLAGS: Final = frozenset({"sync", "sync_with_provider"})
"""Fields of `billing_configuration` that steer the command and are not stored."""


def column_of(field: LagoField) -> str:
    if field.column is None:
        raise ValueError(f"{field.name} is computed for the event and has no column")
    return field.column


STORED: Final = tuple(field for field in FIELDS if field.column is not None)
SQL_TYPES: Final = {column_of(field): str(field.sql_type) for field in STORED}
PERSONAL_NAMES: Final = frozenset(field.name for field in FIELDS if field.personal)


def in_place(place: Place, *sources: Source) -> tuple[LagoField, ...]:
    """The fields of one place, in order; only those of the given sources when any is given."""
    return tuple(field for field in FIELDS if field.place is place and (not sources or field.source in sources))


def event_fields(place: Place) -> tuple[str, ...]:
    """The keys of one object of the event's customer, in order (the nested objects not included)."""
    return tuple(field.name for field in in_place(place) if field.in_event)

"""The field table (`worker.contract.fields`) is the one source of the Lago customer fields: the state, the merge,
the event payload, the published models and schemas, and the body models agree with it. (The SQL table:
tests/integration/test_customers_table.py.)"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from uuid import UUID

from pydantic import BaseModel

from worker.contract.customer import BILLING_FIELDS, CUSTOMER_FIELDS, SHIPPING_FIELDS
from worker.contract.events import LagoBillingConfiguration, LagoCustomer, LagoShippingAddress
from worker.contract.fields import (
    COMMAND_FLAGS,
    FIELDS,
    PERSONAL_NAMES,
    STORED,
    Place,
    Source,
    column_of,
    event_fields,
    in_place,
)
from worker.dev.schema import event_file
from worker.domain.customer import COLUMNS, CustomerState, patch_of
from worker.domain.events import lago_customer
from worker.observability.redaction import REDACTED_KEYS

SCHEMAS: Final = Path(__file__).resolve().parents[2] / "schemas"
NOW: Final = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
_FROM_BODY: Final = (Source.PLAIN, Source.ADDRESS, Source.RULE)


def _customer_keys() -> list[str]:
    """The customer object's top-level keys read off the table: its top-level fields and, where the first field of
    a nested object stands, that object."""
    keys: list[str] = []
    for field in FIELDS:
        key = field.name if field.place is Place.TOP else str(field.place.value)
        if field.in_event and key not in keys:
            keys.append(key)
    return keys


def _names(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def test_the_table_names_each_column_once_and_each_key_once_per_object() -> None:
    columns = [column_of(field) for field in STORED]
    assert len(columns) == len(set(columns))
    for place in Place:
        names = [field.name for field in in_place(place)]
        assert len(names) == len(set(names)), place


def test_columns_are_named_after_the_body_except_the_shipping_prefix() -> None:
    # `patch_of` keys its patch by column and reads the body by name: they must agree as stated here.
    for field in FIELDS:
        if field.source in _FROM_BODY:
            prefix = "shipping_" if field.place is Place.SHIPPING else ""
            assert field.column == prefix + field.name, field


def test_state_fields_are_the_table_columns() -> None:
    assert sorted(COLUMNS) == sorted(column_of(field) for field in STORED)


def test_the_body_models_carry_the_table_fields() -> None:
    top = {field.name for field in in_place(Place.TOP, *_FROM_BODY)} | {"external_id"}
    assert top | {Place.BILLING.value, Place.SHIPPING.value} == CUSTOMER_FIELDS
    assert {field.name for field in in_place(Place.BILLING, *_FROM_BODY)} | COMMAND_FLAGS == BILLING_FIELDS
    assert {field.name for field in in_place(Place.SHIPPING, *_FROM_BODY)} == SHIPPING_FIELDS


def test_every_plain_and_address_field_of_the_body_sets_its_column() -> None:
    def values(place: Place) -> dict[str, Any]:
        return {field.name: f"value of {field.column}" for field in in_place(place, Source.PLAIN, Source.ADDRESS)}

    body: dict[str, Any] = {
        "external_id": "e-1",
        **values(Place.TOP),
        "billing_configuration": values(Place.BILLING),
        "shipping_address": values(Place.SHIPPING),
    }
    patch = patch_of(body)  # type: ignore[arg-type]  # plain text in every field: the merge does not validate
    expected = [field for field in FIELDS if field.source in (Source.PLAIN, Source.ADDRESS)]
    assert {column_of(field): patch.get(column_of(field)) for field in expected} == {
        column_of(field): f"value of {field.column}" for field in expected
    }


def test_the_event_payload_has_the_table_keys_in_table_order() -> None:
    state = CustomerState(UUID(int=1), "org", "e-1", NOW, NOW, payment_provider="stripe")
    customer = lago_customer(state)
    assert list(customer) == _customer_keys()
    assert list(customer[Place.BILLING.value]) == list(event_fields(Place.BILLING))
    assert list(customer[Place.SHIPPING.value]) == list(event_fields(Place.SHIPPING))
    assert customer["lago_id"] == state.id


def test_the_published_models_have_the_table_fields_in_table_order() -> None:
    assert _names(LagoCustomer) == _customer_keys()
    assert _names(LagoBillingConfiguration) == list(event_fields(Place.BILLING))
    assert _names(LagoShippingAddress) == list(event_fields(Place.SHIPPING))


def test_the_published_json_schema_has_the_table_fields() -> None:
    definitions = json.loads((SCHEMAS / event_file("customer.created")).read_text())["$defs"]
    expected = {
        "LagoCustomer": _customer_keys(),
        "LagoBillingConfiguration": list(event_fields(Place.BILLING)),
        "LagoShippingAddress": list(event_fields(Place.SHIPPING)),
    }
    for name, keys in expected.items():
        assert definitions[name]["required"] == keys, name
        assert set(definitions[name]["properties"]) == set(keys), name


def test_personal_fields_are_redacted_from_logs() -> None:
    assert PERSONAL_NAMES <= REDACTED_KEYS
    assert {"email", "name", "phone", "address_line1"} <= PERSONAL_NAMES

"""Mapping between `CustomerState` and rows of `customers`, in the column order of the set-based upsert."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Final

import asyncpg
import orjson

from worker.domain.customer import COLUMNS, CustomerState, MetadataEntry

_JSON_COLUMNS: Final = frozenset({"provider_payment_methods", "tax_codes", "metadata"})
_SQL_TYPES: Final = {
    "id": "uuid",
    "net_payment_term": "int4",
    "invoice_grace_period": "int4",
    "high_water_mark": "timestamptz",
    "created_at": "timestamptz",
    "updated_at": "timestamptz",
    **dict.fromkeys(_JSON_COLUMNS, "jsonb"),
}


def _sql_type(column: str) -> str:
    return _SQL_TYPES.get(column, "text")


def upsert_sql() -> str:
    """One statement for the whole batch: every column as an array parameter, unnested into rows."""
    columns = ", ".join(COLUMNS)
    arrays = ", ".join(f"${index}::{_sql_type(column)}[]" for index, column in enumerate(COLUMNS, start=1))
    updates = ", ".join(f"{column} = EXCLUDED.{column}" for column in COLUMNS if column not in ("id", "created_at"))
    return f"INSERT INTO customers ({columns}) SELECT * FROM unnest({arrays}) ON CONFLICT (id) DO UPDATE SET {updates}"


SELECT_FOR_UPDATE: Final = (
    f"SELECT {', '.join(f'c.{column}' for column in COLUMNS)} FROM customers c "
    "JOIN unnest($1::text[], $2::text[]) AS k(organization_id, external_id) "
    "ON c.organization_id = k.organization_id AND c.external_id = k.external_id "
    "ORDER BY c.id FOR UPDATE OF c"
)


def column_arrays(states: Sequence[CustomerState]) -> list[list[Any]]:
    arrays: list[list[Any]] = [[] for _ in COLUMNS]
    for state in states:
        for index, column in enumerate(COLUMNS):
            value = getattr(state, column)
            if column in _JSON_COLUMNS:
                value = _json(column, value)
            arrays[index].append(value)
    return arrays


def _json(column: str, value: Any) -> str | None:
    if value is None:
        return None
    if column == "metadata":
        return orjson.dumps(
            [{"key": m.key, "value": m.value, "display_in_invoice": m.display_in_invoice} for m in value]
        ).decode()
    return orjson.dumps(list(value)).decode()


_ID: Final = COLUMNS.index("id")
_METHODS: Final = COLUMNS.index("provider_payment_methods")
_TAX_CODES: Final = COLUMNS.index("tax_codes")
_METADATA: Final = COLUMNS.index("metadata")


def state_from_row(row: asyncpg.Record) -> CustomerState:
    """Rows come in `COLUMNS` order (see SELECT_FOR_UPDATE), so the state is built positionally."""
    values = list(row.values())
    # asyncpg returns its own UUID type, which orjson does not serialise; the domain holds stdlib UUIDs.
    values[_ID] = uuid.UUID(bytes=values[_ID].bytes)
    methods = values[_METHODS]
    values[_METHODS] = tuple(orjson.loads(methods)) if methods is not None else None
    values[_TAX_CODES] = tuple(orjson.loads(values[_TAX_CODES]))
    values[_METADATA] = tuple(
        MetadataEntry(item["key"], item["value"], item["display_in_invoice"])
        for item in orjson.loads(values[_METADATA])
    )
    return CustomerState(*values)

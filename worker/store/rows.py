"""Mapping between `CustomerState` and rows of `customers` for the set-based statements of `batch`."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Final

import asyncpg
import orjson

from worker.contract.fields import SQL_TYPES
from worker.domain.customer import COLUMNS, CustomerState


def _element(index: int, column: str) -> str:
    kind = SQL_TYPES[column]
    # `->>` reads JSON null as SQL NULL; `->` would keep a jsonb 'null', hence the NULLIF.
    return f"NULLIF(r->{index}, 'null'::jsonb)" if kind == "jsonb" else f"(r->>{index})::{kind}"


def upsert_sql() -> str:
    """One statement for the whole batch. The rows travel as one JSON array of arrays (column order), serialised by
    orjson and unpacked by PostgreSQL: this keeps the encoding work off the worker's Python thread."""
    columns = ", ".join(COLUMNS)
    values = ", ".join(_element(index, column) for index, column in enumerate(COLUMNS))
    fixed = ("id", "organization_id", "external_id", "created_at")
    updates = ", ".join(f"{column} = EXCLUDED.{column}" for column in COLUMNS if column not in fixed)
    # A row's identity never changes: the update leaves `organization_id` and `external_id` alone and applies only
    # where they match. The caller compares the rows returned with the rows sent (`IdentityConflictError`).
    return (
        f"INSERT INTO customers ({columns}) SELECT {values} FROM jsonb_array_elements($1::jsonb) AS r "
        f"ON CONFLICT (id) DO UPDATE SET {updates} "
        "WHERE customers.organization_id = EXCLUDED.organization_id AND customers.external_id = EXCLUDED.external_id "
        "RETURNING id"
    )


class IdentityConflictError(RuntimeError):
    """An upsert met a row with the same id but another organization or external id: nothing may be overwritten."""


def rows_json(states: Sequence[CustomerState]) -> str:
    # orjson writes UUIDs, RFC 3339 datetimes and nested tuples in C; a named tuple is passed as its plain tuple.
    return orjson.dumps([tuple(state) for state in states]).decode()


def state_json(state: CustomerState) -> str:
    """One state as a JSON array in column order (a provider job's request snapshot)."""
    return orjson.dumps(tuple(state)).decode()


def state_from_json(text: str) -> CustomerState:
    """The inverse of `state_json`, also for a snapshot queued before a field was added: fields are only ever
    appended to `CustomerState` (docs/architecture.md), so the missing ones are the trailing defaults."""
    values = orjson.loads(text)
    if len(values) < len(COLUMNS):
        values.extend(_DEFAULTS[len(values) :])
    values[_ID] = uuid.UUID(values[_ID])
    for index in _TIMES:
        if values[index] is not None:
            values[index] = datetime.fromisoformat(values[index])
    methods = values[_METHODS]
    values[_METHODS] = tuple(methods) if methods is not None else None
    values[_TAX_CODES] = tuple(values[_TAX_CODES])
    values[_METADATA] = tuple(values[_METADATA])
    return CustomerState._make(values)


SELECT_FOR_UPDATE: Final = (
    f"SELECT {', '.join(f'c.{column}' for column in COLUMNS)} FROM customers c "
    "JOIN unnest($1::text[], $2::text[]) AS k(organization_id, external_id) "
    "ON c.organization_id = k.organization_id AND c.external_id = k.external_id "
    "ORDER BY c.id FOR UPDATE OF c"
)


_ID: Final = COLUMNS.index("id")
_DEFAULTS: Final = tuple(CustomerState._field_defaults.get(column) for column in COLUMNS)
_METHODS: Final = COLUMNS.index("provider_payment_methods")
_TAX_CODES: Final = COLUMNS.index("tax_codes")
_METADATA: Final = COLUMNS.index("metadata")
_TIMES: Final = tuple(COLUMNS.index(column) for column in ("created_at", "updated_at", "high_water_mark"))


def state_from_row(row: asyncpg.Record) -> CustomerState:
    """Rows come in `COLUMNS` order (see SELECT_FOR_UPDATE), so the state is built positionally."""
    values = list(row.values())
    # asyncpg returns its own UUID type, which orjson does not serialise; the domain holds stdlib UUIDs.
    values[_ID] = uuid.UUID(bytes=values[_ID].bytes)
    methods = values[_METHODS]
    values[_METHODS] = tuple(orjson.loads(methods)) if methods is not None else None
    values[_TAX_CODES] = tuple(orjson.loads(values[_TAX_CODES]))
    values[_METADATA] = tuple(orjson.loads(values[_METADATA]))
    return CustomerState._make(values)

"""The migrated `customers` table has exactly the columns of the field table (`worker.contract.fields`), with its
types, and nullable exactly where the state's default is null. Migrations are history and stay as written: this
test is what ties them to the one source of the fields."""

from __future__ import annotations

import asyncpg

from worker.contract.fields import SQL_TYPES
from worker.domain.customer import COLUMNS, CustomerState

_REQUIRED = object()


async def test_the_customers_table_has_every_field_with_its_type(pool: asyncpg.Pool[asyncpg.Record]) -> None:
    rows = await pool.fetch(
        "SELECT column_name, udt_name, is_nullable FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = 'customers'"
    )
    table = {row["column_name"]: (row["udt_name"], row["is_nullable"] == "YES") for row in rows}
    defaults = CustomerState._field_defaults
    expected = {column: (SQL_TYPES[column], defaults.get(column, _REQUIRED) is None) for column in COLUMNS}
    assert table == expected

"""The store pipeline through `BatchService.handle`: real PostgreSQL, no Kafka (SPEC §3-§6, §8, §11)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import orjson
import pytest
from pydantic import SecretStr

from tests.harness.database import migrate_database
from tests.harness.records import (
    RecordFactory,
    RecordingSink,
    command,
    encode,
    new_message_id,
    new_traceparent,
)
from worker.app import EXIT_PENDING_MIGRATIONS, Configuration, Worker
from worker.contract.connections import Connection, ConnectionConfig, ProviderRegistry
from worker.contract.decode import DecodeContext
from worker.contract.events import CustomerCreated, CustomerRejected, CustomerSkipped, CustomerUpdated
from worker.security import SIGNATURE_HEADER, SigningKeys, sign
from worker.service import BatchReport, BatchService
from worker.settings import Settings
from worker.store import migrations
from worker.store.db import create_pool

pytestmark = pytest.mark.timeout(60)

ORG = "org_acme"
OTHER_ORG = "org_globex"
SIGNED_ORG = "org_signed"
SIGNING_KEY = b"s3cret-key"
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


@dataclass(frozen=True)
class StoredEvent:
    event_type: str
    key: str
    traceparent: str | None
    body: dict[str, Any]
    raw: bytes


@dataclass
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@dataclass
class Store:
    pool: asyncpg.Pool[asyncpg.Record]
    service: BatchService
    sink: RecordingSink
    clock: Clock
    records: RecordFactory = field(default_factory=RecordFactory)

    async def handle(self, *items: dict[str, Any] | bytes | None, headers: Any = None) -> BatchReport:
        batch = []
        for item in items:
            value = encode(item) if isinstance(item, dict) else item
            if headers is None:
                batch.append(self.records.record(value))
            else:
                batch.append(self.records.record(value, headers=headers))
        return await self.service.handle(batch)

    async def row(self, organization_id: str, external_id: str) -> dict[str, Any] | None:
        record = await self.pool.fetchrow(
            "SELECT * FROM customers WHERE organization_id = $1 AND external_id = $2", organization_id, external_id
        )
        if record is None:
            return None
        row = dict(record.items())
        for column in ("tax_codes", "metadata", "provider_payment_methods"):
            if row[column] is not None:
                row[column] = orjson.loads(row[column])
        return row

    async def events(self) -> list[StoredEvent]:
        rows = await self.pool.fetch("SELECT event_type, event_key, traceparent, payload FROM outbox ORDER BY id")
        return [
            StoredEvent(
                event_type=r["event_type"],
                key=r["event_key"],
                traceparent=r["traceparent"],
                body=orjson.loads(r["payload"]),
                raw=bytes(r["payload"]),
            )
            for r in rows
        ]

    async def inbox(self) -> set[tuple[str, str]]:
        rows = await self.pool.fetch("SELECT organization_id, message_id FROM processed_messages")
        return {(r["organization_id"], r["message_id"]) for r in rows}

    async def count(self, table: str) -> int:
        value: int = await self.pool.fetchval(f"SELECT count(*) FROM {table}")  # table names are literals here
        return value


def _registry() -> ProviderRegistry:
    config = ConnectionConfig(
        organization_id=OTHER_ORG, code="stripe_globex", provider="stripe", secret_env="STRIPE_GLOBEX_KEY"
    )
    return ProviderRegistry([Connection(config=config, secret=SecretStr("sk_test_globex"))])


@pytest.fixture
async def store(fresh_database: str) -> AsyncIterator[Store]:
    await migrate_database(fresh_database)
    pool = await create_pool(fresh_database, size=2)
    registry = _registry()
    sink = RecordingSink()
    clock = Clock()
    service = BatchService(
        pool=pool,
        decode_context=DecodeContext(signing_keys=SigningKeys({SIGNED_ORG: [SIGNING_KEY]}), registry=registry),
        registry=registry,
        dead_letters=sink,
        poison_max_attempts=1,  # a failing batch is isolated and dead-lettered at once
        clock=clock,
    )
    try:
        yield Store(pool=pool, service=service, sink=sink, clock=clock)
    finally:
        await pool.close()


FULL_CUSTOMER: dict[str, Any] = {
    "external_id": "cus_001",
    "name": "Acme Inc",
    "firstname": "Ada",
    "lastname": "Lovelace",
    "legal_name": "Acme Incorporated",
    "legal_number": "RCS 123 456",
    "tax_identification_number": "FR40303265045",
    "phone": "+33 1 23 45 67 89",
    "url": "https://acme.example",
    "logo_url": "https://acme.example/logo.png",
    "email": "billing@acme.example",
    "address_line1": "1 rue de la Paix",
    "address_line2": "Bâtiment B",
    "city": "Paris",
    "zipcode": "75002",
    "state": "Île-de-France",
    "country": "fr",
    "currency": "EUR",
    "timezone": "Europe/Paris",
    "customer_type": "company",
    "net_payment_term": 30,
    "finalize_zero_amount_invoice": "skip",
    "tax_codes": ["vat_20", "eco", "vat_20"],
    "metadata": [
        {"key": "segment", "value": "smb", "display_in_invoice": True},
        {"key": "crm_id", "value": "42"},
    ],
    "shipping_address": {
        "address_line1": "5 Hafenstraße",
        "address_line2": "Tor 3",
        "city": "Hamburg",
        "zipcode": "20457",
        "state": "HH",
        "country": "de",
    },
    "billing_configuration": {
        "invoice_grace_period": 3,
        "document_locale": "fr",
        "payment_provider": "stripe",
        "payment_provider_code": "stripe_unchecked",
        "provider_payment_methods": ["card", "sepa_debit"],
    },
    "an_unknown_field": "ignored",
}

FULL_ROW: dict[str, Any] = {
    "organization_id": ORG,
    "external_id": "cus_001",
    "name": "Acme Inc",
    "firstname": "Ada",
    "lastname": "Lovelace",
    "legal_name": "Acme Incorporated",
    "legal_number": "RCS 123 456",
    "tax_identification_number": "FR40303265045",
    "phone": "+33 1 23 45 67 89",
    "url": "https://acme.example",
    "logo_url": "https://acme.example/logo.png",
    "email": "billing@acme.example",
    "address_line1": "1 rue de la Paix",
    "address_line2": "Bâtiment B",
    "city": "Paris",
    "zipcode": "75002",
    "state": "Île-de-France",
    "country": "FR",
    "currency": "EUR",
    "timezone": "Europe/Paris",
    "customer_type": "company",
    "net_payment_term": 30,
    "finalize_zero_amount_invoice": "skip",
    "invoice_grace_period": 3,
    "document_locale": "fr",
    "payment_provider": "stripe",
    "payment_provider_code": "stripe_unchecked",
    "provider_customer_id": None,
    "provider_payment_methods": ["card", "sepa_debit"],
    "shipping_address_line1": "5 Hafenstraße",
    "shipping_address_line2": "Tor 3",
    "shipping_city": "Hamburg",
    "shipping_zipcode": "20457",
    "shipping_state": "HH",
    "shipping_country": "DE",
    "tax_codes": ["vat_20", "eco"],
    "metadata": [
        {"key": "segment", "value": "smb", "display_in_invoice": True},
        {"key": "crm_id", "value": "42", "display_in_invoice": False},
    ],
}

STEP_MODES = pytest.mark.parametrize(
    "same_batch",
    [pytest.param(True, id="one-batch"), pytest.param(False, id="batch-per-command")],
)

SHIPPING_COLUMNS = (
    "shipping_address_line1",
    "shipping_address_line2",
    "shipping_city",
    "shipping_zipcode",
    "shipping_state",
    "shipping_country",
)


async def test_create_writes_every_column_and_a_created_event(store: Store) -> None:
    traceparent = new_traceparent()
    created = command(ORG, FULL_CUSTOMER, occurred_at="2026-01-05T10:00:00+01:00")
    report = await store.handle(
        created, headers=[("content-type", b"application/json"), ("traceparent", traceparent.encode())]
    )

    assert (report.summary.created, report.summary.updated, report.summary.events) == (1, 0, 1)
    assert report.summary.unknown_fields == 1
    row = await store.row(ORG, "cus_001")
    assert row is not None
    expected_now = T0 + timedelta(seconds=1)
    assert isinstance(row.pop("id"), UUID)
    assert row.pop("created_at") == expected_now
    assert row.pop("updated_at") == expected_now
    assert row.pop("high_water_mark") == datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    assert row == FULL_ROW

    [event] = await store.events()
    assert (event.event_type, event.key, event.traceparent) == ("customer.created", "org_acme:cus_001", traceparent)
    parsed = CustomerCreated.model_validate_json(event.raw)
    stored_id = await store.pool.fetchval("SELECT id FROM customers")
    assert parsed.customer.lago_id == stored_id
    assert parsed.message_id == created["message_id"]
    assert parsed.organization_id == ORG
    assert parsed.external_id == "cus_001"
    assert parsed.occurred_at == expected_now
    customer = event.body["customer"]
    assert customer["country"] == "FR"
    assert customer["applicable_timezone"] == "Europe/Paris"
    assert customer["tax_codes"] == ["vat_20", "eco"]
    assert customer["billing_configuration"] == {
        "invoice_grace_period": 3,
        "payment_provider": "stripe",
        "payment_provider_code": "stripe_unchecked",
        "provider_customer_id": None,
        "provider_payment_methods": ["card", "sepa_debit"],
        "document_locale": "fr",
    }
    assert customer["shipping_address"] == {
        "address_line1": "5 Hafenstraße",
        "address_line2": "Tor 3",
        "city": "Hamburg",
        "zipcode": "20457",
        "state": "HH",
        "country": "DE",
    }
    assert customer["created_at"] == customer["updated_at"] == "2026-01-05T09:00:01Z"
    assert await store.inbox() == {(ORG, created["message_id"])}
    assert await store.count("provider_jobs") == 0
    assert store.sink.letters == []


async def run_steps(store: Store, documents: list[dict[str, Any]], *, same_batch: bool) -> list[StoredEvent]:
    """Handle `documents` in one batch, or each in a batch of its own; return the outbox afterwards."""
    if same_batch:
        await store.handle(*documents)
    else:
        for document in documents:
            await store.handle(document)
    return await store.events()


def snapshot(event: StoredEvent) -> dict[str, Any]:
    customer: dict[str, Any] = event.body["customer"]
    return customer


@STEP_MODES
async def test_update_keeps_lago_id_and_emits_updated(store: Store, same_batch: bool) -> None:
    create = command(ORG, {"external_id": "cus_u", "name": "Before", "currency": "USD"})
    update = command(ORG, {"external_id": "cus_u", "name": "After"})
    no_change = command(ORG, {"external_id": "cus_u"})
    events = await run_steps(store, [create, update, no_change], same_batch=same_batch)

    # An update that changes nothing is still answered with customer.updated.
    assert [(e.event_type, e.key) for e in events] == [
        ("customer.created", "org_acme:cus_u"),
        ("customer.updated", "org_acme:cus_u"),
        ("customer.updated", "org_acme:cus_u"),
    ]
    row = await store.row(ORG, "cus_u")
    assert row is not None
    assert (row["name"], row["currency"]) == ("After", "USD")
    parsed = CustomerUpdated.model_validate_json(events[1].raw)
    assert parsed.customer.lago_id == row["id"] == UUID(snapshot(events[0])["lago_id"])
    assert (parsed.customer.name, parsed.customer.currency, parsed.message_id) == ("After", "USD", update["message_id"])
    assert CustomerUpdated.model_validate_json(events[2].raw).customer.lago_id == row["id"]
    assert row["created_at"] == T0 + timedelta(seconds=1)
    assert row["updated_at"] == T0 + timedelta(seconds=1 if same_batch else 3)
    assert await store.count("customers") == 1
    assert store.sink.letters == []


@STEP_MODES
async def test_absent_keeps_and_null_clears(store: Store, same_batch: bool) -> None:
    steps = [
        command(ORG, FULL_CUSTOMER),
        # A nested partial shipping update changes only the fields it names.
        command(ORG, {"external_id": "cus_001", "shipping_address": {"city": "Lyon"}}),
        command(
            ORG,
            {
                "external_id": "cus_001",
                "email": None,
                "net_payment_term": None,
                "finalize_zero_amount_invoice": None,
                "shipping_address": None,
            },
        ),
    ]
    events = await run_steps(store, steps, same_batch=same_batch)

    assert [e.event_type for e in events] == ["customer.created", "customer.updated", "customer.updated"]
    assert snapshot(events[1])["shipping_address"] == {
        "address_line1": "5 Hafenstraße",
        "address_line2": "Tor 3",
        "city": "Lyon",
        "zipcode": "20457",
        "state": "HH",
        "country": "DE",
    }
    assert (snapshot(events[1])["email"], snapshot(events[1])["finalize_zero_amount_invoice"]) == (
        "billing@acme.example",
        "skip",
    )
    last = snapshot(events[2])
    assert last["shipping_address"] == dict.fromkeys(
        ("address_line1", "address_line2", "city", "zipcode", "state", "country")
    )
    assert (last["email"], last["net_payment_term"], last["finalize_zero_amount_invoice"]) == (None, None, "inherit")

    row = await store.row(ORG, "cus_001")
    assert row is not None
    assert (row["email"], row["net_payment_term"], row["finalize_zero_amount_invoice"]) == (None, None, "inherit")
    assert {column: row[column] for column in SHIPPING_COLUMNS} == dict.fromkeys(SHIPPING_COLUMNS)
    # Absent fields are kept.
    kept = {column: row[column] for column in ("name", "phone", "currency", "city", "country", "tax_codes")}
    assert kept == {
        "name": "Acme Inc",
        "phone": "+33 1 23 45 67 89",
        "currency": "EUR",
        "city": "Paris",
        "country": "FR",
        "tax_codes": ["vat_20", "eco"],
    }
    assert row["metadata"] == FULL_ROW["metadata"]
    assert (row["payment_provider"], row["invoice_grace_period"]) == ("stripe", 3)


@STEP_MODES
async def test_lists_are_replaced_whole_and_cleared_by_empty_or_null(store: Store, same_batch: bool) -> None:
    steps = [
        command(
            ORG,
            {
                "external_id": "cus_l",
                "tax_codes": ["a", "b"],
                "metadata": [{"key": "k1", "value": "v1"}, {"key": "k2", "value": "v2"}],
            },
        ),
        command(
            ORG,
            {
                "external_id": "cus_l",
                "tax_codes": ["c"],
                "metadata": [{"key": "k2", "value": "new", "display_in_invoice": True}],
            },
        ),
        command(ORG, {"external_id": "cus_l", "name": "lists untouched"}),
        command(ORG, {"external_id": "cus_l", "tax_codes": [], "metadata": None}),
        command(ORG, {"external_id": "cus_l", "tax_codes": ["d"], "metadata": [{"key": "x", "value": "y"}]}),
        command(ORG, {"external_id": "cus_l", "tax_codes": None, "metadata": []}),
    ]
    events = await run_steps(store, steps, same_batch=same_batch)

    lists = [(snapshot(e)["tax_codes"], snapshot(e)["metadata"]) for e in events]
    v1 = {"key": "k1", "value": "v1", "display_in_invoice": False}
    v2 = {"key": "k2", "value": "v2", "display_in_invoice": False}
    new = {"key": "k2", "value": "new", "display_in_invoice": True}
    assert lists == [
        (["a", "b"], [v1, v2]),
        (["c"], [new]),
        (["c"], [new]),
        ([], []),
        (["d"], [{"key": "x", "value": "y", "display_in_invoice": False}]),
        ([], []),
    ]
    row = await store.row(ORG, "cus_l")
    assert row is not None
    assert (row["tax_codes"], row["metadata"], row["name"]) == ([], [], "lists untouched")


async def test_rejection_writes_no_customer_data(store: Store) -> None:
    rejected = command(
        ORG,
        {"external_id": "cus_bad", "email": "not-an-email", "currency": "usd", "metadata": [{"key": "k"}]},
    )
    no_external_id = command(ORG, {"external_id": "   ", "name": "x"})
    report = await store.handle(rejected, no_external_id)

    assert report.summary.rejected == 2
    assert await store.count("customers") == 0
    first, second = await store.events()
    parsed = CustomerRejected.model_validate_json(first.raw)
    assert parsed.errors == {
        "email": ["invalid_email_format"],
        "currency": ["value_is_invalid"],
        "metadata.0.value": ["value_is_mandatory"],
    }
    assert (first.key, parsed.external_id, parsed.message_id) == ("org_acme:cus_bad", "cus_bad", rejected["message_id"])
    assert "customer" not in first.body
    parsed_second = CustomerRejected.model_validate_json(second.raw)
    assert parsed_second.errors == {"external_id": ["value_is_mandatory"]}
    assert (second.key, parsed_second.external_id) == ("org_acme:", None)
    assert await store.inbox() == {(ORG, rejected["message_id"]), (ORG, no_external_id["message_id"])}

    # The rejection was recorded: its redelivery is a duplicate, with no second event.
    again = await store.handle(rejected)
    assert again.summary.duplicates == 1
    assert len(await store.events()) == 2


async def test_invalid_signature_is_not_recorded_and_is_answered_again(store: Store) -> None:
    document = command(SIGNED_ORG, {"external_id": "cus_s", "name": "Signed", "email": "bad"})
    value = encode(document)
    wrong = [("x-signature", sign(b"another-key", value))]

    first = await store.handle(value)  # no signature at all
    second = await store.handle(value, headers=wrong)

    assert (first.summary.invalid_signature, second.summary.invalid_signature) == (1, 1)
    assert (first.summary.duplicates, second.summary.duplicates) == (0, 0)
    events = await store.events()
    assert [event.event_type for event in events] == ["customer.rejected", "customer.rejected"]
    for event in events:
        # Reported alone, although the e-mail is invalid too.
        assert CustomerRejected.model_validate_json(event.raw).errors == {"base": ["invalid_signature"]}
        assert event.key == "org_signed:cus_s"
    assert await store.inbox() == set()
    assert await store.count("customers") == 0

    # The real producer's command with the same message_id is still applied.
    good = command(SIGNED_ORG, {"external_id": "cus_s", "name": "Signed"}, message_id=document["message_id"])
    good_value = encode(good)
    report = await store.handle(good_value, headers=[(SIGNATURE_HEADER, sign(SIGNING_KEY, good_value))])
    assert report.summary.created == 1
    assert await store.inbox() == {(SIGNED_ORG, document["message_id"])}
    row = await store.row(SIGNED_ORG, "cus_s")
    assert row is not None
    assert row["name"] == "Signed"


async def test_duplicate_message_ids_write_nothing_and_emit_nothing(store: Store) -> None:
    original = command(ORG, {"external_id": "cus_d", "name": "First"})
    report = await store.handle(original, original)
    assert (report.summary.created, report.summary.duplicates, report.summary.events) == (1, 1, 1)
    row = await store.row(ORG, "cus_d")
    assert row is not None

    # Across batches, and with a different body under the same message_id.
    different = command(ORG, {"external_id": "cus_d", "name": "Changed"}, message_id=original["message_id"])
    other_customer = command(ORG, {"external_id": "cus_d2"}, message_id=original["message_id"])
    report = await store.handle(original, different, other_customer)
    assert (report.summary.created, report.summary.updated, report.summary.duplicates, report.summary.events) == (
        0,
        0,
        3,
        0,
    )
    assert await store.row(ORG, "cus_d") == row
    assert await store.row(ORG, "cus_d2") is None
    assert [event.event_type for event in await store.events()] == ["customer.created"]

    # The same message_id in another organization is another command.
    report = await store.handle(command(OTHER_ORG, {"external_id": "cus_d"}, message_id=original["message_id"]))
    assert report.summary.created == 1

    # In one batch, a different body under the same message_id: the first command is applied, with its own body
    # (its patch is made ahead in the decode stage, keyed by the message id).
    first = command(ORG, {"external_id": "cus_e", "name": "First"})
    second = command(ORG, {"external_id": "cus_e", "name": "Second"}, message_id=first["message_id"])
    report = await store.handle(first, second)
    assert (report.summary.created, report.summary.duplicates) == (1, 1)
    first_row = await store.row(ORG, "cus_e")
    assert first_row is not None
    assert first_row["name"] == "First"


@STEP_MODES
async def test_stale_guard(store: Store, same_batch: bool) -> None:
    steps = [
        command(ORG, {"external_id": "cus_t", "name": "v1"}, occurred_at="2026-03-01T12:00:00Z"),
        command(ORG, {"external_id": "cus_t", "name": "older"}, occurred_at="2026-03-01T11:59:59.999Z"),
        # Equal is not stale (the same instant written with another offset).
        command(ORG, {"external_id": "cus_t", "name": "equal"}, occurred_at="2026-03-01T13:00:00+01:00"),
        # No occurred_at: never stale, and the high-water mark stays where it is.
        command(ORG, {"external_id": "cus_t", "name": "timeless"}),
        command(ORG, {"external_id": "cus_t", "name": "older again"}, occurred_at="2026-02-01T00:00:00Z"),
    ]
    events = await run_steps(store, steps, same_batch=same_batch)

    assert [(e.event_type, e.body["message_id"]) for e in events] == [
        ("customer.created", steps[0]["message_id"]),
        ("customer.skipped", steps[1]["message_id"]),
        ("customer.updated", steps[2]["message_id"]),
        ("customer.updated", steps[3]["message_id"]),
        ("customer.skipped", steps[4]["message_id"]),
    ]
    for skipped in (events[1], events[4]):
        parsed = CustomerSkipped.model_validate_json(skipped.raw)
        assert (parsed.reason, parsed.external_id, skipped.key) == ("stale", "cus_t", "org_acme:cus_t")
        assert "customer" not in skipped.body
    assert [snapshot(e)["name"] for e in events if "customer" in e.body] == ["v1", "equal", "timeless"]
    row = await store.row(ORG, "cus_t")
    assert row is not None
    assert (row["name"], row["high_water_mark"]) == ("timeless", datetime(2026, 3, 1, 12, tzinfo=UTC))
    # Skipped commands are answered, hence recorded: a redelivery is a duplicate.
    assert {(ORG, step["message_id"]) for step in steps} == await store.inbox()


async def test_stale_command_leaves_the_stored_row_unchanged(store: Store) -> None:
    await store.handle(command(ORG, {"external_id": "cus_t", "name": "v1"}, occurred_at="2026-03-01T12:00:00Z"))
    before = await store.row(ORG, "cus_t")
    stale = command(ORG, {"external_id": "cus_t", "name": "older"}, occurred_at="2026-03-01T11:00:00Z")
    report = await store.handle(stale)
    assert (report.summary.skipped, report.summary.updated, report.summary.events) == (1, 0, 1)
    assert await store.row(ORG, "cus_t") == before
    assert [e.event_type for e in await store.events()] == ["customer.created", "customer.skipped"]


async def test_commands_for_one_customer_in_one_batch_are_applied_in_order(store: Store) -> None:
    batch = [
        command(ORG, {"external_id": "cus_o", "name": "v1", "city": "Paris"}, occurred_at="2026-04-01T10:00:00Z"),
        command(ORG, {"external_id": "cus_other", "name": "other"}),
        command(ORG, {"external_id": "cus_o", "name": "v2"}, occurred_at="2026-04-01T10:00:01Z"),
        command(ORG, {"external_id": "cus_o", "name": "stale"}, occurred_at="2026-04-01T10:00:00.5Z"),
        command(ORG, {"external_id": "cus_o", "name": "v3", "city": None}, occurred_at="2026-04-01T10:00:02Z"),
    ]
    report = await store.handle(*batch)

    assert (report.summary.created, report.summary.updated, report.summary.skipped) == (2, 2, 1)
    events = await store.events()
    assert [(event.event_type, event.key, event.body["message_id"]) for event in events] == [
        ("customer.created", "org_acme:cus_o", batch[0]["message_id"]),
        ("customer.created", "org_acme:cus_other", batch[1]["message_id"]),
        ("customer.updated", "org_acme:cus_o", batch[2]["message_id"]),
        ("customer.skipped", "org_acme:cus_o", batch[3]["message_id"]),
        ("customer.updated", "org_acme:cus_o", batch[4]["message_id"]),
    ]
    snapshots = [(e.body["customer"]["name"], e.body["customer"]["city"]) for e in events if "customer" in e.body]
    assert snapshots == [("v1", "Paris"), ("other", None), ("v2", "Paris"), ("v3", None)]
    lago_ids = {e.body["customer"]["lago_id"] for e in events if e.key == "org_acme:cus_o" and "customer" in e.body}
    assert len(lago_ids) == 1
    row = await store.row(ORG, "cus_o")
    assert row is not None
    assert (row["name"], row["city"], row["high_water_mark"]) == (
        "v3",
        None,
        datetime(2026, 4, 1, 10, 0, 2, tzinfo=UTC),
    )
    assert await store.count("customers") == 2


async def test_tenant_isolation(store: Store) -> None:
    link = {"payment_provider": "stripe", "payment_provider_code": "stripe_globex", "provider_customer_id": "cus_X1"}
    report = await store.handle(
        command(ORG, {"external_id": "shared", "name": "Acme's"}),
        command(OTHER_ORG, {"external_id": "shared", "name": "Globex's", "billing_configuration": link}),
        command(ORG, {"external_id": "shared", "name": "Acme renamed"}),
    )
    assert (report.summary.created, report.summary.updated) == (2, 1)
    acme = await store.row(ORG, "shared")
    globex = await store.row(OTHER_ORG, "shared")
    assert acme is not None
    assert globex is not None
    assert acme["id"] != globex["id"]
    assert (acme["name"], globex["name"]) == ("Acme renamed", "Globex's")
    assert (
        globex["payment_provider"],
        globex["payment_provider_code"],
        globex["provider_customer_id"],
        globex["provider_payment_methods"],
    ) == ("stripe", "stripe_globex", "cus_X1", ["card"])
    events = await store.events()
    assert [(e.event_type, e.key) for e in events] == [
        ("customer.created", "org_acme:shared"),
        ("customer.created", "org_globex:shared"),
        ("customer.updated", "org_acme:shared"),
    ]
    assert snapshot(events[2])["lago_id"] == str(acme["id"])

    # Another organization's connection, by its code or by provider alone, is not found for this one.
    by_code = command(ORG, {"external_id": "shared", "billing_configuration": link})
    by_provider = command(
        ORG,
        {"external_id": "new_one", "billing_configuration": {"payment_provider": "stripe", "sync_with_provider": True}},
    )
    report = await store.handle(by_code, by_provider)

    assert report.summary.rejected == 2
    tail = (await store.events())[3:]
    assert [(e.event_type, e.key, e.body.get("errors")) for e in tail] == [
        ("customer.rejected", "org_acme:shared", {"base": ["payment_provider_not_found"]}),
        ("customer.rejected", "org_acme:new_one", {"base": ["payment_provider_not_found"]}),
    ]
    assert await store.row(ORG, "shared") == acme
    assert await store.row(ORG, "new_one") is None
    # A link made on create with an existing provider customer asks for no provider call.
    assert await store.count("provider_jobs") == 0


async def test_unreadable_records_go_to_the_dead_letter_sink_and_the_rest_is_applied(store: Store) -> None:
    good = command(ORG, {"external_id": "cus_g"})
    big = encode(command(ORG, {"external_id": "cus_big", "name": "x" * 200, "legal_name": "y" * (1024 * 1024)}))
    report = await store.handle(
        b"{not json",
        None,
        good,
        encode([1, 2, 3]),
        encode({"message_id": new_message_id(), "organization_id": ORG}),
        big,
    )

    reasons = [(record.offset, letter.reason.value) for record, letter in store.sink.letters]
    assert reasons == [
        (0, "invalid_json"),
        (1, "invalid_json"),
        (3, "invalid_envelope"),
        (4, "invalid_envelope"),
        (5, "too_large"),
    ]
    assert store.sink.letters[4][0].value == big
    assert report.dead_letters == {"invalid_json": 2, "invalid_envelope": 2, "too_large": 1}
    assert report.summary.created == 1
    assert await store.count("customers") == 1
    assert await store.inbox() == {(ORG, good["message_id"])}


async def test_migrations_pending_then_idempotent(fresh_database: str) -> None:
    conn = await asyncpg.connect(fresh_database)
    try:
        everything = migrations.available()
        assert [m.version for m in everything] == sorted({m.version for m in everything})
        assert everything[0].version == 1
        waiting = await migrations.pending(conn)
        assert [(m.version, m.name) for m in waiting] == [(m.version, m.name) for m in everything]

        applied = await migrations.migrate(conn)
        assert [m.version for m in applied] == [m.version for m in everything]
        assert await migrations.pending(conn) == []
        assert await migrations.migrate(conn) == []
        recorded = await conn.fetch("SELECT version, checksum FROM schema_migrations ORDER BY version")
        assert [(r["version"], r["checksum"]) for r in recorded] == [(m.version, m.checksum) for m in everything]
        tables = {
            r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        assert {"customers", "processed_messages", "outbox", "provider_jobs", "schema_migrations"} <= tables
        unique = await conn.fetchval(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = $1",
            "customers_organization_external_id_key",
        )
        assert unique == "UNIQUE (organization_id, external_id)"
    finally:
        await conn.close()


async def test_worker_refuses_to_run_with_pending_migrations(fresh_database: str) -> None:
    settings = Settings(database_url=SecretStr(fresh_database), kafka_bootstrap_servers="127.0.0.1:9", http_port=0)
    worker = Worker(Configuration(settings=settings, registry=ProviderRegistry.empty(), signing_keys=SigningKeys({})))
    loop = asyncio.get_running_loop()
    started = loop.time()
    code = await asyncio.wait_for(worker.run(install_signal_handlers=False), timeout=15)
    assert code == EXIT_PENDING_MIGRATIONS == 3
    assert loop.time() - started < 5
    conn = await asyncpg.connect(fresh_database)
    try:
        assert await conn.fetchval("SELECT to_regclass('customers')") is None
    finally:
        await conn.close()

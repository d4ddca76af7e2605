"""Structured logs of the batch service: context bound per record, no personal data."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import structlog
from structlog.testing import capture_logs

from tests.harness.database import migrate_database
from tests.harness.records import RecordFactory, RecordingSink, command, encode
from worker.contract.connections import ProviderRegistry
from worker.contract.decode import DecodeContext
from worker.security import SigningKeys
from worker.service import BatchService
from worker.store.db import create_pool

PERSONAL = {
    "name": "Zorglub Marker Name",
    "email": "zorglub.marker@example.com",
    "phone": "+33 6 99 88 77 66",
    "address_line1": "42 Rue du Marqueur",
    "tax_identification_number": "FR99MARKER",
}


@pytest.fixture
async def service(fresh_database: str) -> AsyncIterator[BatchService]:
    await migrate_database(fresh_database)
    pool = await create_pool(fresh_database, size=2)
    registry = ProviderRegistry.empty()
    try:
        yield BatchService(
            pool=pool,
            decode_context=DecodeContext(signing_keys=SigningKeys({"org_signed": [b"k"]}), registry=registry),
            registry=registry,
            dead_letters=RecordingSink(),
        )
    finally:
        await pool.close()


async def test_rejection_log_binds_the_record_and_names_fields_not_values(service: BatchService) -> None:
    records = RecordFactory()
    bad = command("org_log", {"external_id": "cus_log", **PERSONAL, "country": "XX", "currency": "usd"})
    unsigned = command("org_signed", {"external_id": "cus_sig", **PERSONAL})
    good = command("org_log", {"external_id": "cus_ok", **PERSONAL})
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        await service.handle(
            [
                records.record(encode(good), partition=2),
                records.record(encode(bad), partition=2),
                records.record(encode(unsigned), partition=2),
                records.record(b"{not json", partition=2),
            ]
        )
    by_event = {entry["event"]: entry for entry in logs}
    rejected = by_event["command_rejected"]
    assert (rejected["organization_id"], rejected["message_id"]) == ("org_log", bad["message_id"])
    assert (rejected["partition"], rejected["offset"]) == (2, 1)
    assert rejected["errors"] == {"country": ["not_a_valid_country_code"], "currency": ["value_is_invalid"]}
    signature = by_event["command_signature_invalid"]
    assert (signature["organization_id"], signature["offset"], signature["log_level"]) == ("org_signed", 2, "warning")
    dead = by_event["dead_lettered"]
    assert (dead["reason"], dead["partition"], dead["offset"]) == ("invalid_json", 2, 3)
    assert "organization_id" not in dead  # context does not leak from one record to the next
    rendered = repr(logs)
    for value in PERSONAL.values():
        assert value not in rendered

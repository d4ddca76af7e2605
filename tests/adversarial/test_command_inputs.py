"""Issue 9 on the embedded stack: the input cases measured on main (outcomes 1, 6 and 10), each reproduced through
a real worker, Tansu and PostgreSQL. After each bad input, `Pipeline.sync` sends a valid command on every partition
and waits for its answer, so a wedged partition fails the test.

What main did is in each test's docstring; the assertions say what happens now."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from tests.harness.in_process import running_worker
from tests.harness.records import command, encode, key_of, payload
from tests.integration.test_pipeline_kafka import PARTITIONS, MiB, Pipeline
from worker.contract.customer import MAX_TAX_CODES, MAX_TEXT, MAX_URL
from worker.contract.events import CustomerCreated, CustomerRejected

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
async def pipeline(pg_dsn: str, kafka_bootstrap: str) -> AsyncIterator[Pipeline]:
    async with running_worker(
        pg_dsn,
        kafka_bootstrap,
        "adversarial",
        kind=Pipeline,
        partitions=PARTITIONS,
        extra_env={"MAX_CLOCK_SKEW": "3600"},
        max_request_size=4 * MiB,
    ) as running:
        yield running


def _org() -> str:
    return f"org_{uuid.uuid4().hex[:10]}"


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


async def _answer(pipeline: Pipeline, document: dict[str, Any], *, key: bytes | None = None) -> Any:
    value = encode(document)
    assert len(value) <= MiB
    await pipeline.publish(value, key=key or key_of(document))
    (record,) = await pipeline.events_for([document["message_id"]])
    await pipeline.sync()
    return record


async def test_outcome1_300k_blank_tax_codes_are_answered_with_a_small_rejection(pipeline: Pipeline) -> None:
    """Main: an 11.6 MiB `customer.rejected` event, which a default broker refuses (the relay then stalls)."""
    document = command(_org(), {"external_id": "cus_tax", "tax_codes": [""] * 300_000})
    record = await _answer(pipeline, document)
    event = CustomerRejected.model_validate_json(record.value)
    assert event.errors["tax_codes"] == ["invalid_count"]
    assert event.errors["base"] == ["errors_omitted"]
    assert len(record.value) < 16 * 1024, len(record.value)


async def test_outcome1_450k_wrong_metadata_items_are_answered_with_a_small_rejection(pipeline: Pipeline) -> None:
    """Main: a 17 MiB rejection."""
    document = command(_org(), {"external_id": "cus_meta", "metadata": [1] * 450_000})
    record = await _answer(pipeline, document)
    event = CustomerRejected.model_validate_json(record.value)
    assert event.errors["metadata"] == ["invalid_count"]
    assert len(event.errors) == 1 + 5  # the list's error and its first five items
    assert len(record.value) < 4 * 1024


async def test_outcome1_3000_character_external_id_is_rejected_not_dead_lettered(pipeline: Pipeline) -> None:
    """Main: beyond the unique index's row limit, retried, bisected and dead-lettered as `processing_error`."""
    org = _org()
    document = command(org, {"external_id": "x" * 3_000})
    record = await _answer(pipeline, document)
    event = CustomerRejected.model_validate_json(record.value)
    assert event.errors == {"external_id": ["value_is_too_long"]}
    assert event.external_id is None
    assert record.key == f"{org}:".encode()


async def test_outcome1_largest_accepted_customer_event_fits(pipeline: Pipeline) -> None:
    text = "\x01" * MAX_TEXT  # JSON-escaped as six bytes each
    customer = {
        "external_id": "cus_" + "\x01" * (MAX_TEXT - 4),
        "name": text,
        "firstname": text,
        "lastname": text,
        "legal_name": text,
        "url": "\x01" * MAX_URL,
        "logo_url": "\x01" * MAX_URL,
        "address_line1": text,
        "shipping_address": {"address_line1": text, "city": text},
        "tax_codes": [f"{index:03d}" + "\x01" * (MAX_TEXT - 3) for index in range(MAX_TAX_CODES)],
    }
    record = await _answer(pipeline, command(_org(), customer))
    event = CustomerCreated.model_validate_json(record.value)
    assert len(event.customer.tax_codes) == MAX_TAX_CODES
    assert len(record.value) < MiB // 2, len(record.value)


async def test_outcome6_far_future_occurred_at_is_rejected_and_does_not_block_the_customer(
    pipeline: Pipeline,
) -> None:
    """Main: `9000-01-01T00:00:00Z` was applied, and every later command for that customer was skipped as stale."""
    org = _org()
    future = command(org, {"external_id": "cus_future", "name": "A"}, occurred_at="9000-01-01T00:00:00Z")
    rejected = await _answer(pipeline, future)
    assert CustomerRejected.model_validate_json(rejected.value).errors == {"occurred_at": ["value_is_invalid"]}
    now = command(org, {"external_id": "cus_future", "name": "B"}, occurred_at=_now())
    created = await _answer(pipeline, now)
    assert payload(created)["event_type"] == "customer.created"
    assert payload(created)["customer"]["name"] == "B"


async def test_outcome6_year_one_with_an_offset_is_rejected_and_the_customer_stays_readable(
    pipeline: Pipeline,
) -> None:
    """Main: stored as year 0 UTC, which asyncpg cannot read back: every later command that read the row went to
    the DLQ."""
    org = _org()
    ancient = command(org, {"external_id": "cus_ancient"}, occurred_at="0001-01-01T00:00:00+01:00")
    rejected = await _answer(pipeline, ancient)
    assert CustomerRejected.model_validate_json(rejected.value).errors == {"occurred_at": ["value_is_invalid"]}
    first = await _answer(pipeline, command(org, {"external_id": "cus_ancient", "name": "A"}, occurred_at=_now()))
    assert payload(first)["event_type"] == "customer.created"
    second = await _answer(pipeline, command(org, {"external_id": "cus_ancient", "name": "B"}, occurred_at=_now()))
    assert payload(second)["event_type"] == "customer.updated"
    async with pipeline.db() as conn:
        stored = await conn.fetchval(
            "SELECT high_water_mark FROM customers WHERE organization_id = $1 AND external_id = 'cus_ancient'", org
        )
    assert stored is not None and stored.year == datetime.now(UTC).year


async def test_outcome10_duplicate_member_names_are_dead_lettered_as_invalid_envelope(pipeline: Pipeline) -> None:
    org = _org()
    message_id = str(uuid.uuid4())
    value = (
        f'{{"message_id":"{message_id}","organization_id":"{org}","organization_id":"org_other",'
        f'"customer":{{"external_id":"cus_dup"}}}}'
    ).encode()
    key = f"{org}:cus_dup".encode()
    await pipeline.publish(value, key=key)
    letters = await pipeline.dead_letters([key])
    headers = dict(letters[key].headers)
    assert headers["dlq-reason"] == b"invalid_envelope"
    assert letters[key].value == value
    await pipeline.sync()
    # Nothing was answered for it: neither organization has a trace of the command.
    async with pipeline.db() as conn:
        processed = await conn.fetchval("SELECT count(*) FROM processed_messages WHERE message_id = $1", message_id)
    assert processed == 0
    assert orjson.loads(value)["organization_id"] == "org_other"  # what a last-wins parser would have read

"""Issue 9, outcomes 1, 6 and 10 on the contract side: bounded rejections, bounded free text, `occurred_at` in UTC
within [1970, now + MAX_CLOCK_SKEW], duplicate member names as `invalid_envelope`.

Each case is decoded and, where it is answered, turned into the event the worker would write, whose size is checked
against a default broker's 1 MiB."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson
import pytest

from worker.contract.codes import BASE, DlqReason, ErrorCode
from worker.contract.connections import Connections
from worker.contract.customer import MAX_EMAIL, MAX_TAX_CODES, MAX_TEXT, MAX_URL
from worker.contract.decode import MAX_VALUE_BYTES, Command, DeadLetter, DecodeContext, Rejection, decode
from worker.contract.rules import MAX_ERROR_PATHS
from worker.domain.customer import new_customer, patch_of
from worker.domain.events import build_event
from worker.security import SigningKeys

ONE_MIB: Final = 1024 * 1024
NOW: Final = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
CONTEXT: Final = DecodeContext(
    signing_keys=SigningKeys({}), connections=Connections([]), max_clock_skew=timedelta(hours=1), clock=lambda: NOW
)


def value(customer: Any, **fields: Any) -> bytes:
    return orjson.dumps({"message_id": "m-1", "organization_id": "org_acme", "customer": customer, **fields})


def rejection_event_size(rejection: Rejection) -> int:
    event = build_event(
        event_id=uuid.uuid4(),
        event_type="customer.rejected",
        organization_id=rejection.organization_id,
        message_id=rejection.message_id,
        external_id=rejection.external_id,
        occurred_at=NOW,
        traceparent=None,
        errors=rejection.errors,
    )
    return len(event.payload) + len(event.key.encode())


def rejected(raw: bytes) -> Rejection:
    assert len(raw) <= MAX_VALUE_BYTES, "the case must be a record the worker accepts to read"
    outcome = decode(raw, [], CONTEXT)
    assert isinstance(outcome, Rejection), outcome
    return outcome


# ---------------------------------------------------------------------------------------------------- outcome 1


def test_300k_blank_tax_codes_get_a_small_bounded_rejection() -> None:
    """Measured on main: an 11.6 MiB `customer.rejected` event."""
    rejection = rejected(value({"external_id": "cus_1", "tax_codes": [""] * 300_000}))
    assert rejection.errors["tax_codes"] == [ErrorCode.INVALID_COUNT.value]
    # Only the first items are checked, each blank one reported under its index.
    assert rejection.errors["tax_codes.0"] == [ErrorCode.VALUE_IS_INVALID.value]
    assert f"tax_codes.{MAX_TAX_CODES}" not in rejection.errors
    assert len([path for path in rejection.errors if path != BASE]) <= MAX_ERROR_PATHS
    assert rejection.errors[BASE] == [ErrorCode.ERRORS_OMITTED.value]
    assert rejection_event_size(rejection) < 16 * 1024


def test_450k_wrong_metadata_items_get_a_small_bounded_rejection() -> None:
    """Measured on main: 17 MiB."""
    rejection = rejected(value({"external_id": "cus_1", "metadata": [1] * 450_000}))
    assert rejection.errors["metadata"] == [ErrorCode.INVALID_COUNT.value]
    assert set(rejection.errors) == {"metadata", *(f"metadata.{index}" for index in range(5))}
    assert rejection_event_size(rejection) < 4 * 1024


def test_long_payment_method_list_is_bounded() -> None:
    methods = [1] * 100_000
    billing = {"provider_payment_methods": methods}
    rejection = rejected(value({"external_id": "cus_1", "billing_configuration": billing}))
    assert rejection.errors["billing_configuration.provider_payment_methods"] == [ErrorCode.VALUE_IS_INVALID.value]
    assert len(rejection.errors) <= 10
    assert rejection_event_size(rejection) < 4 * 1024


def test_external_id_over_255_characters_is_too_long_and_not_echoed() -> None:
    """Measured on main: a DLQ `processing_error` (the unique index's row limit) instead of a rejection."""
    rejection = rejected(value({"external_id": "x" * 3_000}))
    assert rejection.errors == {"external_id": [ErrorCode.VALUE_IS_TOO_LONG.value]}
    assert rejection.external_id is None  # the rejection's key is `org_acme:`, not 3,000 characters
    accepted = decode(value({"external_id": "x" * MAX_TEXT}), [], CONTEXT)
    assert isinstance(accepted, Command)


@pytest.mark.parametrize(
    ("field", "limit"),
    [
        ("name", MAX_TEXT),
        ("firstname", MAX_TEXT),
        ("legal_number", MAX_TEXT),
        ("city", MAX_TEXT),
        ("url", MAX_URL),
        ("logo_url", MAX_URL),
    ],
)
def test_free_text_fields_have_bounds(field: str, limit: int) -> None:
    assert isinstance(decode(value({"external_id": "c", field: "a" * limit}), [], CONTEXT), Command)
    rejection = rejected(value({"external_id": "c", field: "a" * (limit + 1)}))
    assert rejection.errors == {field: [ErrorCode.VALUE_IS_TOO_LONG.value]}


def test_email_bound_is_checked_before_the_address_rule() -> None:
    addresses = ",".join(["a@b.co"] * (MAX_EMAIL // 7 + 1))
    assert len(addresses) > MAX_EMAIL
    rejection = rejected(value({"external_id": "c", "email": addresses}))
    assert rejection.errors == {"email": [ErrorCode.VALUE_IS_TOO_LONG.value]}


def test_nested_bounds_in_shipping_billing_and_tax_codes() -> None:
    rejection = rejected(
        value(
            {
                "external_id": "c",
                "shipping_address": {"address_line1": "a" * (MAX_TEXT + 1)},
                "billing_configuration": {"provider_customer_id": "p" * (MAX_TEXT + 1)},
                "tax_codes": ["t" * (MAX_TEXT + 1)],
            }
        )
    )
    assert rejection.errors == {
        "shipping_address.address_line1": [ErrorCode.VALUE_IS_TOO_LONG.value],
        "billing_configuration.provider_customer_id": [ErrorCode.VALUE_IS_TOO_LONG.value],
        "tax_codes.0": [ErrorCode.VALUE_IS_TOO_LONG.value],
    }


def test_the_largest_accepted_customer_event_fits_in_one_mib() -> None:
    """Every bounded field at its bound, in the character JSON escapes longest (`\\u0001`, 6 bytes)."""
    wide = "\x01"
    text = wide * MAX_TEXT
    address = {name: text for name in ("address_line1", "address_line2", "city", "zipcode", "state")}
    customer: dict[str, Any] = {
        "external_id": text,
        **{
            name: text
            for name in ("name", "firstname", "lastname", "legal_name", "legal_number", "tax_identification_number")
        },
        "phone": text,
        "email": ",".join(["a" * 60 + "@example.com"] * (MAX_EMAIL // 73)),
        "url": wide * MAX_URL,
        "logo_url": wide * MAX_URL,
        **address,
        "shipping_address": address,
        "tax_codes": [f"{index:03d}" + wide * (MAX_TEXT - 3) for index in range(MAX_TAX_CODES)],
        "metadata": [{"key": f"{index}" + wide * 19, "value": wide * 100} for index in range(5)],
        "billing_configuration": {"payment_provider_code": text, "provider_customer_id": text},
    }
    command = decode(value(customer), [], CONTEXT)
    assert isinstance(command, Command), command
    state = new_customer(uuid.uuid4(), "o" * 255, command.external_id, NOW, patch_of(command.customer))
    event = build_event(
        event_id=uuid.uuid4(),
        event_type="customer.created",
        organization_id="o" * 255,
        message_id="m" * 255,
        external_id=command.external_id,
        occurred_at=NOW,
        traceparent=None,
        customer=state,
    )
    size = len(event.payload) + len(event.key.encode())
    print(f"largest accepted customer event: {size} bytes")
    assert size < 256 * 1024, size


def test_too_many_errors_are_capped_with_a_note_under_base() -> None:
    rejection = rejected(value({"external_id": "c", "tax_codes": [""] * MAX_TAX_CODES, "currency": "usd"}))
    others = [path for path in rejection.errors if path != BASE]
    assert len(others) == MAX_ERROR_PATHS
    assert rejection.errors[BASE] == [ErrorCode.ERRORS_OMITTED.value]
    # Lago's codes and dotted paths are kept for what is reported.
    assert all(rejection.errors[path] == [ErrorCode.VALUE_IS_INVALID.value] for path in others)
    assert all(path == "currency" or path.startswith("tax_codes") for path in others)
    few = rejected(value({"external_id": "c", "tax_codes": [""] * 3}))
    assert BASE not in few.errors


# ---------------------------------------------------------------------------------------------------- outcome 6


@pytest.mark.parametrize(
    "written",
    [
        pytest.param("9000-01-01T00:00:00Z", id="far-future"),
        pytest.param("0001-01-01T00:00:00+01:00", id="year-1-offset"),
        pytest.param("1969-12-31T23:59:59Z", id="before-1970"),
        pytest.param("1970-01-01T00:59:59+01:00", id="before-1970-by-offset"),
        pytest.param((NOW + timedelta(hours=1, seconds=1)).isoformat(), id="beyond-skew"),
        pytest.param("9999-12-31T23:59:59-23:59", id="max-with-offset"),
    ],
)
def test_occurred_at_out_of_range_is_value_is_invalid(written: str) -> None:
    rejection = rejected(value({"external_id": "c"}, occurred_at=written))
    assert rejection.errors == {"occurred_at": [ErrorCode.VALUE_IS_INVALID.value]}


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("1970-01-01T00:00:00Z", datetime(1970, 1, 1, tzinfo=UTC)),
        ("1970-01-01T01:00:00+01:00", datetime(1970, 1, 1, tzinfo=UTC)),
        ((NOW + timedelta(hours=1)).isoformat(), NOW + timedelta(hours=1)),
        ("2026-11-30T13:30:00+02:00", datetime(2026, 11, 30, 11, 30, tzinfo=UTC)),
    ],
)
def test_occurred_at_within_range_is_stored_in_utc(written: str, expected: datetime) -> None:
    command = decode(value({"external_id": "c"}, occurred_at=written), [], CONTEXT)
    assert isinstance(command, Command), command
    assert command.occurred_at == expected
    assert command.occurred_at is not None and command.occurred_at.tzinfo is UTC


def test_skew_follows_the_setting() -> None:
    strict = DecodeContext(
        signing_keys=SigningKeys({}), connections=Connections([]), max_clock_skew=timedelta(0), clock=lambda: NOW
    )
    ahead = (NOW + timedelta(seconds=1)).isoformat()
    assert isinstance(decode(value({"external_id": "c"}, occurred_at=ahead), [], CONTEXT), Command)
    outcome = decode(value({"external_id": "c"}, occurred_at=ahead), [], strict)
    assert isinstance(outcome, Rejection) and outcome.errors == {"occurred_at": ["value_is_invalid"]}


# --------------------------------------------------------------------------------------------------- outcome 10


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(
            b'{"message_id":"m-1","organization_id":"org_a","organization_id":"org_b","customer":{}}', id="top"
        ),
        pytest.param(
            b'{"message_id":"m-1","organization_id":"org_a","customer":{"external_id":"a","external_id":"b"}}',
            id="customer",
        ),
        pytest.param(
            b'{"message_id":"m-1","message\\u005fid":"m-2","organization_id":"org_a","customer":{"external_id":"a"}}',
            id="escaped-name",
        ),
        pytest.param(
            b'{"message_id":"m-1","organization_id":"o","customer":{"external_id":"a","metadata":[{"key":"k","key":"j",'
            b'"value":"v"}]}}',
            id="metadata-item",
        ),
        pytest.param(
            b'{ "message_id" : "m-1" ,\n "organization_id" : "o", "customer" : {"external_id":"a"}, "message_id" :"m"}',
            id="spaced",
        ),
    ],
)
def test_duplicate_member_names_are_invalid_envelope(raw: bytes) -> None:
    outcome = decode(raw, [], CONTEXT)
    assert isinstance(outcome, DeadLetter), outcome
    assert outcome.reason is DlqReason.INVALID_ENVELOPE
    assert outcome.error == "an object repeats a member name"


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(orjson.dumps, id="compact"),
        pytest.param(lambda document: json.dumps(document).encode(), id="spaced-ascii"),
        pytest.param(lambda document: json.dumps(document, indent=2).replace('":', '" :').encode(), id="space-colon"),
    ],
)
def test_name_like_text_inside_values_is_not_a_duplicate(encode: Callable[[Any], bytes]) -> None:
    """Values that look like member names (`": "`), in every writer's style, are still accepted (the styles that
    are not orjson's own take the slower, exact paths)."""
    customer = {"external_id": "a", "name": '"external_id": ":x é', "metadata": [{"key": "k", "value": 'v":'}]}
    raw = encode({"message_id": "m-1", "organization_id": "org_acme", "customer": customer})
    outcome = decode(raw, [], CONTEXT)
    assert isinstance(outcome, Command), outcome
    assert outcome.customer["name"] == json.loads(raw)["customer"]["name"]


def test_duplicate_beside_deep_nesting_is_still_refused() -> None:
    deep = "[" * 1000 + "]" * 1000
    raw = f'{{"message_id":"m","message_id":"n","organization_id":"o","customer":{{"external_id":"a","x":{deep}}}}}'
    outcome = decode(raw.encode(), [], CONTEXT)
    assert isinstance(outcome, DeadLetter) and outcome.reason is DlqReason.INVALID_ENVELOPE

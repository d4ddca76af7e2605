"""One entry point from a raw Kafka record to exactly one answer (SPEC §2, §7, §8, §11).

    decode(value, headers, context) -> Command | Rejection | DeadLetter

* `DeadLetter`: the record cannot be answered per customer (`invalid_json`, `invalid_envelope`, `too_large`).
* `Rejection`: a readable envelope whose command is refused; `errors` is Lago's `{path: [codes]}`.
* `Command`: a valid command, ready for the domain. The provider-connection checks that need the stored customer
  (a provider or code the command omits) are finished by the domain, before anything is written.

Pure: no I/O, no clock, no logging. Nothing here raises for any input bytes: should a check fail unexpectedly on
one record (a bug), that record alone is dead-lettered as `processing_error` with the exception's type, never the
batch retried (a deterministic failure would be met again on every poll, and stall the partition for good).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NamedTuple

import orjson
from pydantic import ValidationError

from worker.contract.codes import BASE, DlqReason, ErrorCode, Errors
from worker.contract.connections import Connections
from worker.contract.customer import (
    BILLING_FIELDS,
    CUSTOMER,
    CUSTOMER_FIELDS,
    MAX_TEXT,
    SHIPPING_FIELDS,
    BillingConfiguration,
    CustomerInput,
    strip_nul,
)
from worker.contract.duplicates import duplicate_names
from worker.contract.framing import unframe
from worker.contract.links import LinkRequest, link_request, precheck
from worker.contract.rules import add_error, bound_lists, capped, cross_field_errors, pydantic_errors
from worker.security import SIGNATURE_HEADER, SigningKeys

MAX_VALUE_BYTES: Final = 1024 * 1024
# The validator itself, without the TypeAdapter wrapper's per-call checks.
_VALIDATE_CUSTOMER: Final = CUSTOMER.validator.validate_python
_IDENTIFIER_MAX: Final = 255
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_TRACEPARENT: Final = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_NUL_ESCAPE: Final = b"\\u0000"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

Headers = Sequence[tuple[str, bytes]]


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class DecodeContext:
    signing_keys: SigningKeys
    connections: Connections
    max_value_bytes: int = MAX_VALUE_BYTES
    # `occurred_at` further ahead of `clock()` than this is `value_is_invalid` (MAX_CLOCK_SKEW).
    max_clock_skew: timedelta = timedelta(hours=1)
    clock: Callable[[], datetime] = _utc_now


class Command(NamedTuple):
    message_id: str
    organization_id: str
    occurred_at: datetime | None
    customer: CustomerInput
    link: LinkRequest | None
    traceparent: str | None
    unknown_fields: int
    # The Schema Registry id of a framed value (SPEC §12), published on the command's answer as `schema-id`.
    schema_id: int | None = None

    @property
    def external_id(self) -> str:
        # A valid command always has one: CustomerInput rejects a missing, null or blank external_id.
        external_id = self.customer["external_id"]
        assert external_id is not None
        return external_id


class Rejection(NamedTuple):
    message_id: str
    organization_id: str
    external_id: str | None
    errors: Errors
    traceparent: str | None
    # A forged command must not claim a real command's message_id (SPEC §11): not recorded as processed.
    record_as_processed: bool = True
    unknown_fields: int = 0
    schema_id: int | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: DlqReason
    error: str = field(default="")


Decoded = Command | Rejection | DeadLetter
Admitted = Command | Rejection
"""A record the batch's transaction settles with an event (a dead letter is settled by the DLQ instead)."""


def decode(value: bytes | None, headers: Headers, context: DecodeContext) -> Decoded:
    try:
        return _decode(value, headers, context)
    except RecursionError:
        return DeadLetter(DlqReason.INVALID_JSON, "value is nested too deeply")
    except Exception as exc:  # noqa: BLE001 - whatever one record makes a check raise is that record's answer
        # The type only: an exception's message may quote the record's content.
        return DeadLetter(DlqReason.PROCESSING_ERROR, f"decoding failed: {type(exc).__name__}")


def _decode(value: bytes | None, headers: Headers, context: DecodeContext) -> Decoded:
    if not value:
        return DeadLetter(DlqReason.INVALID_JSON, "empty value (tombstone)")
    if len(value) > context.max_value_bytes:
        return DeadLetter(DlqReason.TOO_LARGE, f"value of {len(value)} bytes exceeds {context.max_value_bytes}")
    unframed = unframe(value)  # SPEC §12: a Schema Registry frame is read past; the signature covers the whole value
    if unframed is None:
        return DeadLetter(DlqReason.INVALID_JSON, "value starts with byte 0 but holds no Schema Registry frame")
    try:
        document = orjson.loads(unframed.payload)
    except orjson.JSONDecodeError as exc:
        return DeadLetter(DlqReason.INVALID_JSON, _json_error(exc))
    if not isinstance(document, dict):
        return DeadLetter(DlqReason.INVALID_ENVELOPE, f"value is a JSON {_json_type(document)}, not an object")
    # The payload the document was parsed from: a frame's id bytes are not JSON (8762 reads `":`), and the check's
    # second parser would take a leading 0 for UTF-16.
    duplicate = duplicate_names(unframed.payload, document)
    if duplicate is not None:
        return DeadLetter(DlqReason.INVALID_ENVELOPE, duplicate)
    message_id = document.get("message_id")
    organization_id = document.get("organization_id")
    customer = document.get("customer")
    problem = _identifier_problem("message_id", message_id) or _identifier_problem("organization_id", organization_id)
    if problem is None and not isinstance(customer, dict):
        problem = "customer is missing or not an object"
    if problem is not None:
        return DeadLetter(DlqReason.INVALID_ENVELOPE, problem)
    assert isinstance(message_id, str) and isinstance(organization_id, str) and isinstance(customer, dict)

    traceparent, signature = _read_headers(headers)
    # A NUL can only arrive escaped; most values have no backslash at all, which one byte scan shows.
    if b"\\" in value and _NUL_ESCAPE in value:
        customer = strip_nul(customer)

    if not context.signing_keys.verify(organization_id, value, signature):
        return Rejection(
            message_id=message_id,
            organization_id=organization_id,
            external_id=_readable_external_id(customer),
            errors={BASE: [ErrorCode.INVALID_SIGNATURE.value]},
            traceparent=traceparent,
            record_as_processed=False,
            schema_id=unframed.schema_id,
        )

    errors: Errors = {}
    occurred_at = _occurred_at(document.get("occurred_at"), errors, context)
    customer = bound_lists(customer, errors)
    parsed: CustomerInput | None = None
    try:
        parsed = _VALIDATE_CUSTOMER(customer)
    except ValidationError as exc:
        pydantic_errors(exc, errors)
    unknown_in_metadata = cross_field_errors(customer, errors)

    link = link_request(parsed.get("billing_configuration") if parsed is not None else _billing_alone(customer, errors))
    if link is not None:
        failure = precheck(context.connections, organization_id, link)
        if failure is not None:
            add_error(errors, BASE, failure.code.value)

    if errors or parsed is None:
        return Rejection(
            message_id=message_id,
            organization_id=organization_id,
            external_id=_readable_external_id(customer),
            errors=capped(errors),
            traceparent=traceparent,
            unknown_fields=_unknown_outside_metadata(customer) + unknown_in_metadata,
            schema_id=unframed.schema_id,
        )
    # Positional: a named tuple built from keywords costs twice as much, and this runs for every command.
    return Command(
        message_id,
        organization_id,
        occurred_at,
        parsed,
        link,
        traceparent,
        _dropped_fields(customer, parsed) + unknown_in_metadata,
        unframed.schema_id,
    )


def _dropped_fields(raw: dict[str, Any], parsed: CustomerInput) -> int:
    """Unknown fields of the body and its nested objects, found cheaply: validation drops them, so equal key
    counts mean there were none (metadata items are counted by `cross_field_errors`)."""
    dropped = len(raw) != len(parsed)
    for name in ("billing_configuration", "shipping_address"):
        inner = raw.get(name)
        if isinstance(inner, dict) and len(inner) != len(parsed.get(name) or ()):  # type: ignore[arg-type]
            dropped = True
    return _unknown_outside_metadata(raw) if dropped else 0


def _unknown_outside_metadata(raw: dict[str, Any]) -> int:
    count = len(raw.keys() - CUSTOMER_FIELDS)
    for name, known in (("billing_configuration", BILLING_FIELDS), ("shipping_address", SHIPPING_FIELDS)):
        inner = raw.get(name)
        if isinstance(inner, dict):
            count += len(inner.keys() - known)
    return count


def _billing_alone(customer: dict[str, Any], errors: Errors) -> BillingConfiguration | None:
    """When the body has errors elsewhere, the provider lookup is still reported with them (SPEC §3). A billing
    configuration without errors of its own is as validated: its link fields are not normalised."""
    raw = customer.get("billing_configuration")
    if not isinstance(raw, dict) or any(path.startswith("billing_configuration") for path in errors):
        return None
    return raw  # type: ignore[return-value]


def _identifier_problem(name: str, value: Any) -> str | None:
    if not isinstance(value, str):
        return f"{name} is missing or not a string"
    if not 1 <= len(value) <= _IDENTIFIER_MAX:
        return f"{name} must have 1 to {_IDENTIFIER_MAX} characters"
    # Printable ASCII (the usual case) has no control character; anything else is searched.
    if not (value.isascii() and value.isprintable()) and _CONTROL.search(value) is not None:
        return f"{name} contains control characters"
    return None


def _read_headers(headers: Headers) -> tuple[str | None, bytes | None]:
    traceparent: str | None = None
    signature: bytes | None = None
    for key, raw in headers:
        lowered = key.lower()
        if lowered == "traceparent" and raw:
            candidate = raw.decode("ascii", errors="replace").strip()
            if _TRACEPARENT.fullmatch(candidate) is not None:
                traceparent = candidate
        elif lowered == SIGNATURE_HEADER:
            signature = raw
    return traceparent, signature


def _readable_external_id(customer: dict[str, Any]) -> str | None:
    external_id = customer.get("external_id")
    # Too long is not usable either: it would make the rejection's key and event as long as the command.
    if isinstance(external_id, str) and len(external_id) <= MAX_TEXT and external_id.strip():
        return external_id
    return None


def _occurred_at(raw: Any, errors: Errors, context: DecodeContext) -> datetime | None:
    """RFC 3339 with an offset, normalised to UTC; from 1970-01-01 up to `max_clock_skew` ahead of the clock. A
    far-future value would hold every later command back as stale; a year-1 value cannot be stored in UTC."""
    if raw is None:
        return None
    if isinstance(raw, str) and len(raw) >= 20 and raw[10] in "Tt ":
        try:
            parsed = datetime.fromisoformat(raw.upper())  # RFC 3339 allows a lower-case "t" and "z"
        except ValueError:
            parsed = None
        # Compared before converting: an aware comparison cannot overflow, `astimezone` can (year 1 at +01:00).
        latest = context.clock() + context.max_clock_skew
        if parsed is not None and parsed.tzinfo is not None and _EPOCH <= parsed <= latest:
            return parsed.astimezone(UTC)
    errors["occurred_at"] = [ErrorCode.VALUE_IS_INVALID.value]
    return None


def _json_error(exc: orjson.JSONDecodeError) -> str:
    # orjson's message names the position and the kind of fault, never the content.
    return f"not UTF-8 JSON: {exc.msg} at byte {exc.pos}"[:200]


def _json_type(document: Any) -> str:
    if isinstance(document, list):
        return "array"
    if isinstance(document, str):
        return "string"
    if isinstance(document, bool):
        return "boolean"
    if isinstance(document, int | float):
        return "number"
    return "null"

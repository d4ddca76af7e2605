"""Properties of `contract.decode` over generated input (SPEC §2, §3, §6, §7, §11).

* bytes that are not UTF-8 JSON are `invalid_json`; JSON that is not an object is `invalid_envelope`;
* a well-formed envelope never reaches the DLQ, whatever its customer object holds;
* a valid Lago customer body is accepted, and what `customer.created` then carries equals what was sent, after the
  documented normalisation (NUL stripped, blank address fields null, country upper-case, e-mail cleaned, lists
  deduplicated, `finalize_zero_amount_invoice` defaulting to `inherit`).
"""

from __future__ import annotations

import json
import string
import zoneinfo
from datetime import UTC, datetime
from typing import Any, Final
from uuid import UUID

import orjson
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from worker.contract.codes import DlqReason, ErrorCode
from worker.contract.connections import Connection, ConnectionConfig, Connections
from worker.contract.customer import BILLING_FIELDS, CUSTOMER_FIELDS, METADATA_FIELDS, SHIPPING_FIELDS
from worker.contract.decode import Command, DeadLetter, DecodeContext, Rejection, decode
from worker.contract.events import CustomerCreated
from worker.domain.customer import new_customer, patch_of
from worker.domain.events import build_event
from worker.security import SigningKeys

ORG: Final = "org_props"
CODES: Final = {"stripe": "stripe_main", "adyen": "adyen_main", "gocardless": "gc_main"}


def _connection(provider: str, code: str) -> Connection:
    config = ConnectionConfig.model_validate(
        {"organization_id": ORG, "code": code, "provider": provider, "secret_env": "UNUSED"}
    )
    return Connection(config=config, secret=SecretStr("unused"))


CONTEXT: Final = DecodeContext(
    signing_keys=SigningKeys({}),
    connections=Connections([_connection(provider, code) for provider, code in CODES.items()]),
)
NOW: Final = datetime(2026, 11, 24, 10, 15, 0, 123456, tzinfo=UTC)
LAGO_ID: Final = UUID("8d3c6a1e-52a0-4f7e-9a57-0d9f3c1e2a10")
EVENT_ID: Final = UUID("0f8e2c7a-6a55-4c0b-9b0e-1d2f3a4b5c6d")

PROPERTY_SETTINGS: Final = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ERROR_CODES: Final = frozenset(code.value for code in ErrorCode)
NESTED_FIELDS: Final = {"shipping_address": SHIPPING_FIELDS, "billing_configuration": BILLING_FIELDS}

# --- arbitrary JSON --------------------------------------------------------------------------------------------------

json_leaves: st.SearchStrategy[Any] = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values: st.SearchStrategy[Any] = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def _not_json(text: str) -> bool:
    def reject_constant(name: str) -> None:
        raise ValueError(name)

    try:
        json.loads(text, parse_constant=reject_constant)
    except ValueError:
        return True
    return False


@PROPERTY_SETTINGS
@given(prefix=st.binary(max_size=40), bad=st.sampled_from([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\x80"]))
def test_invalid_utf8_is_invalid_json(prefix: bytes, bad: bytes) -> None:
    for value in (prefix + bad, b'{"message_id": "' + prefix.hex().encode() + bad + b'", "customer": {}}'):
        outcome = decode(value, [], CONTEXT)
        assert isinstance(outcome, DeadLetter)
        assert outcome.reason is DlqReason.INVALID_JSON


@PROPERTY_SETTINGS
@given(text=st.text(max_size=60))
def test_text_that_is_not_json_is_invalid_json(text: str) -> None:
    assume(_not_json(text))
    outcome = decode(text.encode(), [], CONTEXT)
    assert isinstance(outcome, DeadLetter)
    assert outcome.reason is DlqReason.INVALID_JSON


@PROPERTY_SETTINGS
@given(raw=st.binary(max_size=80))
def test_any_bytes_decode_to_exactly_one_result(raw: bytes) -> None:
    outcome = decode(raw, [], CONTEXT)
    assert isinstance(outcome, Command | Rejection | DeadLetter)
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        assert isinstance(outcome, DeadLetter) and outcome.reason is DlqReason.INVALID_JSON
        return
    if not isinstance(document, dict):
        assert isinstance(outcome, DeadLetter) and outcome.reason is DlqReason.INVALID_ENVELOPE


@PROPERTY_SETTINGS
@given(document=json_values.filter(lambda value: not isinstance(value, dict)))
def test_json_that_is_not_an_object_is_invalid_envelope(document: Any) -> None:
    outcome = decode(orjson.dumps(document), [], CONTEXT)
    assert isinstance(outcome, DeadLetter)
    assert outcome.reason is DlqReason.INVALID_ENVELOPE


# --- well-formed envelopes never reach the DLQ ----------------------------------------------------------------------

printable: st.SearchStrategy[str] = st.characters(exclude_categories=["Cc", "Cs"])
controls: st.SearchStrategy[str] = st.characters(categories=["Cc"])
identifiers = st.text(printable, min_size=1, max_size=255)
bad_identifiers: st.SearchStrategy[Any] = st.one_of(
    st.text(min_size=256, max_size=300),
    st.tuples(st.text(printable, max_size=20), controls, st.text(printable, max_size=20)).map("".join),
    json_values.filter(lambda value: not isinstance(value, str)),
    st.just(""),
)
metadata_items = st.dictionaries(
    st.sampled_from(["key", "value", "display_in_invoice", "id"]) | st.text(max_size=5), json_values, max_size=4
)
customer_values: st.SearchStrategy[Any] = st.one_of(
    json_values,
    st.lists(metadata_items | json_values, max_size=7),
    st.dictionaries(
        st.sampled_from(sorted(NESTED_FIELDS["billing_configuration"] | NESTED_FIELDS["shipping_address"])),
        json_values | st.sampled_from(["stripe", "adyen", "gocardless", "fr", "FR", "card", "link"]),
        max_size=6,
    ),
    st.sampled_from(["EUR", "usd", "UTC", "Europe/Paris", "fr", "a@b.c", "a@b.c,,", "company", "skip", " ", "\x00"]),
)
customers = st.builds(
    lambda external_id, rest: {**rest, **external_id},
    st.one_of(st.just({}), st.fixed_dictionaries({"external_id": st.text(max_size=10)})),
    st.dictionaries(st.sampled_from(sorted(CUSTOMER_FIELDS)) | st.text(max_size=10), customer_values),
)


def _paths_are_known(errors: dict[str, list[str]]) -> bool:
    for path in errors:
        head, *rest = path.split(".")
        if head in ("base", "occurred_at") and not rest:
            continue
        if head not in CUSTOMER_FIELDS:
            return False
        if head in NESTED_FIELDS and rest and rest[0] not in NESTED_FIELDS[head]:
            return False
        if head in ("metadata", "tax_codes") and rest and not rest[0].isdigit():
            return False
        if head == "metadata" and len(rest) > 1 and rest[1] not in METADATA_FIELDS:
            return False
    return True


@PROPERTY_SETTINGS
@given(
    message_id=identifiers,
    organization_id=identifiers,
    customer=customers,
    occurred_at=st.none() | st.just("2026-11-24T10:15:00Z") | json_values,
    extra=st.dictionaries(
        st.text(max_size=8).filter(lambda k: k not in ("message_id", "organization_id")), json_values
    ),
)
def test_a_well_formed_envelope_never_goes_to_the_dlq(
    message_id: str, organization_id: str, customer: dict[str, Any], occurred_at: Any, extra: dict[str, Any]
) -> None:
    document = {**extra, "message_id": message_id, "organization_id": organization_id, "customer": customer}
    if occurred_at is not None:
        document["occurred_at"] = occurred_at
    value = orjson.dumps(document)
    outcome = decode(value, [], CONTEXT)
    assert isinstance(outcome, Command | Rejection), outcome
    assert (outcome.message_id, outcome.organization_id) == (message_id, organization_id)
    if isinstance(outcome, Rejection):
        assert outcome.errors
        assert all(codes and set(codes) <= ERROR_CODES for codes in outcome.errors.values()), outcome.errors
        assert all(len(codes) == len(set(codes)) for codes in outcome.errors.values())
        assert _paths_are_known(outcome.errors), outcome.errors
        assert outcome.record_as_processed is True
        assert "invalid_signature" not in str(outcome.errors)
    else:
        assert isinstance(customer.get("external_id"), str) and not_blank(customer["external_id"].replace("\x00", ""))
    assert decode(value, [], CONTEXT) == outcome, "decode is deterministic"


@PROPERTY_SETTINGS
@given(field=st.sampled_from(["message_id", "organization_id"]), bad=bad_identifiers, customer=customers)
def test_a_bad_identifier_is_always_invalid_envelope(field: str, bad: Any, customer: dict[str, Any]) -> None:
    document = {"message_id": "m", "organization_id": ORG, "customer": customer, field: bad}
    outcome = decode(orjson.dumps(document), [], CONTEXT)
    assert isinstance(outcome, DeadLetter)
    assert outcome.reason is DlqReason.INVALID_ENVELOPE


# --- valid customers round-trip to customer.created -----------------------------------------------------------------

ADDRESS_FIELDS: Final = ("address_line1", "address_line2", "city", "zipcode", "state")
PLAIN_FIELDS: Final = (
    "firstname",
    "lastname",
    "legal_name",
    "legal_number",
    "tax_identification_number",
    "phone",
    "url",
    "logo_url",
)
COUNTRIES: Final = ("FR", "DE", "US", "GB", "ES", "IT", "JP", "BR", "SN", "CH", "BE", "NL", "CA", "AU", "IN")
CURRENCIES: Final = ("EUR", "USD", "GBP", "JPY", "CHF", "CAD", "AUD", "BRL", "INR", "SEK", "XOF", "XAF", "XPF")
LOCALES: Final = ("fr", "de", "en", "es", "it", "nl", "pt", "sv", "nb", "ja", "zh", "pl")
TIMEZONES: Final = tuple(sorted(zoneinfo.available_timezones() | {"UTC"}))
STRIPE_METHOD_SETS: Final = (
    ["card"],
    ["card", "link"],
    ["link", "card", "sepa_debit"],
    ["sepa_debit"],
    ["us_bank_account", "card"],
    ["bacs_debit"],
    ["boleto", "card", "boleto"],
    ["crypto"],
    ["customer_balance"],
    ["card", "sepa_debit", "us_bank_account", "bacs_debit", "link", "boleto", "crypto"],
)
INVISIBLE: Final = ("\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\x00")
DASHES: Final = ("\u2010", "\u2011", "\u2012", "\u2013", "\u2014", "\u2212", "\ufe63", "\uff0d")
ABSENT: Final = object()


def without_nul(value: str) -> str:
    return value.replace("\x00", "")


@st.composite
def with_nuls(draw: st.DrawFn, text: st.SearchStrategy[str]) -> str:
    value = draw(text)
    for _ in range(draw(st.integers(0, 2))):
        position = draw(st.integers(0, len(value)))
        value = value[:position] + "\x00" + value[position:]
    return value


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Absent (ABSENT), null, or a value."""
    return st.one_of(st.just(ABSENT), st.none(), strategy)


def address_value() -> st.SearchStrategy[Any]:
    blank = st.text(" \t\n", max_size=3)
    return optional(with_nuls(st.text(max_size=30)) | with_nuls(blank))


def country_value() -> st.SearchStrategy[Any]:
    cased = st.sampled_from(COUNTRIES).flatmap(
        lambda code: st.sampled_from([code, code.lower(), code[0] + code[1].lower(), code[0].lower() + code[1]])
    )
    return optional(with_nuls(cased) | st.sampled_from(["", " ", "  "]))


def not_blank(text: str) -> bool:
    """The contract's `NonBlank`: some character outside Unicode White_Space (pydantic-core's `\\S`). Unlike
    `str.isspace`, White_Space leaves out the information separators U+001C to U+001F."""
    return any(not char.isspace() or "\x1c" <= char <= "\x1f" for char in text)


def normalised_address(value: Any) -> str | None:
    if value is ABSENT or value is None:
        return None
    cleaned = without_nul(value)
    return cleaned if cleaned.strip() else None


def normalised_country(value: Any) -> str | None:
    cleaned = normalised_address(value)
    return cleaned.upper() if cleaned is not None else None


@st.composite
def email_lists(draw: st.DrawFn) -> tuple[str, str]:
    """(as written, with invisible characters and dash look-alikes; as stored)."""
    local_chars = string.ascii_letters + string.digits + ".!#$%&'*+/=?^_`{|}~-"
    label = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?", fullmatch=True)
    addresses = []
    for _ in range(draw(st.integers(1, 3))):
        local = draw(st.text(local_chars, min_size=1, max_size=12))
        domain = ".".join(draw(st.lists(label, min_size=1, max_size=3)))
        addresses.append(f"{local}@{domain}")
    stored = ""
    for index, address in enumerate(addresses):
        stored += (draw(st.sampled_from([",", ", ", " ,"])) if index else "") + address
    written = ""
    for char in stored:
        if draw(st.integers(0, 9)) == 0:
            written += draw(st.sampled_from(INVISIBLE))
        written += draw(st.sampled_from(DASHES)) if char == "-" and draw(st.booleans()) else char
    return written, stored


@st.composite
def metadata_lists(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    key_text = st.text(min_size=1, max_size=20).map(without_nul).filter(str.strip)
    keys = draw(st.lists(key_text, max_size=5, unique=True))
    sent, expected = [], []
    for key in keys:
        value = draw(st.text(min_size=1, max_size=100).map(without_nul).filter(str.strip))
        item: dict[str, Any] = {"key": draw(with_nuls(st.just(key))), "value": draw(with_nuls(st.just(value)))}
        display = draw(st.sampled_from([ABSENT, True, False]))
        if display is not ABSENT:
            item["display_in_invoice"] = display
        sent.append(item)
        expected.append({"key": key, "value": value, "display_in_invoice": display is True})
    return sent, expected


@st.composite
def valid_customers(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """A valid Lago customer body and the `customer` object SPEC §6 says `customer.created` carries for it."""
    sent: dict[str, Any] = {}
    expected: dict[str, Any] = {}

    def put(name: str, value: Any, stored: Any) -> None:
        if value is not ABSENT:
            sent[name] = value
        expected[name] = stored

    external_id = draw(with_nuls(st.text(min_size=1, max_size=40).map(without_nul).filter(str.strip)))
    put("external_id", external_id, without_nul(external_id))
    name = draw(optional(with_nuls(st.text(max_size=255))))
    put("name", name, without_nul(name) if isinstance(name, str) else None)
    for field in PLAIN_FIELDS:
        value = draw(optional(with_nuls(st.text(max_size=40))))
        put(field, value, without_nul(value) if isinstance(value, str) else None)
    for field in ADDRESS_FIELDS:
        value = draw(address_value())
        put(field, value, normalised_address(value))
    country = draw(country_value())
    put("country", country, normalised_country(country))

    email = draw(optional(email_lists()))
    put("email", email[0] if isinstance(email, tuple) else email, email[1] if isinstance(email, tuple) else None)
    currency = draw(optional(st.sampled_from(CURRENCIES)))
    put("currency", currency, currency if isinstance(currency, str) else None)
    timezone = draw(optional(st.sampled_from(TIMEZONES)))
    put("timezone", timezone, timezone if isinstance(timezone, str) else None)
    expected["applicable_timezone"] = expected["timezone"] or "UTC"
    customer_type = draw(optional(st.sampled_from(["company", "individual"])))
    put("customer_type", customer_type, customer_type if isinstance(customer_type, str) else None)
    term = draw(optional(st.integers(0, 2**31 - 1)))
    put("net_payment_term", term, term if isinstance(term, int) else None)
    finalize = draw(optional(st.sampled_from(["inherit", "finalize", "skip"])))
    put("finalize_zero_amount_invoice", finalize, finalize if isinstance(finalize, str) else "inherit")

    tax_codes = draw(optional(st.lists(with_nuls(st.sampled_from(["vat_20", "vat_5", "eco", "IT-22"])), max_size=5)))
    put(
        "tax_codes",
        tax_codes,
        list(dict.fromkeys(without_nul(code) for code in tax_codes)) if isinstance(tax_codes, list) else [],
    )
    metadata = draw(optional(metadata_lists()))
    put(
        "metadata",
        metadata[0] if isinstance(metadata, tuple) else metadata,
        metadata[1] if isinstance(metadata, tuple) else [],
    )

    shipping = draw(st.sampled_from([ABSENT, None, "object"]))
    shipping_sent: dict[str, Any] = {}
    for field in (*ADDRESS_FIELDS, "country"):
        value = draw(country_value() if field == "country" else address_value())
        if value is not ABSENT and shipping == "object":
            shipping_sent[field] = value
    put(
        "shipping_address",
        shipping_sent if shipping == "object" else shipping,
        {
            field: (normalised_country if field == "country" else normalised_address)(shipping_sent.get(field, ABSENT))
            for field in (*ADDRESS_FIELDS, "country")
        },
    )
    put("billing_configuration", *draw(billing_configurations()))
    return sent, expected


@st.composite
def billing_configurations(draw: st.DrawFn) -> tuple[Any, dict[str, Any]]:
    empty = dict.fromkeys(
        (
            "invoice_grace_period",
            "payment_provider",
            "payment_provider_code",
            "provider_customer_id",
            "provider_payment_methods",
            "document_locale",
        )
    )
    shape = draw(st.sampled_from([ABSENT, None, "object"]))
    if shape != "object":
        return shape, empty
    sent: dict[str, Any] = {}
    grace = draw(optional(st.integers(0, 2**31 - 1)))
    locale = draw(optional(st.sampled_from(LOCALES)))
    mode = draw(st.sampled_from(["any", "link-by-sync", "link-by-customer-id"]))
    providers = st.sampled_from(["stripe", "adyen", "gocardless"])
    provider = draw(optional(providers) if mode == "any" else providers)
    sync_with_provider = draw(st.just(True) if mode == "link-by-sync" else optional(st.booleans()))
    sync = draw(optional(st.booleans()))
    customer_ids = with_nuls(st.text(min_size=1, max_size=20).filter(without_nul))
    customer_id = draw(customer_ids if mode == "link-by-customer-id" else optional(customer_ids))
    links = isinstance(provider, str) and (sync_with_provider is True or isinstance(customer_id, str))
    if links:
        # Linking looks the connection up: the code, when given, names the organization's connection.
        code = draw(st.sampled_from([ABSENT, None, CODES[str(provider)]]))
    else:
        code = draw(optional(with_nuls(st.text(max_size=20))))
    methods: Any = ABSENT
    if provider in ("stripe", ABSENT):
        methods = draw(st.sampled_from([ABSENT, *STRIPE_METHOD_SETS]))
    else:
        methods = draw(st.sampled_from([ABSENT, None, [], ["link"], ["customer_balance", "card"]]))
    for name, value in (
        ("invoice_grace_period", grace),
        ("document_locale", locale),
        ("payment_provider", provider),
        ("payment_provider_code", code),
        ("provider_customer_id", customer_id),
        ("sync", sync),
        ("sync_with_provider", sync_with_provider),
        ("provider_payment_methods", methods),
    ):
        if value is not ABSENT:
            sent[name] = value
    unlinked = provider is None  # explicit `payment_provider: null` unlinks (SPEC §9)
    expected = {
        "invoice_grace_period": grace if isinstance(grace, int) else None,
        "payment_provider": provider if isinstance(provider, str) else None,
        "payment_provider_code": without_nul(code) if isinstance(code, str) and not unlinked else None,
        "provider_customer_id": without_nul(customer_id) if isinstance(customer_id, str) and not unlinked else None,
        "provider_payment_methods": (
            list(dict.fromkeys(methods)) if provider == "stripe" and isinstance(methods, list) else None
        ),
        "document_locale": locale if isinstance(locale, str) else None,
    }
    return sent, expected


@PROPERTY_SETTINGS
@given(case=valid_customers(), occurred_at=st.sampled_from([None, "2026-11-24T10:15:00Z", "2026-11-24T11:15:00+01:00"]))
def test_a_valid_customer_is_accepted_and_round_trips_to_customer_created(
    case: tuple[dict[str, Any], dict[str, Any]], occurred_at: str | None
) -> None:
    sent, expected = case
    document: dict[str, Any] = {"message_id": "msg-props", "organization_id": ORG, "customer": sent}
    if occurred_at is not None:
        document["occurred_at"] = occurred_at
    command = decode(orjson.dumps(document), [], CONTEXT)
    assert isinstance(command, Command), command
    assert command.unknown_fields == 0
    if occurred_at is not None:
        assert command.occurred_at == datetime(2026, 11, 24, 10, 15, tzinfo=UTC)

    state = new_customer(LAGO_ID, ORG, command.external_id, NOW, patch_of(command.customer))
    event = build_event(
        event_id=EVENT_ID,
        event_type="customer.created",
        organization_id=ORG,
        message_id=command.message_id,
        external_id=command.external_id,
        occurred_at=NOW,
        traceparent=None,
        customer=state,
    )
    parsed = CustomerCreated.model_validate_json(event.payload)

    assert (parsed.event_id, parsed.event_type, parsed.organization_id) == (EVENT_ID, "customer.created", ORG)
    assert (parsed.message_id, parsed.external_id, parsed.occurred_at) == ("msg-props", expected["external_id"], NOW)
    assert event.key == f"{ORG}:{expected['external_id']}"
    customer = parsed.customer.model_dump()
    assert customer.pop("lago_id") == LAGO_ID
    assert customer.pop("created_at") == NOW
    assert customer.pop("updated_at") == NOW
    assert customer == expected

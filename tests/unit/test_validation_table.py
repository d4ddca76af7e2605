"""SPEC §2, §3, §7 and §11 as tables: every rule and error code, with the boundary value on each side.

Each case decodes a whole command record through `contract.decode` (the worker's single entry point) and asserts the
exact outcome: a `Command`, or a `Rejection` with exactly the expected `{path: [codes]}`, or a `DeadLetter` with its
reason. What a valid command will write is read through `domain.customer.patch_of`.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final

import orjson
import pytest
from pydantic import SecretStr

from worker.contract.codes import DlqReason, ErrorCode, Errors
from worker.contract.connections import Connection, ConnectionConfig, Connections, LookupFailure
from worker.contract.decode import MAX_VALUE_BYTES, Command, DeadLetter, DecodeContext, Decoded, Rejection, decode
from worker.contract.links import LinkRequest, resolve_connection
from worker.domain.customer import StoredMetadataItem, patch_of
from worker.security import SigningKeys

ORG: Final = "org_acme"
OTHER_ORG: Final = "org_other"
EXTERNAL_ID: Final = "cus_001"

MANDATORY: Final = "value_is_mandatory"
INVALID: Final = "value_is_invalid"
TOO_LONG: Final = "value_is_too_long"
OUT_OF_RANGE: Final = "value_is_out_of_range"
ALREADY_EXIST: Final = "value_already_exist"
INVALID_VALUE: Final = "invalid_value"
INVALID_COUNT: Final = "invalid_count"
BAD_EMAIL: Final = "invalid_email_format"
BAD_TIMEZONE: Final = "invalid_timezone"
BAD_COUNTRY: Final = "not_a_valid_country_code"
BAD_LANGUAGE: Final = "not_a_valid_language_code"
NOT_FOUND: Final = "payment_provider_not_found"
CODE_MISSING: Final = "payment_provider_code_missing"

METHODS: Final = "billing_configuration.provider_payment_methods"
ADDRESS_FIELDS: Final = ("address_line1", "address_line2", "city", "zipcode", "state")


def connection(organization_id: str, code: str, provider: str) -> Connection:
    config = ConnectionConfig.model_validate(
        {"organization_id": organization_id, "code": code, "provider": provider, "secret_env": "UNUSED"}
    )
    return Connection(config=config, secret=SecretStr(f"secret-of-{code}"))


# org_acme: one Stripe connection, two Adyen connections, no GoCardless one. org_other: its own Stripe connection.
REGISTRY: Final = Connections(
    [
        connection(ORG, "stripe_main", "stripe"),
        connection(ORG, "adyen_eu", "adyen"),
        connection(ORG, "adyen_us", "adyen"),
        connection(OTHER_ORG, "stripe_other", "stripe"),
    ]
)
CONTEXT: Final = DecodeContext(signing_keys=SigningKeys({}), connections=REGISTRY)


def envelope(customer: Any, **fields: Any) -> bytes:
    document: dict[str, Any] = {"message_id": "msg-1", "organization_id": ORG, "customer": customer}
    document.update(fields)
    return orjson.dumps(document)


def body(**fields: Any) -> dict[str, Any]:
    """A customer body with an external id and the given fields."""
    return {"external_id": EXTERNAL_ID, **fields}


def billing(**fields: Any) -> dict[str, Any]:
    return body(billing_configuration=fields)


def shipping(**fields: Any) -> dict[str, Any]:
    return body(shipping_address=fields)


def item(key: Any = "segment", value: Any = "enterprise", **fields: Any) -> dict[str, Any]:
    return {"key": key, "value": value, **fields}


def run(customer: Any, context: DecodeContext = CONTEXT, **fields: Any) -> Decoded:
    return decode(envelope(customer, **fields), [], context)


def accepted(customer: Any, context: DecodeContext = CONTEXT, **fields: Any) -> Command:
    outcome = run(customer, context, **fields)
    assert isinstance(outcome, Command), outcome
    return outcome


def rejected(customer: Any, context: DecodeContext = CONTEXT, **fields: Any) -> Rejection:
    outcome = run(customer, context, **fields)
    assert isinstance(outcome, Rejection), outcome
    assert outcome.errors, "a rejection must carry errors"
    return outcome


def normalised(errors: Errors) -> dict[str, list[str]]:
    return {path: sorted(codes) for path, codes in errors.items()}


def assert_outcome(customer: Any, expected: Errors, **fields: Any) -> Decoded:
    outcome = run(customer, **fields)
    if expected:
        assert isinstance(outcome, Rejection), f"expected a rejection {expected}, got {outcome}"
        assert normalised(outcome.errors) == normalised(expected)
        assert outcome.record_as_processed is True
    else:
        assert isinstance(outcome, Command), f"expected a command, got {outcome}"
    return outcome


# --- §3: every rule, both sides of every boundary -----------------------------------------------------------------

RULE_CASES = [
    # external_id
    pytest.param(body(), {}, id="external_id-given"),
    pytest.param({"name": "x"}, {"external_id": [MANDATORY]}, id="external_id-missing"),
    pytest.param(body(external_id=None), {"external_id": [MANDATORY]}, id="external_id-null"),
    pytest.param(body(external_id=""), {"external_id": [MANDATORY]}, id="external_id-empty"),
    pytest.param(body(external_id="  \t "), {"external_id": [MANDATORY]}, id="external_id-whitespace"),
    pytest.param(body(external_id="\x00"), {"external_id": [MANDATORY]}, id="external_id-only-nul"),
    pytest.param(body(external_id=" cus_1 "), {}, id="external_id-padded-ok"),
    # name
    pytest.param(body(name="n" * 255), {}, id="name-255"),
    pytest.param(body(name="n" * 256), {"name": [TOO_LONG]}, id="name-256"),
    pytest.param(body(name="é" * 255), {}, id="name-255-multibyte"),
    pytest.param(body(name="n" * 255 + "\x00" * 3), {}, id="name-255-plus-nul"),
    pytest.param(body(name="n" * 128 + "\x00" + "n" * 128), {"name": [TOO_LONG]}, id="name-256-plus-nul"),
    pytest.param(body(name=None), {}, id="name-null"),
    # metadata count
    pytest.param(body(metadata=[item(f"k{i}") for i in range(5)]), {}, id="metadata-5-items"),
    pytest.param(
        body(metadata=[item(f"k{i}") for i in range(6)]), {"metadata": [INVALID_COUNT]}, id="metadata-6-items"
    ),
    pytest.param(body(metadata=[]), {}, id="metadata-empty-list"),
    pytest.param(body(metadata=None), {}, id="metadata-null"),
    # metadata.N.key
    pytest.param(body(metadata=[item("k" * 20)]), {}, id="metadata-key-20"),
    pytest.param(body(metadata=[item("k" * 21)]), {"metadata.0.key": [TOO_LONG]}, id="metadata-key-21"),
    pytest.param(body(metadata=[item("k" * 20 + "\x00")]), {}, id="metadata-key-20-plus-nul"),
    pytest.param(body(metadata=[item("")]), {"metadata.0.key": [MANDATORY]}, id="metadata-key-empty"),
    pytest.param(body(metadata=[item("   ")]), {"metadata.0.key": [MANDATORY]}, id="metadata-key-blank"),
    pytest.param(body(metadata=[item(None)]), {"metadata.0.key": [MANDATORY]}, id="metadata-key-null"),
    pytest.param(body(metadata=[{"value": "v"}]), {"metadata.0.key": [MANDATORY]}, id="metadata-key-missing"),
    # metadata.N.value
    pytest.param(body(metadata=[item(value="v" * 100)]), {}, id="metadata-value-100"),
    pytest.param(body(metadata=[item(value="v" * 101)]), {"metadata.0.value": [TOO_LONG]}, id="metadata-value-101"),
    pytest.param(body(metadata=[item(value="")]), {"metadata.0.value": [MANDATORY]}, id="metadata-value-empty"),
    pytest.param(body(metadata=[item(value=" ")]), {"metadata.0.value": [MANDATORY]}, id="metadata-value-blank"),
    pytest.param(body(metadata=[item(value=None)]), {"metadata.0.value": [MANDATORY]}, id="metadata-value-null"),
    pytest.param(body(metadata=[{"key": "k"}]), {"metadata.0.value": [MANDATORY]}, id="metadata-value-missing"),
    # metadata.N.display_in_invoice
    pytest.param(body(metadata=[item(display_in_invoice=True)]), {}, id="metadata-display-true"),
    pytest.param(body(metadata=[item(display_in_invoice=False)]), {}, id="metadata-display-false"),
    # metadata items that are not objects
    pytest.param(body(metadata=[item(), None]), {"metadata.1": [INVALID]}, id="metadata-item-null"),
    pytest.param(body(metadata=["k=v"]), {"metadata.0": [INVALID]}, id="metadata-item-string"),
    # repeated metadata key: every later occurrence, never the first
    pytest.param(
        body(metadata=[item("a"), item("b"), item("a"), item("a")]),
        {"metadata.2.key": [ALREADY_EXIST], "metadata.3.key": [ALREADY_EXIST]},
        id="metadata-key-repeated",
    ),
    pytest.param(body(metadata=[item("a"), item("A")]), {}, id="metadata-key-case-differs"),
    # net_payment_term
    pytest.param(body(net_payment_term=0), {}, id="net_payment_term-0"),
    pytest.param(body(net_payment_term=-1), {"net_payment_term": [OUT_OF_RANGE]}, id="net_payment_term-minus-1"),
    pytest.param(body(net_payment_term=None), {}, id="net_payment_term-null"),
    pytest.param(body(net_payment_term=2**31 - 1), {}, id="net_payment_term-int4-max"),
    pytest.param(body(net_payment_term=2**31), {"net_payment_term": [OUT_OF_RANGE]}, id="net_payment_term-over-int4"),
    pytest.param(body(net_payment_term="30"), {"net_payment_term": [INVALID]}, id="net_payment_term-string"),
    pytest.param(body(net_payment_term=True), {"net_payment_term": [INVALID]}, id="net_payment_term-true"),
    pytest.param(body(net_payment_term=30.5), {"net_payment_term": [INVALID]}, id="net_payment_term-float"),
    # billing_configuration.invoice_grace_period
    pytest.param(billing(invoice_grace_period=0), {}, id="invoice_grace_period-0"),
    pytest.param(
        billing(invoice_grace_period=-1),
        {"billing_configuration.invoice_grace_period": [OUT_OF_RANGE]},
        id="invoice_grace_period-minus-1",
    ),
    pytest.param(billing(invoice_grace_period=None), {}, id="invoice_grace_period-null"),
    pytest.param(
        billing(invoice_grace_period="3"),
        {"billing_configuration.invoice_grace_period": [INVALID]},
        id="invoice_grace_period-string",
    ),
    pytest.param(
        billing(invoice_grace_period=True),
        {"billing_configuration.invoice_grace_period": [INVALID]},
        id="invoice_grace_period-true",
    ),
    # customer_type
    pytest.param(body(customer_type="company"), {}, id="customer_type-company"),
    pytest.param(body(customer_type="individual"), {}, id="customer_type-individual"),
    pytest.param(body(customer_type=None), {}, id="customer_type-null"),
    pytest.param(body(customer_type="partner"), {"customer_type": [INVALID]}, id="customer_type-partner"),
    pytest.param(body(customer_type="Company"), {"customer_type": [INVALID]}, id="customer_type-capitalised"),
    pytest.param(body(customer_type=""), {"customer_type": [INVALID]}, id="customer_type-empty"),
    # finalize_zero_amount_invoice
    pytest.param(body(finalize_zero_amount_invoice="inherit"), {}, id="finalize-inherit"),
    pytest.param(body(finalize_zero_amount_invoice="finalize"), {}, id="finalize-finalize"),
    pytest.param(body(finalize_zero_amount_invoice="skip"), {}, id="finalize-skip"),
    pytest.param(body(finalize_zero_amount_invoice=None), {}, id="finalize-null"),
    pytest.param(
        body(finalize_zero_amount_invoice="never"),
        {"finalize_zero_amount_invoice": [INVALID_VALUE]},
        id="finalize-never",
    ),
    pytest.param(
        body(finalize_zero_amount_invoice="SKIP"),
        {"finalize_zero_amount_invoice": [INVALID_VALUE]},
        id="finalize-upper",
    ),
    # billing_configuration.payment_provider (no link: neither sync_with_provider nor provider_customer_id)
    pytest.param(billing(payment_provider="stripe"), {}, id="payment_provider-stripe"),
    pytest.param(billing(payment_provider="adyen"), {}, id="payment_provider-adyen"),
    pytest.param(billing(payment_provider="gocardless"), {}, id="payment_provider-gocardless"),
    pytest.param(billing(payment_provider=None), {}, id="payment_provider-null"),
    pytest.param(
        billing(payment_provider="paypal"),
        {"billing_configuration.payment_provider": [INVALID]},
        id="payment_provider-paypal",
    ),
    pytest.param(
        billing(payment_provider="Stripe"),
        {"billing_configuration.payment_provider": [INVALID]},
        id="payment_provider-capitalised",
    ),
    # billing_configuration.provider_payment_methods (Stripe)
    *[
        pytest.param(billing(payment_provider="stripe", provider_payment_methods=[method]), {}, id=f"methods-{method}")
        for method in ("card", "sepa_debit", "us_bank_account", "bacs_debit", "boleto", "crypto", "customer_balance")
    ],
    pytest.param(
        billing(payment_provider="stripe", provider_payment_methods=["link"]), {METHODS: [INVALID]}, id="methods-link"
    ),
    pytest.param(
        billing(payment_provider="stripe", provider_payment_methods=["card", "link"]), {}, id="methods-card-link"
    ),
    pytest.param(
        billing(payment_provider="stripe", provider_payment_methods=["link", "card", "sepa_debit"]),
        {},
        id="methods-link-card-sepa",
    ),
    pytest.param(
        billing(payment_provider="stripe", provider_payment_methods=["link", "sepa_debit"]),
        {METHODS: [INVALID]},
        id="methods-link-without-card",
    ),
    pytest.param(
        billing(payment_provider="stripe", provider_payment_methods=["customer_balance", "card"]),
        {METHODS: [INVALID]},
        id="methods-customer_balance-with-card",
    ),
    pytest.param(
        billing(payment_provider="stripe", provider_payment_methods=["crypto", "customer_balance"]),
        {METHODS: [INVALID]},
        id="methods-customer_balance-with-crypto",
    ),
    pytest.param(
        billing(payment_provider="stripe", provider_payment_methods=["card", "card"]), {}, id="methods-repeated"
    ),
    pytest.param(
        billing(payment_provider="stripe", provider_payment_methods=["card", "paypal"]),
        {METHODS: [INVALID]},
        id="methods-unknown",
    ),
    pytest.param(
        billing(payment_provider="stripe", provider_payment_methods=["CARD"]),
        {METHODS: [INVALID]},
        id="methods-upper-case",
    ),
    pytest.param(
        billing(payment_provider="stripe", provider_payment_methods=[]), {METHODS: [MANDATORY]}, id="methods-empty"
    ),
    pytest.param(
        billing(payment_provider="stripe", provider_payment_methods=None), {METHODS: [MANDATORY]}, id="methods-null"
    ),
    pytest.param(billing(provider_payment_methods=[]), {METHODS: [MANDATORY]}, id="methods-empty-provider-omitted"),
    pytest.param(billing(payment_provider="adyen", provider_payment_methods=[]), {}, id="methods-ignored-for-adyen"),
    pytest.param(
        billing(payment_provider="gocardless", provider_payment_methods=["link"]),
        {},
        id="methods-ignored-for-gocardless",
    ),
    # country, billing and shipping
    pytest.param(body(country="FR"), {}, id="country-upper"),
    pytest.param(body(country="fr"), {}, id="country-lower"),
    pytest.param(body(country="ZZ"), {"country": [BAD_COUNTRY]}, id="country-unknown"),
    pytest.param(body(country="FRA"), {"country": [BAD_COUNTRY]}, id="country-alpha3"),
    pytest.param(body(country="F"), {"country": [BAD_COUNTRY]}, id="country-one-letter"),
    pytest.param(shipping(country="de"), {}, id="shipping-country-lower"),
    pytest.param(shipping(country="ZZ"), {"shipping_address.country": [BAD_COUNTRY]}, id="shipping-country-unknown"),
    # billing_configuration.document_locale
    pytest.param(billing(document_locale="fr"), {}, id="document_locale-fr"),
    pytest.param(billing(document_locale="de"), {}, id="document_locale-de"),
    pytest.param(billing(document_locale=None), {}, id="document_locale-null"),
    pytest.param(
        billing(document_locale="fra"),
        {"billing_configuration.document_locale": [BAD_LANGUAGE]},
        id="document_locale-fra",
    ),
    pytest.param(
        billing(document_locale="xx"),
        {"billing_configuration.document_locale": [BAD_LANGUAGE]},
        id="document_locale-xx",
    ),
    # currency
    pytest.param(body(currency="EUR"), {}, id="currency-EUR"),
    pytest.param(body(currency="USD"), {}, id="currency-USD"),
    pytest.param(body(currency="XOF"), {}, id="currency-XOF-circulating-x-code"),
    pytest.param(body(currency=None), {}, id="currency-null"),
    *[
        pytest.param(body(currency=code), {"currency": [INVALID]}, id=f"currency-{code or 'empty'}")
        for code in ("usd", "Eur", "XAU", "XTS", "XXX", "XDR", "BOV", "CHE", "EURO", "ZZZ", "")
    ],
    # timezone
    pytest.param(body(timezone="UTC"), {}, id="timezone-UTC"),
    pytest.param(body(timezone="Europe/Paris"), {}, id="timezone-Europe-Paris"),
    pytest.param(body(timezone="America/Argentina/Buenos_Aires"), {}, id="timezone-three-parts"),
    pytest.param(body(timezone=None), {}, id="timezone-null"),
    pytest.param(body(timezone="Mars/Olympus"), {"timezone": [BAD_TIMEZONE]}, id="timezone-Mars"),
    pytest.param(body(timezone="Europe/paris"), {"timezone": [BAD_TIMEZONE]}, id="timezone-wrong-case"),
    pytest.param(body(timezone="+02:00"), {"timezone": [BAD_TIMEZONE]}, id="timezone-offset"),
    pytest.param(body(timezone=""), {"timezone": [BAD_TIMEZONE]}, id="timezone-empty"),
    # email
    pytest.param(body(email="john.doe@example.com"), {}, id="email-one"),
    pytest.param(body(email="a@b.c,d@e.f"), {}, id="email-list"),
    pytest.param(body(email="a@b.c, d@e.f ,g@h.i"), {}, id="email-list-spaces"),
    pytest.param(body(email="billing+eu@sub.example.co.uk"), {}, id="email-plus-subdomains"),
    pytest.param(body(email="root@localhost"), {}, id="email-no-dot-domain"),
    pytest.param(body(email=None), {}, id="email-null"),
    *[
        pytest.param(body(email=value), {"email": [BAD_EMAIL]}, id=f"email-invalid-{label}")
        for label, value in (
            ("double-comma", "a@b.c,,"),
            ("trailing-comma", "a@b.c,"),
            ("leading-comma", ",a@b.c"),
            ("no-at", "not-an-email"),
            ("no-domain", "a@"),
            ("no-local", "@b.c"),
            ("space-inside", "a b@c.d"),
            ("two-ats", "a@b@c.d"),
            ("domain-dash-edge", "a@-b.c"),
            ("semicolon-list", "a@b.c;d@e.f"),
        )
    ],
    # tax_codes
    pytest.param(body(tax_codes=["vat_20", "eco"]), {}, id="tax_codes-two"),
    pytest.param(body(tax_codes=[]), {}, id="tax_codes-empty-list"),
    pytest.param(body(tax_codes=None), {}, id="tax_codes-null"),
    pytest.param(body(tax_codes=["vat_20", "vat_20"]), {}, id="tax_codes-duplicate"),
    pytest.param(body(tax_codes=["vat_20", " "]), {"tax_codes.1": [INVALID]}, id="tax_codes-blank-item"),
    pytest.param(
        body(tax_codes=["", "vat_20", ""]),
        {"tax_codes.0": [INVALID], "tax_codes.2": [INVALID]},
        id="tax_codes-empty-items",
    ),
    pytest.param(body(tax_codes=[None]), {"tax_codes.0": [INVALID]}, id="tax_codes-null-item"),
    pytest.param(body(tax_codes="vat_20"), {"tax_codes": [INVALID]}, id="tax_codes-not-a-list"),
    # sync flags: null means false
    pytest.param(billing(sync=None, sync_with_provider=None), {}, id="sync-flags-null"),
    pytest.param(billing(sync=True, sync_with_provider=False), {}, id="sync-flags-booleans"),
    # nested objects
    pytest.param(body(shipping_address=None), {}, id="shipping_address-null"),
    pytest.param(body(shipping_address={}), {}, id="shipping_address-empty"),
    pytest.param(body(billing_configuration=None), {}, id="billing_configuration-null"),
    pytest.param(body(billing_configuration={}), {}, id="billing_configuration-empty"),
]


@pytest.mark.parametrize(("customer", "expected"), RULE_CASES)
def test_rule(customer: dict[str, Any], expected: Errors) -> None:
    assert_outcome(customer, expected)


# --- §3: a value of the wrong JSON type is value_is_invalid, for every field --------------------------------------

WRONG_VALUES: Final[dict[str, tuple[Any, ...]]] = {
    "string": (123, 1.5, True, ["x"], {"x": "y"}),
    "integer": ("30", 1.5, True, ["1"], {"n": 1}),
    "boolean": ("true", 1, 0, [True], {"b": True}),
    "list": ("vat_20", 1, True, {"0": "x"}),
    "object": ("x", 1, True, []),
}

TOP_LEVEL_STRINGS: Final = (
    "external_id",
    "name",
    "firstname",
    "lastname",
    "legal_name",
    "legal_number",
    "tax_identification_number",
    "phone",
    "url",
    "logo_url",
    "email",
    "address_line1",
    "address_line2",
    "city",
    "zipcode",
    "state",
    "country",
    "currency",
    "timezone",
    "customer_type",
    "finalize_zero_amount_invoice",
)

FIELD_KINDS: Final[tuple[tuple[str, str], ...]] = (
    *((name, "string") for name in TOP_LEVEL_STRINGS),
    ("net_payment_term", "integer"),
    ("tax_codes", "list"),
    ("tax_codes.0", "string"),
    ("metadata", "list"),
    ("metadata.0", "object"),
    ("metadata.0.key", "string"),
    ("metadata.0.value", "string"),
    ("metadata.0.display_in_invoice", "boolean"),
    ("shipping_address", "object"),
    *((f"shipping_address.{name}", "string") for name in (*ADDRESS_FIELDS, "country")),
    ("billing_configuration", "object"),
    ("billing_configuration.invoice_grace_period", "integer"),
    ("billing_configuration.document_locale", "string"),
    ("billing_configuration.payment_provider", "string"),
    ("billing_configuration.payment_provider_code", "string"),
    ("billing_configuration.provider_customer_id", "string"),
    ("billing_configuration.sync", "boolean"),
    ("billing_configuration.sync_with_provider", "boolean"),
    ("billing_configuration.provider_payment_methods", "list"),
    ("billing_configuration.provider_payment_methods.0", "string"),
)


def with_value_at(path: str, value: Any) -> dict[str, Any]:
    """A valid body whose field at `path` holds `value`; list indexes in the path are items of one-item lists."""
    document = body()
    parts = path.split(".")
    if parts[0] == "metadata" and len(parts) == 3:
        document["metadata"] = [{**item(), parts[2]: value}]
    elif parts[0] == "metadata" and len(parts) == 2:
        document["metadata"] = [value]
    elif parts[0] == "tax_codes" and len(parts) == 2:
        document["tax_codes"] = [value]
    elif parts[-1] == "0" and parts[0] == "billing_configuration":
        document["billing_configuration"] = {"payment_provider": "stripe", parts[1]: [value]}
    elif len(parts) == 2:
        document[parts[0]] = {parts[1]: value}
    else:
        document[path] = value
    return document


WRONG_TYPE_CASES = [
    pytest.param(path, value, id=f"{path}-{type(value).__name__}")
    for path, kind in FIELD_KINDS
    for value in WRONG_VALUES[kind]
]


@pytest.mark.parametrize(("path", "value"), WRONG_TYPE_CASES)
def test_wrong_json_type_is_value_is_invalid(path: str, value: Any) -> None:
    outcome = rejected(with_value_at(path, value))
    assert outcome.errors == {path: [INVALID]}


def test_every_field_of_the_customer_model_has_a_wrong_type_case() -> None:
    from worker.contract.customer import BILLING_FIELDS, CUSTOMER_FIELDS, METADATA_FIELDS, SHIPPING_FIELDS

    covered = {path for path, _ in FIELD_KINDS}
    expected = (
        set(CUSTOMER_FIELDS)
        | {f"shipping_address.{name}" for name in SHIPPING_FIELDS}
        | {f"billing_configuration.{name}" for name in BILLING_FIELDS}
        | {f"metadata.0.{name}" for name in METADATA_FIELDS}
    )
    assert expected <= covered, f"fields without a wrong-type case: {sorted(expected - covered)}"


def test_wrong_type_external_id_leaves_the_rejection_without_external_id() -> None:
    assert rejected(body(external_id=123)).external_id is None


# --- several errors at once ---------------------------------------------------------------------------------------


def test_all_errors_of_a_command_are_reported_together() -> None:
    customer = {
        "name": "n" * 256,
        "email": "a@b.c,,",
        "currency": "usd",
        "timezone": "Mars/Olympus",
        "country": "ZZ",
        "customer_type": "partner",
        "net_payment_term": -1,
        "finalize_zero_amount_invoice": "never",
        "tax_codes": ["ok", " "],
        "metadata": [item("a"), item("a", value="v" * 101), item("k" * 21, value=None)],
        "shipping_address": {"country": "XX", "city": 7},
        "billing_configuration": {
            "invoice_grace_period": "3",
            "document_locale": "xx",
            "payment_provider": "stripe",
            "provider_payment_methods": ["link"],
            "sync": "true",
        },
    }
    outcome = rejected(customer, occurred_at="yesterday")
    assert normalised(outcome.errors) == {
        "external_id": [MANDATORY],
        "occurred_at": [INVALID],
        "name": [TOO_LONG],
        "email": [BAD_EMAIL],
        "currency": [INVALID],
        "timezone": [BAD_TIMEZONE],
        "country": [BAD_COUNTRY],
        "customer_type": [INVALID],
        "net_payment_term": [OUT_OF_RANGE],
        "finalize_zero_amount_invoice": [INVALID_VALUE],
        "tax_codes.1": [INVALID],
        "metadata.1.key": [ALREADY_EXIST],
        "metadata.1.value": [TOO_LONG],
        "metadata.2.key": [TOO_LONG],
        "metadata.2.value": [MANDATORY],
        "shipping_address.country": [BAD_COUNTRY],
        "shipping_address.city": [INVALID],
        "billing_configuration.invoice_grace_period": [INVALID],
        "billing_configuration.document_locale": [BAD_LANGUAGE],
        METHODS: [INVALID],
        "billing_configuration.sync": [INVALID],
    }
    assert outcome.external_id is None


def test_a_lookup_failure_is_reported_with_a_cross_field_error() -> None:
    customer = billing(payment_provider="gocardless", sync_with_provider=True, provider_payment_methods=[])
    assert rejected(customer).errors == {"base": [NOT_FOUND]}
    customer = billing(payment_provider="stripe", payment_provider_code="nope", provider_customer_id="c", sync=True)
    customer["billing_configuration"]["provider_payment_methods"] = ["link"]
    assert rejected(customer).errors == {METHODS: [INVALID], "base": [NOT_FOUND]}


def test_a_lookup_failure_is_reported_with_the_other_errors() -> None:
    customer = billing(payment_provider="gocardless", sync_with_provider=True) | {"currency": "usd"}
    assert rejected(customer).errors == {"currency": [INVALID], "base": [NOT_FOUND]}


def test_too_many_metadata_items_still_reports_item_errors() -> None:
    items = [item("k" * 21), *(item(f"k{i}") for i in range(5))]
    assert normalised(rejected(body(metadata=items)).errors) == {
        "metadata": [INVALID_COUNT],
        "metadata.0.key": [TOO_LONG],
    }


@pytest.mark.parametrize("literal", ["100000000000000000000", "-100000000000000000000"])
def test_integer_beyond_64_bits_is_out_of_range(literal: str) -> None:
    value = b'{"message_id":"m","organization_id":"o","customer":{"external_id":"x","net_payment_term":'
    outcome = decode(value + literal.encode() + b"}}", [], CONTEXT)
    assert isinstance(outcome, Rejection)
    assert outcome.errors == {"net_payment_term": [OUT_OF_RANGE]}


def test_integer_at_the_64_bit_edge_is_out_of_range() -> None:
    for literal in (b"9223372036854775807", b"-9223372036854775808"):
        value = b'{"message_id":"m","organization_id":"o","customer":{"external_id":"x","net_payment_term":'
        outcome = decode(value + literal + b"}}", [], CONTEXT)
        assert isinstance(outcome, Rejection)
        assert outcome.errors == {"net_payment_term": [OUT_OF_RANGE]}


# --- absent versus null (SPEC §4), read through patch_of ----------------------------------------------------------

PATCH_CASES = [
    pytest.param(body(), {}, id="only-external-id"),
    pytest.param(body(name=None), {"name": None}, id="name-null-clears"),
    pytest.param(body(name="Acme"), {"name": "Acme"}, id="name-set"),
    pytest.param(body(net_payment_term=None), {"net_payment_term": None}, id="net_payment_term-null"),
    pytest.param(
        body(finalize_zero_amount_invoice=None),
        {"finalize_zero_amount_invoice": "inherit"},
        id="finalize-null-is-inherit",
    ),
    pytest.param(body(tax_codes=None), {"tax_codes": ()}, id="tax_codes-null-clears"),
    pytest.param(body(tax_codes=[]), {"tax_codes": ()}, id="tax_codes-empty-clears"),
    pytest.param(body(tax_codes=["b", "a", "b"]), {"tax_codes": ("b", "a")}, id="tax_codes-duplicates-collapse"),
    pytest.param(body(metadata=None), {"metadata": ()}, id="metadata-null-clears"),
    pytest.param(body(metadata=[]), {"metadata": ()}, id="metadata-empty-clears"),
    pytest.param(
        body(metadata=[item("a", "1"), item("b", "2", display_in_invoice=True)]),
        {
            "metadata": (
                StoredMetadataItem(key="a", value="1", display_in_invoice=False),
                StoredMetadataItem(key="b", value="2", display_in_invoice=True),
            )
        },
        id="metadata-display-default-false",
    ),
    pytest.param(body(shipping_address={}), {}, id="shipping-empty-keeps"),
    pytest.param(
        body(shipping_address=None),
        {f"shipping_{name}": None for name in (*ADDRESS_FIELDS, "country")},
        id="shipping-null-clears-all",
    ),
    pytest.param(body(shipping_address={"city": None}), {"shipping_city": None}, id="shipping-city-null"),
    pytest.param(body(shipping_address={"city": "Lyon"}), {"shipping_city": "Lyon"}, id="shipping-city-set"),
    pytest.param(body(billing_configuration={}), {}, id="billing-empty-keeps"),
    pytest.param(
        body(billing_configuration=None),
        dict.fromkeys(
            (
                "invoice_grace_period",
                "document_locale",
                "payment_provider",
                "payment_provider_code",
                "provider_customer_id",
            )
        ),
        id="billing-null-clears",
    ),
    pytest.param(billing(invoice_grace_period=None), {"invoice_grace_period": None}, id="billing-grace-period-null"),
    pytest.param(
        billing(payment_provider=None),
        {"payment_provider": None, "payment_provider_code": None, "provider_customer_id": None},
        id="billing-provider-null-unlinks",
    ),
    pytest.param(
        billing(payment_provider="adyen", payment_provider_code="anything"),
        {"payment_provider": "adyen", "payment_provider_code": "anything"},
        id="billing-code-stored-unchecked-without-link",
    ),
    pytest.param(
        billing(payment_provider="stripe", provider_payment_methods=["card", "link", "card"]),
        {"payment_provider": "stripe", "provider_payment_methods": ("card", "link")},
        id="billing-methods-deduplicated",
    ),
]


@pytest.mark.parametrize(("customer", "expected"), PATCH_CASES)
def test_patch_tells_absent_from_null(customer: dict[str, Any], expected: dict[str, Any]) -> None:
    assert patch_of(accepted(customer).customer) == expected


# --- unknown fields ------------------------------------------------------------------------------------------------

UNKNOWN = {
    "account_type": "partner",
    "billing_entity_code": "be_1",
    "shipping_address": {"city": "Lyon", "country_code": "FR"},
    "billing_configuration": {"invoice_grace_period": 3, "subscription_invoice_issuing_date_anchor": "x"},
    "metadata": [item("a", id="meta_1"), item("b")],
}


def test_unknown_fields_are_ignored_and_counted() -> None:
    command = accepted(body(**UNKNOWN), schema_version=2)
    assert command.unknown_fields == 5
    assert patch_of(command.customer) == {
        "shipping_city": "Lyon",
        "invoice_grace_period": 3,
        "metadata": (
            StoredMetadataItem(key="a", value="enterprise", display_in_invoice=False),
            StoredMetadataItem(key="b", value="enterprise", display_in_invoice=False),
        ),
    }


def test_unknown_fields_are_counted_on_a_rejection_by_a_cross_field_rule() -> None:
    customer = copy.deepcopy(body(**UNKNOWN))
    customer["billing_configuration"]["provider_payment_methods"] = ["link"]
    outcome = rejected(customer)
    assert outcome.errors == {METHODS: [INVALID]}
    assert outcome.unknown_fields == 5


def test_no_unknown_fields_counts_zero() -> None:
    assert accepted(body(name="Acme", metadata=[item()])).unknown_fields == 0


# --- NUL characters (SPEC §11) -------------------------------------------------------------------------------------

NUL_CASES = [
    *[
        pytest.param(body(**{name: "Ac\x00me"}), name, "Acme", id=f"{name}")
        for name in (
            "name",
            "firstname",
            "lastname",
            "legal_name",
            "legal_number",
            "tax_identification_number",
            "phone",
            "url",
            "logo_url",
            *ADDRESS_FIELDS,
        )
    ],
    pytest.param(body(country="f\x00r"), "country", "FR", id="country"),
    pytest.param(body(email="jo\x00hn@example.com"), "email", "john@example.com", id="email"),
    pytest.param(body(currency="E\x00UR"), "currency", "EUR", id="currency"),
    pytest.param(body(timezone="Europe/\x00Paris"), "timezone", "Europe/Paris", id="timezone"),
    pytest.param(body(customer_type="\x00company"), "customer_type", "company", id="customer_type"),
    pytest.param(body(finalize_zero_amount_invoice="skip\x00"), "finalize_zero_amount_invoice", "skip", id="finalize"),
    pytest.param(body(tax_codes=["vat\x00_20"]), "tax_codes", ("vat_20",), id="tax_codes-item"),
    pytest.param(
        body(metadata=[item("se\x00gment", "ent\x00erprise")]),
        "metadata",
        (StoredMetadataItem(key="segment", value="enterprise", display_in_invoice=False),),
        id="metadata-key-and-value",
    ),
    pytest.param(shipping(city="Ly\x00on"), "shipping_city", "Lyon", id="shipping-city"),
    pytest.param(shipping(country="\x00de"), "shipping_country", "DE", id="shipping-country"),
    pytest.param(billing(document_locale="f\x00r"), "document_locale", "fr", id="document_locale"),
    pytest.param(billing(payment_provider="stri\x00pe"), "payment_provider", "stripe", id="payment_provider"),
    pytest.param(
        billing(payment_provider_code="co\x00de"), "payment_provider_code", "code", id="payment_provider_code"
    ),
    pytest.param(billing(provider_customer_id="cus\x00_x"), "provider_customer_id", "cus_x", id="provider_customer_id"),
    pytest.param(body(city="\x00\x00"), "city", None, id="address-only-nul-is-null"),
    pytest.param(body(name="\x00"), "name", "", id="name-only-nul-is-empty"),
]


@pytest.mark.parametrize(("customer", "column", "stored"), NUL_CASES)
def test_nul_characters_are_stripped_from_every_string(customer: dict[str, Any], column: str, stored: Any) -> None:
    assert patch_of(accepted(customer).customer)[column] == stored


def test_nul_is_stripped_from_the_external_id() -> None:
    assert accepted(body(external_id="cus\x00_001")).external_id == "cus_001"


def test_nul_is_stripped_from_the_external_id_of_a_rejection() -> None:
    assert rejected(body(external_id="cus\x00_001", currency="usd")).external_id == "cus_001"


def test_nul_is_stripped_before_the_email_list_is_checked() -> None:
    command = accepted(body(email="a@b.c,\x00d@e.f"))
    assert patch_of(command.customer)["email"] == "a@b.c,d@e.f"


# --- normalisation (SPEC §11) --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("customer", "column", "stored"),
    [
        pytest.param(body(country="fr"), "country", "FR", id="billing-lower"),
        pytest.param(body(country="Fr"), "country", "FR", id="billing-mixed"),
        pytest.param(shipping(country="de"), "shipping_country", "DE", id="shipping-lower"),
        pytest.param(shipping(country="gB"), "shipping_country", "GB", id="shipping-mixed"),
    ],
)
def test_country_is_stored_upper_case(customer: dict[str, Any], column: str, stored: str) -> None:
    assert patch_of(accepted(customer).customer)[column] == stored


@pytest.mark.parametrize("blank", ["", " ", "   ", "\t", " \n "], ids=repr)
@pytest.mark.parametrize("name", [*ADDRESS_FIELDS, "country"])
def test_blank_billing_address_field_becomes_null(name: str, blank: str) -> None:
    assert patch_of(accepted(body(**{name: blank})).customer) == {name: None}


@pytest.mark.parametrize("blank", ["", "  ", "\t"], ids=repr)
@pytest.mark.parametrize("name", [*ADDRESS_FIELDS, "country"])
def test_blank_shipping_address_field_becomes_null(name: str, blank: str) -> None:
    assert patch_of(accepted(shipping(**{name: blank})).customer) == {f"shipping_{name}": None}


def test_non_blank_address_fields_are_kept_as_written() -> None:
    patch = patch_of(accepted(body(city=" Lyon ", zipcode="69001 ")).customer)
    assert patch == {"city": " Lyon ", "zipcode": "69001 "}


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        pytest.param("jo\u200bhn@example.com", "john@example.com", id="zero-width-space"),
        pytest.param("\ufeffjohn@example.com", "john@example.com", id="bom"),
        pytest.param("jo\u00adhn@exa\u200dmple.com", "john@example.com", id="soft-hyphen-and-joiner"),
        pytest.param("jean\u2013luc@example.com", "jean-luc@example.com", id="en-dash"),
        pytest.param("jean\u2014luc@my\u2011site.com", "jean-luc@my-site.com", id="em-dash-and-nb-hyphen"),
        pytest.param("a\u2212b@example.com", "a-b@example.com", id="minus-sign"),
        pytest.param("John.Doe@Example.COM", "John.Doe@Example.COM", id="case-kept"),
        pytest.param("a@b.c, \u200bd@e.f", "a@b.c, d@e.f", id="list-spacing-kept"),
    ],
)
def test_email_is_normalised_before_checking_and_stored_normalised(written: str, stored: str) -> None:
    assert patch_of(accepted(body(email=written)).customer) == {"email": stored}


def test_email_of_only_invisible_characters_is_invalid() -> None:
    assert rejected(body(email="\u200b\u200c")).errors == {"email": [BAD_EMAIL]}


def test_external_id_is_stored_as_given() -> None:
    assert accepted(body(external_id="  Cus 001 ")).external_id == "  Cus 001 "


# --- occurred_at (SPEC §2) -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "parsed"),
    [
        pytest.param("2026-11-24T10:15:00Z", datetime(2026, 11, 24, 10, 15, tzinfo=UTC), id="zulu"),
        pytest.param(
            "2026-11-24T10:15:00+01:00",
            datetime(2026, 11, 24, 10, 15, tzinfo=timezone(timedelta(hours=1))),
            id="offset",
        ),
        pytest.param(
            "2026-11-24T10:15:00.123-05:30",
            datetime(2026, 11, 24, 10, 15, 0, 123000, tzinfo=timezone(-timedelta(hours=5, minutes=30))),
            id="fraction-negative-offset",
        ),
        pytest.param("2026-11-24t10:15:00Z", datetime(2026, 11, 24, 10, 15, tzinfo=UTC), id="lower-case-t"),
        pytest.param(None, None, id="null"),
    ],
)
def test_occurred_at_valid_is_normalised_to_utc(written: str | None, parsed: datetime | None) -> None:
    command = accepted(body(), occurred_at=written)
    assert command.occurred_at == parsed
    if parsed is not None:
        assert command.occurred_at is not None and command.occurred_at.tzinfo is UTC


def test_occurred_at_absent_is_none() -> None:
    assert accepted(body()).occurred_at is None


def test_occurred_at_lower_case_z_is_valid() -> None:
    assert accepted(body(), occurred_at="2026-11-24t10:15:00z").occurred_at == datetime(
        2026, 11, 24, 10, 15, tzinfo=UTC
    )


@pytest.mark.parametrize(
    "written",
    [
        pytest.param("2026-11-24T10:15:00", id="no-offset"),
        pytest.param("2026-11-24T10:15:00.000000", id="no-offset-fraction"),
        pytest.param("2026-11-24", id="date-only"),
        pytest.param("garbage", id="garbage"),
        pytest.param("", id="empty"),
        pytest.param("2026-13-24T10:15:00Z", id="month-13"),
        pytest.param("2026-11-24T25:15:00Z", id="hour-25"),
        pytest.param("24/11/2026 10:15:00 +0000", id="not-rfc3339"),
        pytest.param(1795515300, id="epoch-number"),
        pytest.param(True, id="boolean"),
        pytest.param(["2026-11-24T10:15:00Z"], id="list"),
    ],
)
def test_occurred_at_invalid(written: Any) -> None:
    outcome = rejected(body(), occurred_at=written)
    assert outcome.errors == {"occurred_at": [INVALID]}
    assert outcome.external_id == EXTERNAL_ID


# --- external_id (SPEC §11: a rejection, not a dead letter) --------------------------------------------------------


@pytest.mark.parametrize(
    "customer",
    [
        pytest.param({}, id="missing"),
        pytest.param({"external_id": None}, id="null"),
        pytest.param({"external_id": ""}, id="empty"),
        pytest.param({"external_id": "   "}, id="blank"),
        pytest.param({"external_id": "\u0000 "}, id="nul-and-space"),
    ],
)
def test_external_id_missing_null_or_blank_is_a_rejection_without_external_id(customer: dict[str, Any]) -> None:
    outcome = rejected(customer)
    assert outcome.errors == {"external_id": [MANDATORY]}
    assert outcome.external_id is None
    assert (outcome.message_id, outcome.organization_id) == ("msg-1", ORG)


def test_rejection_carries_the_envelope_and_traceparent() -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    outcome = decode(envelope(body(currency="usd")), [("traceparent", traceparent.encode())], CONTEXT)
    assert isinstance(outcome, Rejection)
    assert (outcome.message_id, outcome.organization_id, outcome.external_id) == ("msg-1", ORG, EXTERNAL_ID)
    assert outcome.traceparent == traceparent


# --- provider connection lookup (SPEC §3, §9, §11) -----------------------------------------------------------------


class CountingRegistry(Connections):
    def __init__(self, connections: list[Connection]) -> None:
        super().__init__(connections)
        self.lookups = 0

    def lookup(self, organization_id: str, provider: str, code: str | None) -> Connection | LookupFailure:
        self.lookups += 1
        return super().lookup(organization_id, provider, code)


LINK_CASES = [
    # one connection of the provider
    pytest.param(ORG, {"payment_provider": "stripe", "sync_with_provider": True}, {}, id="one-stripe-sync"),
    pytest.param(ORG, {"payment_provider": "stripe", "provider_customer_id": "cus_x"}, {}, id="one-stripe-customer-id"),
    pytest.param(
        ORG,
        {"payment_provider": "stripe", "payment_provider_code": "stripe_main", "sync_with_provider": True},
        {},
        id="one-stripe-by-code",
    ),
    pytest.param(
        ORG,
        {"payment_provider": "stripe", "payment_provider_code": None, "sync_with_provider": True},
        {},
        id="one-stripe-code-null",
    ),
    pytest.param(
        ORG,
        {"payment_provider": "stripe", "payment_provider_code": "nope", "sync_with_provider": True},
        {"base": [NOT_FOUND]},
        id="one-stripe-unknown-code",
    ),
    pytest.param(
        ORG,
        {"payment_provider": "stripe", "payment_provider_code": "adyen_eu", "sync_with_provider": True},
        {"base": [NOT_FOUND]},
        id="stripe-with-an-adyen-code",
    ),
    pytest.param(
        ORG,
        {"payment_provider": "stripe", "payment_provider_code": "stripe_other", "provider_customer_id": "cus_x"},
        {"base": [NOT_FOUND]},
        id="another-organizations-code",
    ),
    pytest.param(
        OTHER_ORG,
        {"payment_provider": "stripe", "payment_provider_code": "stripe_main", "sync_with_provider": True},
        {"base": [NOT_FOUND]},
        id="org-other-with-org-acme-code",
    ),
    pytest.param(
        OTHER_ORG, {"payment_provider": "stripe", "sync_with_provider": True}, {}, id="org-other-its-own-stripe"
    ),
    # zero connections of the provider
    pytest.param(
        ORG,
        {"payment_provider": "gocardless", "sync_with_provider": True},
        {"base": [NOT_FOUND]},
        id="zero-gocardless-sync",
    ),
    pytest.param(
        ORG,
        {"payment_provider": "gocardless", "provider_customer_id": "CU123"},
        {"base": [NOT_FOUND]},
        id="zero-gocardless-customer-id",
    ),
    pytest.param(
        ORG,
        {"payment_provider": "gocardless", "payment_provider_code": "gc", "sync_with_provider": True},
        {"base": [NOT_FOUND]},
        id="zero-gocardless-with-code",
    ),
    pytest.param(
        OTHER_ORG,
        {"payment_provider": "adyen", "sync_with_provider": True},
        {"base": [NOT_FOUND]},
        id="zero-adyen-in-org-other",
    ),
    # two connections of the provider
    pytest.param(
        ORG,
        {"payment_provider": "adyen", "payment_provider_code": "adyen_us", "sync_with_provider": True},
        {},
        id="two-adyen-by-code",
    ),
    pytest.param(
        ORG,
        {"payment_provider": "adyen", "payment_provider_code": None, "sync_with_provider": True},
        {"base": [CODE_MISSING]},
        id="two-adyen-code-null",
    ),
    pytest.param(
        ORG,
        {"payment_provider": "adyen", "payment_provider_code": "adyen_xx", "provider_customer_id": "ref"},
        {"base": [NOT_FOUND]},
        id="two-adyen-unknown-code",
    ),
]


@pytest.mark.parametrize(("organization_id", "billing_configuration", "expected"), LINK_CASES)
def test_connection_lookup(organization_id: str, billing_configuration: dict[str, Any], expected: Errors) -> None:
    outcome = run(body(billing_configuration=billing_configuration), organization_id=organization_id)
    if expected:
        assert isinstance(outcome, Rejection), outcome
        assert outcome.errors == expected
    else:
        assert isinstance(outcome, Command), outcome
        assert outcome.link is not None
        assert outcome.link.provider == billing_configuration["payment_provider"]


def test_two_connections_without_a_code_are_left_to_the_stored_code() -> None:
    """The command omits the code: a stored code may settle it, so decode accepts and the domain resolves."""
    command = accepted(billing(payment_provider="adyen", sync_with_provider=True))
    assert command.link is not None and command.link.code_given is False
    none_stored = resolve_connection(REGISTRY, ORG, command.link, stored_provider=None, stored_code=None)
    assert none_stored == LookupFailure(ErrorCode.PAYMENT_PROVIDER_CODE_MISSING)
    stored = resolve_connection(REGISTRY, ORG, command.link, stored_provider="adyen", stored_code="adyen_us")
    assert isinstance(stored, Connection) and stored.code == "adyen_us"
    other_provider_code = resolve_connection(
        REGISTRY, ORG, command.link, stored_provider="stripe", stored_code="stripe_main"
    )
    assert other_provider_code == LookupFailure(ErrorCode.PAYMENT_PROVIDER_CODE_MISSING)


def test_one_connection_without_a_code_resolves_to_it() -> None:
    command = accepted(billing(payment_provider="stripe", sync_with_provider=True))
    assert command.link == LinkRequest(
        provider="stripe", code=None, code_given=False, provider_customer_id=None, sync_with_provider=True, sync=False
    )
    found = resolve_connection(REGISTRY, ORG, command.link, stored_provider=None, stored_code=None)
    assert isinstance(found, Connection) and found.code == "stripe_main"


def test_link_without_a_provider_in_the_command_is_left_to_the_domain() -> None:
    command = accepted(billing(sync_with_provider=True))
    assert command.link is not None and command.link.provider is None


NOT_LINKING = [
    pytest.param({"payment_provider": "gocardless"}, id="provider-only"),
    pytest.param({"payment_provider": "gocardless", "sync_with_provider": False}, id="sync-false"),
    pytest.param({"payment_provider": "gocardless", "sync_with_provider": None}, id="sync-null"),
    pytest.param({"payment_provider": "gocardless", "sync": True}, id="sync-only"),
    pytest.param({"payment_provider": "adyen", "payment_provider_code": "unknown_code"}, id="unknown-code-unchecked"),
    pytest.param({"payment_provider": None, "sync_with_provider": True}, id="provider-null"),
    pytest.param({"payment_provider": None, "provider_customer_id": "cus_x"}, id="provider-null-customer-id"),
]


@pytest.mark.parametrize("billing_configuration", NOT_LINKING)
def test_not_linking_makes_no_lookup(billing_configuration: dict[str, Any]) -> None:
    registry = CountingRegistry(list(REGISTRY.all))
    context = DecodeContext(signing_keys=SigningKeys({}), connections=registry)
    command = accepted(body(billing_configuration=billing_configuration), context)
    assert command.link is None
    assert registry.lookups == 0


def test_linking_makes_a_lookup() -> None:
    registry = CountingRegistry(list(REGISTRY.all))
    context = DecodeContext(signing_keys=SigningKeys({}), connections=registry)
    accepted(billing(payment_provider="stripe", sync_with_provider=True), context)
    assert registry.lookups == 1


# --- dead letters (SPEC §2, §7, §11) -------------------------------------------------------------------------------


def dead_letter(value: bytes | None, reason: DlqReason) -> DeadLetter:
    outcome = decode(value, [], CONTEXT)
    assert isinstance(outcome, DeadLetter), outcome
    assert outcome.reason is reason
    assert outcome.error, "a dead letter names its cause"
    return outcome


VALID_DOCUMENT: Final[dict[str, Any]] = {"message_id": "msg-1", "organization_id": ORG, "customer": body()}


def nested(depth: int, leaf: str = '"x"') -> str:
    return "[" * depth + leaf + "]" * depth


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(None, id="tombstone"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\xff\xfe{}", id="bad-utf8-prefix"),
        pytest.param(b'{"message_id":"m\xff","organization_id":"o","customer":{"external_id":"x"}}', id="bad-utf8"),
        pytest.param(b'{"message_id":"\xc0\xafm","organization_id":"o","customer":{}}', id="overlong-utf8"),
        pytest.param(b'{"message_id":"\xed\xa0\x80","organization_id":"o","customer":{}}', id="utf8-surrogate"),
        pytest.param(b'{"message_id":"\\ud800","organization_id":"o","customer":{}}', id="lone-surrogate-escape"),
        pytest.param(b"not json", id="text"),
        pytest.param(b"{", id="truncated"),
        pytest.param(b"{'message_id': 'm'}", id="single-quotes"),
        pytest.param(b'{"message_id":"m",}', id="trailing-comma"),
        pytest.param(b'{"message_id":NaN}', id="nan"),
        pytest.param(b" ", id="whitespace"),
        pytest.param(b'{"a":1} {"b":2}', id="two-documents"),
        pytest.param(
            (
                '{"message_id":"m","organization_id":"o","customer":{"external_id":"x","deep":' + nested(1100) + "}}"
            ).encode(),
            id="nesting-beyond-parser-limit",
        ),
    ],
)
def test_invalid_json(value: bytes | None) -> None:
    dead_letter(value, DlqReason.INVALID_JSON)


def test_nesting_within_the_parser_limit_is_a_command() -> None:
    value = '{"message_id":"m","organization_id":"o","customer":{"external_id":"x","deep":' + nested(1000) + "}}"
    command = decode(value.encode(), [], CONTEXT)
    assert isinstance(command, Command)
    assert command.unknown_fields == 1


def test_deep_nesting_with_a_nul_does_not_raise() -> None:
    value = '{"message_id":"m","organization_id":"o","customer":{"external_id":"x\\u0000","deep":'
    value += nested(1000, '"\\u0000"') + "}}"
    outcome = decode(value.encode(), [], CONTEXT)
    assert isinstance(outcome, Command) or (
        isinstance(outcome, DeadLetter) and outcome.reason is DlqReason.INVALID_JSON
    )


@pytest.mark.parametrize(
    "document",
    [
        pytest.param([VALID_DOCUMENT], id="array"),
        pytest.param("message", id="string"),
        pytest.param(42, id="number"),
        pytest.param(1.5, id="float"),
        pytest.param(True, id="boolean"),
        pytest.param(None, id="json-null"),
    ],
)
def test_json_that_is_not_an_object_is_invalid_envelope(document: Any) -> None:
    dead_letter(orjson.dumps(document), DlqReason.INVALID_ENVELOPE)


BAD_IDENTIFIERS = [
    pytest.param(None, id="null"),
    pytest.param(123, id="number"),
    pytest.param(["m"], id="list"),
    pytest.param({"id": "m"}, id="object"),
    pytest.param("", id="empty"),
    pytest.param("m" * 256, id="256-chars"),
    pytest.param("é" * 256, id="256-multibyte-chars"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("a\nb", id="newline"),
    pytest.param("a\tb", id="tab"),
    pytest.param("a\x1fb", id="unit-separator"),
    pytest.param("a\x7fb", id="delete"),
    pytest.param("a\x85b", id="c1-next-line"),
    pytest.param("a\x9fb", id="c1-last"),
]


@pytest.mark.parametrize("field", ["message_id", "organization_id"])
@pytest.mark.parametrize("value", BAD_IDENTIFIERS)
def test_bad_identifier_is_invalid_envelope(field: str, value: Any) -> None:
    dead_letter(orjson.dumps({**VALID_DOCUMENT, field: value}), DlqReason.INVALID_ENVELOPE)


@pytest.mark.parametrize("field", ["message_id", "organization_id"])
def test_missing_identifier_is_invalid_envelope(field: str) -> None:
    document = {name: value for name, value in VALID_DOCUMENT.items() if name != field}
    dead_letter(orjson.dumps(document), DlqReason.INVALID_ENVELOPE)


@pytest.mark.parametrize("field", ["message_id", "organization_id"])
@pytest.mark.parametrize(
    "value",
    ["m" * 255, "é" * 255, "x", " ", "org acme/é:42"],
    ids=["255", "255-multibyte", "1", "space", "punctuation"],
)
def test_identifier_boundary_values_are_accepted(field: str, value: str) -> None:
    command = decode(orjson.dumps({**VALID_DOCUMENT, field: value}), [], CONTEXT)
    assert isinstance(command, Command), command
    assert getattr(command, field) == value


@pytest.mark.parametrize(
    "customer",
    [
        pytest.param(None, id="null"),
        pytest.param([body()], id="array"),
        pytest.param("cus_001", id="string"),
        pytest.param(1, id="number"),
        pytest.param(True, id="boolean"),
    ],
)
def test_customer_not_an_object_is_invalid_envelope(customer: Any) -> None:
    dead_letter(orjson.dumps({**VALID_DOCUMENT, "customer": customer}), DlqReason.INVALID_ENVELOPE)


def test_customer_missing_is_invalid_envelope() -> None:
    dead_letter(orjson.dumps({"message_id": "m", "organization_id": ORG}), DlqReason.INVALID_ENVELOPE)


def test_empty_customer_object_is_a_rejection_not_a_dead_letter() -> None:
    assert rejected({}).errors == {"external_id": [MANDATORY]}


def padded(size: int, filler: str = "x") -> bytes:
    """A valid command of exactly `size` bytes, padded with an unknown envelope field."""
    base = orjson.dumps({**VALID_DOCUMENT, "padding": ""})
    missing = size - len(base)
    unit = len(filler.encode())
    value = orjson.dumps({**VALID_DOCUMENT, "padding": filler * (missing // unit) + "x" * (missing % unit)})
    assert len(value) == size
    return value


def test_one_mebibyte_exactly_is_accepted() -> None:
    assert MAX_VALUE_BYTES == 1024 * 1024
    assert isinstance(decode(padded(1024 * 1024), [], CONTEXT), Command)


def test_one_mebibyte_plus_one_is_too_large() -> None:
    dead_letter(padded(1024 * 1024 + 1), DlqReason.TOO_LARGE)


def test_the_limit_counts_bytes_not_characters() -> None:
    value = padded(1024 * 1024 + 1, filler="é")
    assert len(value.decode()) < 1024 * 1024
    dead_letter(value, DlqReason.TOO_LARGE)
    assert isinstance(decode(padded(1024 * 1024, filler="é"), [], CONTEXT), Command)


def test_too_large_wins_over_invalid_json() -> None:
    dead_letter(b"[" * (1024 * 1024 + 1), DlqReason.TOO_LARGE)


def test_the_dead_letter_error_names_no_content() -> None:
    secret_name = "Jane Secret-Person"
    value = orjson.dumps({"message_id": 7, "organization_id": ORG, "customer": {"name": secret_name}})
    assert secret_name not in dead_letter(value, DlqReason.INVALID_ENVELOPE).error
    broken = b'{"customer": {"name": "' + secret_name.encode() + b'"'
    assert secret_name not in dead_letter(broken, DlqReason.INVALID_JSON).error

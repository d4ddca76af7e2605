"""The Lago customer body of a command (SPEC §3), as pydantic v2 typed dicts.

Field rules that pydantic expresses natively (types, lengths, ranges, closed sets, non-blank patterns) are declared and
run in pydantic-core. The e-mail and country rules are Python functions that raise `PydanticCustomError` with Lago's
code as the error type, reached only for values the Rust-side check cannot settle (`_RustFirst`); so
`rules.pydantic_errors` only has to map pydantic's built-in types. Rules that span fields or items are in
`rules.cross_field_errors`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, NotRequired, Required

from pydantic import ConfigDict, Field, GetCoreSchemaHandler, StringConstraints, TypeAdapter, WithJsonSchema
from pydantic_core import CoreSchema, PydanticCustomError, core_schema
from typing_extensions import TypedDict

from worker.contract.codes import ErrorCode
from worker.contract.connections import PROVIDERS
from worker.contract.datasets import (
    COUNTRY_CODES,
    CURRENCY_CODES,
    CUSTOMER_TYPES,
    FINALIZE_ZERO_AMOUNT_INVOICE,
    LANGUAGE_CODES,
    TIMEZONES,
)
from worker.contract.email import ASCII_ADDRESS_LIST, is_valid_email_list, normalize_email

PG_INT_MAX = 2**31 - 1

# Bounds on free text (SPEC §12), in characters after NUL stripping: an accepted customer's event stays far below a
# broker's 1 MiB whatever the characters (at most 6 bytes each, JSON-escaped). 255 is Lago's limit on `name`, and
# fits the unique index on `external_id`; URLs and e-mail lists get more room. Over the bound: `value_is_too_long`.
MAX_TEXT: Final = 255
MAX_EMAIL: Final = 1_024
MAX_URL: Final = 2_048
# Bounds on lists; items past a list's bound are not checked (the list's own error says it is too long).
MAX_TAX_CODES: Final = 100  # `invalid_count`
MAX_PAYMENT_METHODS: Final = 8  # one of each method; more is `value_is_invalid`


def _error(code: ErrorCode) -> PydanticCustomError:
    return PydanticCustomError(code.value, code.value)


def _country(value: str) -> str | None:
    upper = value.upper()
    if upper in COUNTRY_CODES:
        return upper
    if not value.strip():
        return None  # blank is null for every address field, the country included (SPEC §11); not a bad code
    raise _error(ErrorCode.NOT_A_VALID_COUNTRY_CODE)


def _email(value: str) -> str | None:
    if not value.strip():
        return None  # Lago checks the format of a present address only; blank is no address.
    normalized = normalize_email(value)
    if not is_valid_email_list(normalized):
        raise _error(ErrorCode.INVALID_EMAIL_FORMAT)
    return normalized


@dataclass(frozen=True, slots=True, eq=False)  # hashed by identity: typing hashes Annotated metadata
class _RustFirst:
    """A string rule checked by pydantic-core alone for the usual value, and by the Python rule only when that fails.

    The fast check accepts a subset of what the Python rule accepts and returns the value the rule would return
    (so the split is invisible: `tests/unit/test_rust_first_checks.py` holds them equal). A wrong JSON type fails
    the `str` step first (`value_is_invalid`); a string both reject is the field's Lago code."""

    fast: CoreSchema
    rule: Callable[[str], Any]
    code: ErrorCode
    max_length: int | None = None  # checked first, in pydantic-core: `string_too_long`

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        either = core_schema.union_schema(
            [self.fast, core_schema.no_info_plain_validator_function(self.rule)],
            mode="left_to_right",
            custom_error_type=self.code.value,
            custom_error_message=self.code.value,
        )
        return core_schema.chain_schema([core_schema.str_schema(strict=True, max_length=self.max_length), either])


def _one_of(values: Iterable[str], description: str, *, publish_values: bool = False) -> Any:
    """A closed set checked in pydantic-core (no Python call per value). The error type is `literal_error`, mapped
    to the field's Lago code in `rules`. Large sets are described rather than listed in the published schema:
    their exact content depends on the installed pycountry and tz database."""
    ordered = tuple(sorted(values))
    schema: dict[str, Any] = {"type": "string", "description": description}
    if publish_values:
        schema["enum"] = list(ordered)
    return Annotated[Literal[ordered], WithJsonSchema(schema)]


if TYPE_CHECKING:
    Currency = str
    Timezone = str
    CustomerType = str
    FinalizeZeroAmountInvoice = str
    Language = str
    PaymentProvider = str
else:
    Currency = _one_of(CURRENCY_CODES, "current ISO 4217 currency code, upper-case")
    Timezone = _one_of(TIMEZONES, "UTC or an IANA time zone name")
    CustomerType = _one_of(CUSTOMER_TYPES, "company or individual", publish_values=True)
    FinalizeZeroAmountInvoice = _one_of(FINALIZE_ZERO_AMOUNT_INVOICE, "null means inherit", publish_values=True)
    Language = _one_of(LANGUAGE_CODES, "ISO 639-1 language code")
    PaymentProvider = _one_of(PROVIDERS, "payment provider", publish_values=True)

# Not blank after trimming: a Rust regex, no Python call.
NonBlank = Annotated[str, StringConstraints(pattern=r"\S")]


# An upper-case code is returned as written; any other case, blank or bad value goes to `_country`.
Country = Annotated[
    str,
    _RustFirst(core_schema.literal_schema(sorted(COUNTRY_CODES)), _country, ErrorCode.NOT_A_VALID_COUNTRY_CODE),
]
# A plain ASCII list is already normalised; invisible characters, dash look-alikes and blanks go to `_email`.
Email = Annotated[
    str,
    _RustFirst(core_schema.str_schema(pattern=ASCII_ADDRESS_LIST), _email, ErrorCode.INVALID_EMAIL_FORMAT, MAX_EMAIL),
]
NonNegativeInt = Annotated[int, Field(ge=0, le=PG_INT_MAX)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]
Url = Annotated[str, Field(max_length=MAX_URL)]
TaxCode = Annotated[NonBlank, Field(max_length=MAX_TEXT)]

# TypedDicts rather than models: a key that is absent from the command is absent from the validated value, which is
# exactly the absent-versus-null distinction of SPEC §4, and pydantic-core validates them without building objects.
# Unknown keys are dropped (forward compatibility) and counted by `decode` from the raw body.
_CONFIG = ConfigDict(strict=True, extra="ignore", json_schema_extra={"additionalProperties": True})


class AddressFields(TypedDict, total=False):
    """The six address fields shared by the billing and the shipping address. Blank (whitespace-only) values
    become null when applied (`worker.domain.customer.patch_of`)."""

    __pydantic_config__ = _CONFIG  # type: ignore[misc]

    address_line1: Text | None
    address_line2: Text | None
    city: Text | None
    zipcode: Text | None
    state: Text | None
    country: Annotated[Country | None, Field(description="ISO 3166-1 alpha-2, any case, stored upper-case")]


class ShippingAddress(AddressFields, total=False):
    pass


class MetadataItem(TypedDict):
    __pydantic_config__ = _CONFIG  # type: ignore[misc]

    # A null or blank key or value is `value_is_mandatory` (mapped in `rules`).
    key: Annotated[NonBlank, Field(max_length=20)]
    value: Annotated[NonBlank, Field(max_length=100)]
    display_in_invoice: NotRequired[bool | None]


class BillingConfiguration(TypedDict, total=False):
    __pydantic_config__ = _CONFIG  # type: ignore[misc]

    invoice_grace_period: NonNegativeInt | None
    document_locale: Language | None
    payment_provider: PaymentProvider | None
    payment_provider_code: Text | None
    provider_customer_id: Text | None
    sync: bool | None
    sync_with_provider: bool | None
    provider_payment_methods: Annotated[
        list[str] | None,
        Field(
            json_schema_extra={"maxItems": MAX_PAYMENT_METHODS},
            description="Stripe only: card, sepa_debit, us_bank_account, bacs_debit, link, boleto, crypto, "
            "customer_balance; link requires card; customer_balance stands alone",
        ),
    ]


class CustomerInput(AddressFields, total=False):
    """The body of Lago's `POST /api/v1/customers` (create or update), as carried in a command."""

    # Missing, null or blank is `value_is_mandatory` (mapped in `rules`); stored as given otherwise.
    external_id: Required[Annotated[NonBlank, Field(max_length=MAX_TEXT)]]
    name: Text | None
    firstname: Text | None
    lastname: Text | None
    legal_name: Text | None
    legal_number: Text | None
    tax_identification_number: Text | None
    phone: Text | None
    url: Url | None
    logo_url: Url | None
    email: Annotated[Email | None, Field(description="one address or a comma-separated list")]
    currency: Currency | None
    timezone: Timezone | None
    customer_type: CustomerType | None
    net_payment_term: NonNegativeInt | None
    finalize_zero_amount_invoice: FinalizeZeroAmountInvoice | None
    # Each item not blank; duplicates collapse when applied (`patch_of`).
    tax_codes: Annotated[list[TaxCode] | None, Field(json_schema_extra={"maxItems": MAX_TAX_CODES})]
    # At most 5 items: counted in `rules`, so that the items' own errors are still reported.
    metadata: Annotated[list[MetadataItem] | None, Field(json_schema_extra={"maxItems": 5})]
    shipping_address: ShippingAddress | None
    billing_configuration: BillingConfiguration | None


CUSTOMER: Final = TypeAdapter(CustomerInput)


def _keys(kind: Any) -> frozenset[str]:
    return frozenset(kind.__required_keys__ | kind.__optional_keys__)


CUSTOMER_FIELDS: Final = _keys(CustomerInput)
BILLING_FIELDS: Final = _keys(BillingConfiguration)
SHIPPING_FIELDS: Final = _keys(ShippingAddress)
METADATA_FIELDS: Final = _keys(MetadataItem)


def _strip(value: Any) -> Any:
    return value.replace("\x00", "") if isinstance(value, str) else value


def strip_nul(customer: dict[str, Any]) -> dict[str, Any]:
    """Remove NUL characters from every string the models read (PostgreSQL text cannot hold them). Only the body's
    known shape is walked, never arbitrary nesting: unknown fields are ignored anyway."""
    cleaned = {key: _strip(value) for key, value in customer.items()}
    for nested in ("billing_configuration", "shipping_address"):
        if isinstance(inner := cleaned.get(nested), dict):
            cleaned[nested] = {key: _strip(value) for key, value in inner.items()}
            if isinstance(methods := cleaned[nested].get("provider_payment_methods"), list):
                cleaned[nested]["provider_payment_methods"] = [_strip(item) for item in methods]
    if isinstance(tax_codes := cleaned.get("tax_codes"), list):
        cleaned["tax_codes"] = [_strip(item) for item in tax_codes]
    if isinstance(metadata := cleaned.get("metadata"), list):
        cleaned["metadata"] = [
            {key: _strip(value) for key, value in item.items()} if isinstance(item, dict) else item for item in metadata
        ]
    return cleaned

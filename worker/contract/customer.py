"""The Lago customer body of a command (SPEC §3), as pydantic v2 models.

Field rules that pydantic expresses natively (types, lengths, ranges) are declared; the rest are small after-validators
that raise `PydanticCustomError` with Lago's code as the error type, so `validation.collect_errors` only has to map
pydantic's built-in types. Models keep unknown fields (`extra="allow"`) so they can be counted, and keep
`model_fields_set`, which tells an absent field from a `null` one (SPEC §4).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from worker.contract.codes import ErrorCode
from worker.contract.datasets import (
    COUNTRY_CODES,
    CURRENCY_CODES,
    CUSTOMER_TYPES,
    FINALIZE_ZERO_AMOUNT_INVOICE,
    LANGUAGE_CODES,
    TIMEZONES,
)
from worker.contract.email import is_valid_email_list, normalize_email

PG_INT_MAX = 2**31 - 1


def _error(code: ErrorCode) -> PydanticCustomError:
    return PydanticCustomError(code.value, code.value)


def _blank_to_none(value: str) -> str | None:
    return value if value.strip() else None


def _country(value: str) -> str:
    upper = value.upper()
    if upper not in COUNTRY_CODES:
        raise _error(ErrorCode.NOT_A_VALID_COUNTRY_CODE)
    return upper


def _blank_country(value: str) -> str | None:
    # Blank is null for every address field, the country included (SPEC §11).
    return _country(value) if value.strip() else None


def _email(value: str) -> str:
    normalized = normalize_email(value)
    if not is_valid_email_list(normalized):
        raise _error(ErrorCode.INVALID_EMAIL_FORMAT)
    return normalized


def _currency(value: str) -> str:
    if value not in CURRENCY_CODES:
        raise _error(ErrorCode.VALUE_IS_INVALID)
    return value


def _timezone(value: str) -> str:
    if value not in TIMEZONES:
        raise _error(ErrorCode.INVALID_TIMEZONE)
    return value


def _customer_type(value: str) -> str:
    if value not in CUSTOMER_TYPES:
        raise _error(ErrorCode.VALUE_IS_INVALID)
    return value


def _finalize(value: str) -> str:
    if value not in FINALIZE_ZERO_AMOUNT_INVOICE:
        raise _error(ErrorCode.INVALID_VALUE)
    return value


def _language(value: str) -> str:
    if value not in LANGUAGE_CODES:
        raise _error(ErrorCode.NOT_A_VALID_LANGUAGE_CODE)
    return value


def _payment_provider(value: str) -> str:
    if value not in ("stripe", "adyen", "gocardless"):
        raise _error(ErrorCode.VALUE_IS_INVALID)
    return value


def _required_text(value: str | None) -> str:
    if value is None or not value.strip():
        raise _error(ErrorCode.VALUE_IS_MANDATORY)
    return value


def _non_blank(value: str) -> str:
    if not value.strip():
        raise _error(ErrorCode.VALUE_IS_INVALID)
    return value


def _dedupe(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


AddressText = Annotated[str, AfterValidator(_blank_to_none)]
Country = Annotated[str, AfterValidator(_blank_country)]
NonNegativeInt = Annotated[int, Field(ge=0, le=PG_INT_MAX)]


class _Model(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", frozen=True, populate_by_name=False)

    def unknown_field_count(self) -> int:
        return len(self.__pydantic_extra__ or ())


class AddressFields(_Model):
    """The six address fields shared by the billing and the shipping address."""

    address_line1: AddressText | None = None
    address_line2: AddressText | None = None
    city: AddressText | None = None
    zipcode: AddressText | None = None
    state: AddressText | None = None
    country: Country | None = Field(default=None, description="ISO 3166-1 alpha-2, any case, stored upper-case")


class ShippingAddress(AddressFields):
    pass


class MetadataItem(_Model):
    key: Annotated[Annotated[str, Field(max_length=20)] | None, AfterValidator(_required_text)]
    value: Annotated[Annotated[str, Field(max_length=100)] | None, AfterValidator(_required_text)]
    display_in_invoice: bool | None = False


class BillingConfiguration(_Model):
    invoice_grace_period: NonNegativeInt | None = None
    document_locale: Annotated[str, AfterValidator(_language)] | None = Field(
        default=None, description="ISO 639-1 language code"
    )
    payment_provider: Annotated[str, AfterValidator(_payment_provider)] | None = Field(
        default=None, json_schema_extra={"enum": ["stripe", "adyen", "gocardless", None]}
    )
    payment_provider_code: str | None = None
    provider_customer_id: str | None = None
    sync: bool | None = None
    sync_with_provider: bool | None = None
    provider_payment_methods: list[str] | None = Field(
        default=None,
        description="Stripe only: card, sepa_debit, us_bank_account, bacs_debit, link, boleto, crypto, "
        "customer_balance; link requires card; customer_balance stands alone",
    )


class CustomerInput(AddressFields):
    """The body of Lago's `POST /api/v1/customers` (create or update), as carried in a command."""

    external_id: Annotated[str | None, AfterValidator(_required_text)]
    name: Annotated[str | None, Field(max_length=255)] = None
    firstname: str | None = None
    lastname: str | None = None
    legal_name: str | None = None
    legal_number: str | None = None
    tax_identification_number: str | None = None
    phone: str | None = None
    url: str | None = None
    logo_url: str | None = None
    email: Annotated[str, AfterValidator(_email)] | None = Field(
        default=None, description="one address or a comma-separated list"
    )
    currency: Annotated[str, AfterValidator(_currency)] | None = Field(
        default=None, description="current ISO 4217 code, upper-case"
    )
    timezone: Annotated[str, AfterValidator(_timezone)] | None = Field(
        default=None, description="UTC or an IANA zone name"
    )
    customer_type: Annotated[str, AfterValidator(_customer_type)] | None = Field(
        default=None, json_schema_extra={"enum": ["company", "individual", None]}
    )
    net_payment_term: NonNegativeInt | None = None
    finalize_zero_amount_invoice: Annotated[str, AfterValidator(_finalize)] | None = Field(
        default=None, json_schema_extra={"enum": ["inherit", "finalize", "skip", None]}
    )
    tax_codes: Annotated[list[Annotated[str, AfterValidator(_non_blank)]], AfterValidator(_dedupe)] | None = None
    metadata: Annotated[list[MetadataItem], Field(max_length=5)] | None = None
    shipping_address: ShippingAddress | None = None
    billing_configuration: BillingConfiguration | None = None

    def unknown_fields_seen(self) -> int:
        """Unknown fields anywhere in the body, for the `unknown fields` metric."""
        count = self.unknown_field_count()
        for nested in (self.shipping_address, self.billing_configuration):
            if nested is not None:
                count += nested.unknown_field_count()
        for item in self.metadata or ():
            count += item.unknown_field_count()
        return count


def strip_nul(value: Any) -> Any:
    """Remove NUL characters from every string of a decoded JSON value (PostgreSQL text cannot hold them)."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {key: strip_nul(item) for key, item in value.items()}
    if isinstance(value, list):
        return [strip_nul(item) for item in value]
    return value

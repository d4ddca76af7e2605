"""Result events (SPEC §6): the payloads downstream consumers read from `customers.events.v1`.

These models are the published schema (`customer-worker schema` writes `schemas/` from them). The worker does not
build payloads through them: `worker.domain.events` writes plain dicts (the hot path) whose keys come from the field
table, `worker.contract.fields`. The customer models are written out for pydantic and the type checker (their types
say more than the table does); tests hold their fields, and the generated JSON Schema's, equal to the table
(tests/unit/test_field_source.py) and validate every payload the worker writes against these models.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LagoBillingConfiguration(_Event):
    invoice_grace_period: int | None
    payment_provider: Literal["stripe", "adyen", "gocardless"] | None
    payment_provider_code: str | None
    provider_customer_id: str | None
    provider_payment_methods: list[str] | None = Field(description="null unless the provider is Stripe")
    document_locale: str | None


class LagoShippingAddress(_Event):
    address_line1: str | None
    address_line2: str | None
    city: str | None
    zipcode: str | None
    state: str | None
    country: str | None


class LagoMetadata(_Event):
    key: str
    value: str
    display_in_invoice: bool


class LagoCustomer(_Event):
    """Lago's customer object; every field is present, unset ones null (lists empty)."""

    lago_id: UUID
    external_id: str
    name: str | None
    firstname: str | None
    lastname: str | None
    customer_type: Literal["company", "individual"] | None
    email: str | None
    phone: str | None
    url: str | None
    logo_url: str | None
    legal_name: str | None
    legal_number: str | None
    tax_identification_number: str | None
    address_line1: str | None
    address_line2: str | None
    city: str | None
    zipcode: str | None
    state: str | None
    country: str | None
    currency: str | None
    timezone: str | None
    applicable_timezone: str
    net_payment_term: int | None
    finalize_zero_amount_invoice: Literal["inherit", "finalize", "skip"]
    billing_configuration: LagoBillingConfiguration
    shipping_address: LagoShippingAddress
    metadata: list[LagoMetadata]
    tax_codes: list[str]
    created_at: datetime
    updated_at: datetime


class ProviderError(_Event):
    provider: Literal["stripe", "adyen", "gocardless"]
    error_code: str
    message: str
    http_status: int | None


class EventEnvelope(_Event):
    event_id: UUID = Field(description="stable per event: a republished event keeps it")
    organization_id: str
    message_id: str = Field(description="the command that caused the event")
    external_id: str | None
    occurred_at: datetime = Field(description="when the worker wrote the event")


class CustomerCreated(EventEnvelope):
    event_type: Literal["customer.created"]
    customer: LagoCustomer


class CustomerUpdated(EventEnvelope):
    event_type: Literal["customer.updated"]
    customer: LagoCustomer


class CustomerRejected(EventEnvelope):
    event_type: Literal["customer.rejected"]
    errors: dict[str, list[str]] = Field(description="{path: [Lago error codes]}")


class CustomerSkipped(EventEnvelope):
    event_type: Literal["customer.skipped"]
    reason: Literal["stale"]


class PaymentProviderCreated(EventEnvelope):
    event_type: Literal["customer.payment_provider_created"]
    customer: LagoCustomer


class PaymentProviderFailed(EventEnvelope):
    event_type: Literal["customer.payment_provider_error"]
    customer: LagoCustomer
    provider_error: ProviderError


class CheckoutUrlGenerated(EventEnvelope):
    event_type: Literal["customer.checkout_url_generated"]
    customer: LagoCustomer
    checkout_url: str


AnyEvent = Annotated[
    CustomerCreated
    | CustomerUpdated
    | CustomerRejected
    | CustomerSkipped
    | PaymentProviderCreated
    | PaymentProviderFailed
    | CheckoutUrlGenerated,
    Field(discriminator="event_type"),
]

EVENT_MODELS: dict[str, type[EventEnvelope]] = {
    "customer.created": CustomerCreated,
    "customer.updated": CustomerUpdated,
    "customer.rejected": CustomerRejected,
    "customer.skipped": CustomerSkipped,
    "customer.payment_provider_created": PaymentProviderCreated,
    "customer.payment_provider_error": PaymentProviderFailed,
    "customer.checkout_url_generated": CheckoutUrlGenerated,
}

"""Result events (SPEC §6) built once, from outcomes; the relay publishes the stored bytes as they are.

Payloads are plain dicts serialised with orjson: this runs per command on the hot path, and a test checks that
every payload validates against the published models in `worker.contract.events`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, NamedTuple, Protocol
from uuid import UUID

import orjson

from worker.contract.codes import Errors
from worker.domain.customer import CustomerState
from worker.ids import new_id

_JSON_OPTIONS: Final = orjson.OPT_UTC_Z


class OutboxEvent(NamedTuple):
    """One row of the outbox: what the relay publishes to the events topic."""

    event_id: UUID
    event_type: str
    key: str
    traceparent: str | None
    payload: bytes
    schema_id: int | None = None
    """The command's Schema Registry id (SPEC §12): the `schema-id` header of the command's own answer."""


def event_key(organization_id: str, external_id: str | None) -> str:
    return f"{organization_id}:{external_id or ''}"


def lago_customer(state: CustomerState) -> dict[str, Any]:
    """Lago's customer object: every field present, unset ones null, lists as arrays (SPEC §6 and §11)."""
    return {
        "lago_id": state.id,
        "external_id": state.external_id,
        "name": state.name,
        "firstname": state.firstname,
        "lastname": state.lastname,
        "customer_type": state.customer_type,
        "email": state.email,
        "phone": state.phone,
        "url": state.url,
        "logo_url": state.logo_url,
        "legal_name": state.legal_name,
        "legal_number": state.legal_number,
        "tax_identification_number": state.tax_identification_number,
        "address_line1": state.address_line1,
        "address_line2": state.address_line2,
        "city": state.city,
        "zipcode": state.zipcode,
        "state": state.state,
        "country": state.country,
        "currency": state.currency,
        "timezone": state.timezone,
        "applicable_timezone": state.timezone or "UTC",
        "net_payment_term": state.net_payment_term,
        "finalize_zero_amount_invoice": state.finalize_zero_amount_invoice,
        "billing_configuration": {
            "invoice_grace_period": state.invoice_grace_period,
            "payment_provider": state.payment_provider,
            "payment_provider_code": state.payment_provider_code,
            "provider_customer_id": state.provider_customer_id,
            # orjson writes tuples as arrays: no copies into lists.
            "provider_payment_methods": state.provider_payment_methods if state.payment_provider == "stripe" else None,
            "document_locale": state.document_locale,
        },
        "shipping_address": {
            "address_line1": state.shipping_address_line1,
            "address_line2": state.shipping_address_line2,
            "city": state.shipping_city,
            "zipcode": state.shipping_zipcode,
            "state": state.shipping_state,
            "country": state.shipping_country,
        },
        "metadata": state.metadata,
        "tax_codes": state.tax_codes,
        "created_at": state.created_at,
        "updated_at": state.updated_at,
    }


def build_event(
    *,
    event_id: UUID,
    event_type: str,
    organization_id: str,
    message_id: str,
    external_id: str | None,
    occurred_at: datetime,
    traceparent: str | None,
    customer: CustomerState | None = None,
    errors: Errors | None = None,
    extra: dict[str, Any] | None = None,
    schema_id: int | None = None,
) -> OutboxEvent:
    body: dict[str, Any] = {
        "event_id": event_id,
        "event_type": event_type,
        "organization_id": organization_id,
        "message_id": message_id,
        "external_id": external_id,
        "occurred_at": occurred_at,
    }
    if customer is not None:
        body["customer"] = lago_customer(customer)
    if errors is not None:
        body["errors"] = errors
    if extra:
        body.update(extra)
    return OutboxEvent(
        event_id=event_id,
        event_type=event_type,
        key=event_key(organization_id, external_id),
        traceparent=traceparent,
        payload=orjson.dumps(body, option=_JSON_OPTIONS),
        schema_id=schema_id,
    )


class Cause(Protocol):
    """What a provider event answers: a claimed job, or the command whose inline create it reports."""

    @property
    def message_id(self) -> str: ...

    @property
    def traceparent(self) -> str | None: ...


def provider_event(
    cause: Cause, state: CustomerState, event_type: str, now: datetime, extra: dict[str, Any] | None = None
) -> OutboxEvent:
    return build_event(
        event_id=new_id(),
        event_type=event_type,
        organization_id=state.organization_id,
        message_id=cause.message_id,
        external_id=state.external_id,
        occurred_at=now,
        traceparent=cause.traceparent,
        customer=state,
        extra=extra,
    )

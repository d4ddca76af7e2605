"""Result events (SPEC §6) built once, from outcomes; the relay publishes the stored bytes as they are.

Payloads are plain dicts serialised with orjson: this runs per command on the hot path, and a test checks that
every payload validates against the published models in `worker.contract.events`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, NamedTuple, Protocol
from uuid import UUID

import orjson

from worker.contract.codes import Errors
from worker.contract.decode import Admitted, Rejection
from worker.contract.fields import FIELDS, Place, column_of
from worker.domain.customer import CustomerState
from worker.domain.fold import BatchSummary, Outcome, Rejected, Skipped
from worker.ids import new_id, new_ids

_JSON_OPTIONS: Final = orjson.OPT_UTC_Z


class OutboxEvent(NamedTuple):
    """One row of the outbox: what the relay publishes to the events topic."""

    event_id: UUID
    event_type: str
    key: str
    traceparent: str | None
    payload: bytes
    schema_id: int | None = None
    """The command's Schema Registry id (SPEC §12): the `schema-id` header of the command's result event."""


def event_key(organization_id: str, external_id: str | None) -> str:
    return f"{organization_id}:{external_id or ''}"


# Fields whose event value is a rule rather than the column as stored (by name: no name here is in two places).
_COMPUTED: Final = {
    "applicable_timezone": 'state.timezone or "UTC"',
    "provider_payment_methods": 'state.provider_payment_methods if state.payment_provider == "stripe" else None',
}


def _customer_literal() -> str:
    """The customer object as a Python dict display over `state`, from the field table: keys in table order, nested
    objects where their first field is."""
    top: dict[str, str | dict[str, str]] = {}
    for field in FIELDS:
        if not field.in_event:
            continue
        value = _COMPUTED.get(field.name) or f"state.{column_of(field)}"
        if field.place is Place.TOP:
            top[field.name] = value
        else:
            nested = top.setdefault(field.place.value, {})
            assert isinstance(nested, dict)
            nested[field.name] = value

    def display(items: dict[str, str], indent: str) -> str:
        return "{\n" + "".join(f"{indent}    {key!r}: {value},\n" for key, value in items.items()) + indent + "}"

    return display({key: display(v, "        ") if isinstance(v, dict) else v for key, v in top.items()}, "    ")


LAGO_CUSTOMER_SOURCE: Final = f"def lago_customer(state):\n    return {_customer_literal()}\n"
"""The generated source of `lago_customer`, for reading (tracebacks show `<worker.domain.events.lago_customer>`)."""


def _compile_lago_customer() -> Callable[[CustomerState], dict[str, Any]]:
    # Generated once at import, like `collections.namedtuple` and `dataclasses` do: a dict display over attribute
    # reads is the fastest way CPython builds this object (`dict(zip(keys, itemgetter(...)(state)))` measured about
    # 1.4 times slower, and `lago_customer` runs for every event on the hot path), and the keys still come from one
    # table.
    namespace: dict[str, Any] = {}
    exec(compile(LAGO_CUSTOMER_SOURCE, f"<{__name__}.lago_customer>", "exec"), namespace)
    function: Callable[[CustomerState], dict[str, Any]] = namespace["lago_customer"]
    function.__module__ = __name__
    function.__qualname__ = "lago_customer"
    function.__doc__ = (
        "Lago's customer object: every field present, unset ones null, lists as arrays (SPEC §6 and §11); keys, "
        "order and nesting from `worker.contract.fields.FIELDS`. orjson writes the tuples as arrays: no copies."
    )
    return function


lago_customer: Final = _compile_lago_customer()


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
    """What caused a provider event: a claimed job, or the command whose inline create it reports."""

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


# --- The events that settle a batch's records ----------------------------------------------------------------------

_STALE: Final = {"reason": "stale"}


def result_events(
    fresh: Sequence[Admitted],
    outcomes: Mapping[int, Outcome],
    provider_events: Mapping[int, OutboxEvent],
    now: datetime,
    summary: BatchSummary,
) -> list[OutboxEvent]:
    """The event that settles each fresh record (SPEC §6), in batch order, each inline create's event after its
    command's; counted in `summary`, with the provider jobs the outcomes ask for."""
    events: list[OutboxEvent] = []
    position = 0
    for item, event_id in zip(fresh, new_ids(len(fresh)), strict=True):
        summary.unknown_fields += item.unknown_fields
        if isinstance(item, Rejection):
            events.append(_event(item, event_id, now, "customer.rejected", errors=item.errors))
            if item.record_as_processed:
                summary.rejected += 1
            else:
                summary.invalid_signature += 1
            continue
        events.append(_outcome_event(outcomes[position], event_id, now, summary))
        if position in provider_events:
            events.append(provider_events[position])  # after the command's primary event (SPEC §11)
        position += 1
    summary.events = len(events)
    return events


def _outcome_event(outcome: Outcome, event_id: UUID, now: datetime, summary: BatchSummary) -> OutboxEvent:
    command = outcome.command
    if isinstance(outcome, Skipped):
        summary.skipped += 1
        return _event(command, event_id, now, "customer.skipped", extra=_STALE)
    if isinstance(outcome, Rejected):
        summary.rejected += 1
        return _event(command, event_id, now, "customer.rejected", errors=outcome.errors)
    if outcome.created:
        summary.created += 1
    else:
        summary.updated += 1
    summary.enqueued_jobs.extend((outcome.state, job, command.traceparent) for job in outcome.jobs)
    event_type = "customer.created" if outcome.created else "customer.updated"
    return _event(command, event_id, now, event_type, customer=outcome.state)


def _event(
    item: Admitted,
    event_id: UUID,
    now: datetime,
    event_type: str,
    *,
    customer: CustomerState | None = None,
    errors: Errors | None = None,
    extra: dict[str, Any] | None = None,
) -> OutboxEvent:
    return build_event(
        event_id=event_id,
        event_type=event_type,
        organization_id=item.organization_id,
        message_id=item.message_id,
        external_id=item.external_id,
        occurred_at=now,
        traceparent=item.traceparent,
        customer=customer,
        errors=errors,
        extra=extra,
        schema_id=item.schema_id,
    )

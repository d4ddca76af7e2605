"""`sync: true` (SPEC §9 and §11): the provider create call made while the batch's transaction is open, so that
`customer.created` already carries `provider_customer_id`. Past the budget, or on failure, the command's create job
stays in the batch and runs in the background with the same idempotency key and the same request (the job's
snapshot), not before the `Retry-After` the inline attempt was given.

Pure: `inline_creates` says which calls a batch's outcomes ask for, `link_inline` rewrites the outcomes with what
the calls brought back. The calls themselves are the service's (`worker.service`, through the provider runner)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple
from uuid import UUID

from worker.contract.connections import Connection, Connections
from worker.domain.customer import CustomerState
from worker.domain.events import OutboxEvent, provider_event
from worker.domain.fold import Applied, Outcome, ProviderJob
from worker.domain.jobs import InlineResult, needs_checkout_after_create, needs_push


class InlineTarget(NamedTuple):
    """One inline create a batch asks for: the command's position, its outcome, the create job and its connection."""

    key: int
    outcome: Applied
    job: ProviderJob
    connection: Connection

    @property
    def request(self) -> CustomerState:
        """What the call sends: the job's snapshot (the customer as this command left it)."""
        return self.job.request or self.outcome.state

    @property
    def message_id(self) -> str:
        return self.outcome.command.message_id


def _inline_create(outcome: Outcome) -> ProviderJob | None:
    if not isinstance(outcome, Applied) or outcome.command.link is None or not outcome.command.link.sync:
        return None
    return next((job for job in outcome.jobs if job.kind == "create"), None)


def inline_creates(outcomes: dict[int, Outcome], connections: Connections) -> list[InlineTarget]:
    """The inline creates the outcomes (keyed by command position) ask for, on connections this replica knows."""
    targets: list[InlineTarget] = []
    for key, outcome in outcomes.items():
        job = _inline_create(outcome)
        connection = connections.get(outcome.command.organization_id, job.connection_code) if job else None
        if job is not None and connection is not None:
            assert isinstance(outcome, Applied)
            targets.append(InlineTarget(key, outcome, job, connection))
    return targets


def link_inline(
    outcomes: dict[int, Outcome], targets: Sequence[InlineTarget], results: Sequence[InlineResult], now: datetime
) -> dict[int, OutboxEvent]:
    """Rewrites `outcomes` with the inline creates' results (one per target, in order). Returns the
    `customer.payment_provider_created` events, by command position, to be written after each command's primary
    event."""
    linked: dict[int, tuple[str, CustomerState]] = {}
    for target, result in zip(targets, results, strict=True):
        asked = target.outcome
        if result.provider_customer_id:
            linked[target.key] = (result.provider_customer_id, target.request)
        elif result.retry_after:
            # The background job makes its first call no earlier than the provider asked.
            delayed = tuple(
                dataclasses.replace(item, delay=result.retry_after) if item is target.job else item
                for item in asked.jobs
            )
            outcomes[target.key] = Applied(asked.command, asked.created, asked.state, delayed)
    events: dict[int, OutboxEvent] = {}
    by_customer: dict[UUID, tuple[str, str | None, CustomerState]] = {}
    last: dict[UUID, int] = {}
    # One pass in fold order (a customer's commands are consecutive): later commands of a customer linked inline
    # in this batch see the provider id too, and do not ask for a second create.
    for key, outcome in outcomes.items():
        if not isinstance(outcome, Applied):
            continue
        state = outcome.state
        if key in linked:
            provider_id, sent = linked[key]
            state = state._replace(provider_customer_id=provider_id)
            jobs = tuple(job for job in outcome.jobs if job.kind != "create")
            if needs_checkout_after_create(state.payment_provider or "", state):
                jobs += (_job("checkout", state, outcome.command.message_id),)
            outcomes[key] = Applied(outcome.command, outcome.created, state, jobs)
            by_customer[state.id] = (provider_id, state.payment_provider_code, sent)
            last[state.id] = key
            events[key] = provider_event(outcome.command, state, "customer.payment_provider_created", now)
        elif state.id in by_customer:
            provider_id, code, _ = by_customer[state.id]
            # Only while the customer stays on that connection: a move to another one keeps its own create.
            if state.payment_provider_code == code:
                if state.provider_customer_id is None:
                    state = state._replace(provider_customer_id=provider_id)
                jobs = tuple(job for job in outcome.jobs if job.kind != "create")
                outcomes[key] = Applied(outcome.command, outcome.created, state, jobs)
                last[state.id] = key
    # Later commands of the batch changed what the create sent: push the customer's final fields after it.
    for customer, key in last.items():
        final = outcomes[key]
        assert isinstance(final, Applied)
        provider_id, code, sent = by_customer[customer]
        state = final.state
        if (
            state.payment_provider_code == code
            and state.provider_customer_id == provider_id
            and needs_push(state.payment_provider or "", sent, state)
            and not any(job.kind == "update" for job in final.jobs)
        ):
            update = _job("update", state, final.command.message_id)
            outcomes[key] = Applied(final.command, final.created, state, (*final.jobs, update))
    return events


def _job(kind: str, state: CustomerState, message_id: str) -> ProviderJob:
    assert kind in ("checkout", "update")
    return ProviderJob(
        "checkout" if kind == "checkout" else "update",
        state.payment_provider or "",
        state.payment_provider_code or "",
        message_id,
    )

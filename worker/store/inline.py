"""`sync: true` (SPEC §9 and §11): the provider create call made while the batch's transaction is open, so that
`customer.created` already carries `provider_customer_id`. Past the budget, or on failure, the command's create job
stays in the batch and runs in the background with the same idempotency key (never a second provider customer)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from uuid import UUID

from worker.domain.customer import CustomerState
from worker.domain.events import OutboxEvent
from worker.domain.fold import Applied, Outcome, ProviderJob
from worker.providers.jobs import needs_checkout_after_create, provider_event
from worker.providers.registry import Connection, ProviderRegistry

InlineCreate = Callable[[Connection, CustomerState, str], Awaitable[str | None]]
"""(connection, customer as it will be committed, message id) -> provider customer id, or None."""


def _inline_create(outcome: Outcome) -> ProviderJob | None:
    if not isinstance(outcome, Applied) or outcome.command.link is None or not outcome.command.link.sync:
        return None
    return next((job for job in outcome.jobs if job.kind == "create"), None)


async def create_inline(
    outcomes: dict[int, Outcome],
    registry: ProviderRegistry,
    inline: InlineCreate,
    now: datetime,
) -> dict[int, OutboxEvent]:
    """Runs the batch's inline creates concurrently and rewrites `outcomes` with their results. Returns the
    `customer.payment_provider_created` events, by command, to be written after each command's primary event."""
    targets: list[tuple[int, Applied, ProviderJob, Connection]] = []
    for key, outcome in outcomes.items():
        job = _inline_create(outcome)
        connection = registry.get(outcome.command.organization_id, job.connection_code) if job else None
        if job is not None and connection is not None:
            assert isinstance(outcome, Applied)
            targets.append((key, outcome, job, connection))
    if not targets:
        return {}
    results = await asyncio.gather(
        *(inline(connection, outcome.state, outcome.command.message_id) for _, outcome, _, connection in targets)
    )
    linked = {key: provider_id for (key, *_), provider_id in zip(targets, results, strict=True) if provider_id}
    events: dict[int, OutboxEvent] = {}
    by_customer: dict[UUID, tuple[str, str | None]] = {}
    # One pass in fold order (a customer's commands are consecutive): later commands of a customer linked inline
    # in this batch see the provider id too, and do not ask for a second create.
    for key, outcome in outcomes.items():
        if not isinstance(outcome, Applied):
            continue
        state = outcome.state
        if key in linked:
            state = state._replace(provider_customer_id=linked[key])
            jobs = tuple(job for job in outcome.jobs if job.kind != "create")
            if needs_checkout_after_create(state.payment_provider or "", state):
                jobs += (
                    ProviderJob(
                        "checkout",
                        state.payment_provider or "",
                        state.payment_provider_code or "",
                        outcome.command.message_id,
                    ),
                )
            outcomes[key] = Applied(outcome.command, outcome.created, state, jobs)
            by_customer[state.id] = (linked[key], state.payment_provider_code)
            events[key] = provider_event(outcome.command, state, "customer.payment_provider_created", now)
        elif state.id in by_customer:
            provider_id, code = by_customer[state.id]
            # Only while the customer stays on that connection: a move to another one keeps its own create.
            if state.payment_provider_code == code:
                if state.provider_customer_id is None:
                    state = state._replace(provider_customer_id=provider_id)
                jobs = tuple(job for job in outcome.jobs if job.kind != "create")
                outcomes[key] = Applied(outcome.command, outcome.created, state, jobs)
    return events

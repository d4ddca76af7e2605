"""One database transaction per batch (SPEC §4 and §5), with set-based statements only:

1. record the batch's message ids in the inbox; those already there are duplicates and get no answer;
2. load and lock the customers the new commands touch;
3. fold each customer's commands in partition order (pure domain code);
4. upsert the changed customers, write the outbox events and the provider jobs.

Six statements at most, whatever the batch size (the look-up of creates in hand only when a command asks for a
create for a stored, unlinked customer; the provider jobs only when there are some; the id key once per process);
the customers' upsert and the events' insert travel as one statement. The caller commits the Kafka offsets only
after this returns.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from worker.contract.codes import Errors
from worker.contract.connections import ProviderRegistry
from worker.contract.decode import Command, Rejection
from worker.domain.customer import CustomerState
from worker.domain.events import OutboxEvent, build_event
from worker.domain.fold import Applied, Outcome, Patches, ProviderJob, Refused, Skipped, fold_customer
from worker.ids import customer_id, new_ids
from worker.store.console import count_answers
from worker.store.db import Conn
from worker.store.inline import InlineCreate, create_inline
from worker.store.outbox import event_arrays, insert_sql
from worker.store.rows import (
    SELECT_FOR_UPDATE,
    IdentityConflictError,
    rows_json,
    state_from_row,
    state_json,
    upsert_sql,
)

Answer = Command | Rejection

_INBOX: Final = (
    "INSERT INTO processed_messages (organization_id, message_id) "
    "SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING "
    "RETURNING organization_id, message_id"
)
# Data-modifying CTEs run once each, read or not: the events are written whether or not any customer is.
_WRITE: Final = f"WITH written AS ({upsert_sql()}), events AS ({insert_sql(2)}) SELECT count(*) FROM written"
_STALE: Final = {"reason": "stale"}
# No conflict target: a job already recorded for the command (`provider_jobs_once`) and a second create for a
# customer and connection whose create is in hand (`provider_jobs_one_create_idx`) are both left out.
_JOBS: Final = (
    "INSERT INTO provider_jobs "
    "(organization_id, customer_id, message_id, kind, provider, connection_code, traceparent, request, "
    "next_attempt_at) "
    "SELECT o, c, m, k, p, cc, t, r, now() + make_interval(secs => d) FROM unnest($1::text[], $2::uuid[], "
    "$3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::jsonb[], $9::float8[]) "
    "WITH ORDINALITY AS x(o, c, m, k, p, cc, t, r, d, n) ORDER BY n ON CONFLICT DO NOTHING"
)
_ACTIVE_CREATES: Final = (
    "SELECT customer_id, connection_code FROM provider_jobs "
    "WHERE customer_id = ANY($1::uuid[]) AND kind = 'create' AND status IN ('pending', 'running')"
)
_ID_KEY: Final = "SELECT value FROM id_keys WHERE name = 'customer_ids'"
# The database's key of customer ids, read once per process when the first customer is created.
_id_key: list[bytes] = []


@dataclass(slots=True)
class BatchSummary:
    created: int = 0
    updated: int = 0
    rejected: int = 0
    invalid_signature: int = 0
    skipped: int = 0
    duplicates: int = 0
    unknown_fields: int = 0
    enqueued_jobs: list[tuple[CustomerState, ProviderJob, str | None]] = field(default_factory=list)
    """The provider jobs the batch writes (customer, job, traceparent); not a count like the fields above."""
    events: int = 0

    def outcome_counts(self) -> dict[str, int]:
        """Answers per outcome, as the console counts them (`answer_counts.outcome`)."""
        return {
            "created": self.created,
            "updated": self.updated,
            "rejected": self.rejected + self.invalid_signature,
            "skipped": self.skipped,
            "duplicate": self.duplicates,
        }

    def add(self, other: BatchSummary) -> None:
        """Fold in the summary of another part of the same batch (poison isolation applies a batch in parts)."""
        self.created += other.created
        self.updated += other.updated
        self.rejected += other.rejected
        self.invalid_signature += other.invalid_signature
        self.skipped += other.skipped
        self.duplicates += other.duplicates
        self.unknown_fields += other.unknown_fields
        self.enqueued_jobs.extend(other.enqueued_jobs)
        self.events += other.events


async def apply_batch(
    conn: Conn,
    answers: Sequence[Answer],
    *,
    registry: ProviderRegistry,
    now: datetime,
    inline: InlineCreate | None = None,
    patches: Patches | None = None,
) -> BatchSummary:
    summary = BatchSummary()
    async with conn.transaction():
        fresh = await _record_in_inbox(conn, answers, summary)
        # Outcomes and inline-create events are keyed by the command's position among the batch's fresh commands.
        commands = [answer for answer in fresh if isinstance(answer, Command)]
        outcomes = await _fold(conn, commands, registry, now, patches)
        provider_events = await create_inline(outcomes, registry, inline, now) if inline is not None else {}
        events: list[OutboxEvent] = []
        position = 0
        for answer, event_id in zip(fresh, new_ids(len(fresh)), strict=True):
            summary.unknown_fields += answer.unknown_fields
            if isinstance(answer, Rejection):
                events.append(_event(answer, event_id, now, "customer.rejected", errors=answer.errors))
                if answer.record_as_processed:
                    summary.rejected += 1
                else:
                    summary.invalid_signature += 1
                continue
            events.append(_answer(outcomes[position], event_id, now, summary))
            if position in provider_events:
                events.append(provider_events[position])  # after the command's primary event (SPEC §11)
            position += 1
        await _write(conn, outcomes.values(), events, summary)
        await count_answers(conn, fresh, outcomes.values(), summary.outcome_counts(), now)
        summary.events = len(events)
    return summary


async def _record_in_inbox(conn: Conn, answers: Sequence[Answer], summary: BatchSummary) -> list[Answer]:
    """The answers to act on, in batch order: first deliveries, and signature failures (never recorded)."""
    seen: set[tuple[str, str]] = set()
    candidates: list[Answer] = []
    for answer in answers:
        if isinstance(answer, Rejection) and not answer.record_as_processed:
            candidates.append(answer)
            continue
        key = (answer.organization_id, answer.message_id)
        if key in seen:
            summary.duplicates += 1
            continue
        seen.add(key)
        candidates.append(answer)
    if not seen:
        return candidates
    organizations, message_ids = zip(*seen, strict=True)
    inserted = {(row[0], row[1]) for row in await conn.fetch(_INBOX, organizations, message_ids)}
    fresh = []
    for answer in candidates:
        recorded = not isinstance(answer, Rejection) or answer.record_as_processed
        if recorded and (answer.organization_id, answer.message_id) not in inserted:
            summary.duplicates += 1
            continue
        fresh.append(answer)
    return fresh


async def _fold(
    conn: Conn, commands: list[Command], registry: ProviderRegistry, now: datetime, patches: Patches | None
) -> dict[int, Outcome]:
    """Each command's outcome, keyed by its position in `commands`; grouped per customer, in fold order."""
    by_customer: dict[tuple[str, str], list[Command]] = {}
    positions: dict[tuple[str, str], list[int]] = {}
    for position, command in enumerate(commands):
        key = (command.organization_id, command.external_id)
        by_customer.setdefault(key, []).append(command)
        positions.setdefault(key, []).append(position)
    if not by_customer:
        return {}
    organizations, external_ids = zip(*by_customer, strict=True)
    stored = {
        (state.organization_id, state.external_id): state
        for state in map(state_from_row, await conn.fetch(SELECT_FOR_UPDATE, organizations, external_ids))
    }
    # Only customers that a command of this batch may ask a create for (none at all on most batches).
    asking = [
        state
        for key, state in stored.items()
        if any(command.link is not None and command.link.sync_with_provider for command in by_customer[key])
    ]
    active = await _active_creates(conn, asking)
    if len(stored) < len(by_customer) and not _id_key:
        _id_key.append(await conn.fetchval(_ID_KEY))
    id_key = _id_key[0] if _id_key else b""

    def lago_id(command: Command) -> uuid.UUID:
        return customer_id(id_key, command.organization_id, command.message_id)

    outcomes: dict[int, Outcome] = {}
    for key, customer_commands in by_customer.items():
        state = stored.get(key)
        result = fold_customer(
            state,
            customer_commands,
            registry=registry,
            now=now,
            new_id=lago_id,
            active_creates=active.get(state.id, frozenset()) if state is not None else frozenset(),
            patches=patches,
        )
        for position, outcome in zip(positions[key], result.outcomes, strict=True):
            outcomes[position] = outcome
    return outcomes


async def _active_creates(conn: Conn, stored: Iterable[CustomerState]) -> dict[uuid.UUID, frozenset[str]]:
    """Connections with a create in hand, per stored customer not linked yet (read under the customers' locks)."""
    # Every unlinked customer: a create may still be in hand for a connection the customer has since left.
    unlinked = [state.id for state in stored if not state.provider_customer_id]
    if not unlinked:
        return {}
    active: dict[uuid.UUID, set[str]] = {}
    for row in await conn.fetch(_ACTIVE_CREATES, unlinked):
        active.setdefault(uuid.UUID(bytes=row[0].bytes), set()).add(row[1])
    return {customer: frozenset(codes) for customer, codes in active.items()}


def _answer(outcome: Outcome, event_id: uuid.UUID, now: datetime, summary: BatchSummary) -> OutboxEvent:
    command = outcome.command
    if isinstance(outcome, Skipped):
        summary.skipped += 1
        return _event(command, event_id, now, "customer.skipped", extra=_STALE)
    if isinstance(outcome, Refused):
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
    answer: Answer,
    event_id: uuid.UUID,
    now: datetime,
    event_type: str,
    *,
    customer: CustomerState | None = None,
    errors: Errors | None = None,
    extra: dict[str, Any] | None = None,
) -> OutboxEvent:
    """The answer to a command or a rejection (SPEC §6)."""
    return build_event(
        event_id=event_id,
        event_type=event_type,
        organization_id=answer.organization_id,
        message_id=answer.message_id,
        external_id=answer.external_id,
        occurred_at=now,
        traceparent=answer.traceparent,
        customer=customer,
        errors=errors,
        extra=extra,
        schema_id=answer.schema_id,
    )


async def _write(conn: Conn, outcomes: Iterable[Outcome], events: list[OutboxEvent], summary: BatchSummary) -> None:
    final: dict[uuid.UUID, CustomerState] = {}
    for outcome in outcomes:
        if isinstance(outcome, Applied):
            final[outcome.state.id] = outcome.state  # later commands of a customer overwrite earlier ones
    if final or events:
        written = await conn.fetchval(_WRITE, rows_json(list(final.values())), *event_arrays(events))
        if written != len(final):
            raise IdentityConflictError("a customer id is taken by another organization or external id")
    if summary.enqueued_jobs:
        await conn.execute(
            _JOBS,
            [state.organization_id for state, _, _ in summary.enqueued_jobs],
            [state.id for state, _, _ in summary.enqueued_jobs],
            [job.message_id for _, job, _ in summary.enqueued_jobs],
            [job.kind for _, job, _ in summary.enqueued_jobs],
            [job.provider for _, job, _ in summary.enqueued_jobs],
            [job.connection_code for _, job, _ in summary.enqueued_jobs],
            [traceparent for _, _, traceparent in summary.enqueued_jobs],
            [None if job.request is None else state_json(job.request) for _, job, _ in summary.enqueued_jobs],
            [job.delay for _, job, _ in summary.enqueued_jobs],
        )

"""Applying one batch's commands to the customers they touch (SPEC §4, §5, §9, §11). Pure.

The batch as a whole (below `fold_customer`): `inbox_keys` and `first_deliveries` sort out the duplicates around the
inbox insert, `group_by_customer` and `fold_batch` fold each customer's commands; the events that settle the records
are `worker.domain.events.result_events`, counted in a `BatchSummary`. The service runs them inside the transaction,
around the SQL of `worker.store.batch`.

`fold_customer` takes a customer as stored (or None) and that customer's new commands in partition order, and
returns the final state with one outcome per command. The store loads and locks, calls this, and writes the result;
ids and the clock are passed in so the function stays deterministic under test.

At most one create per customer and connection (SPEC §12): a command that asks for a create while one is already in
hand for that connection (`active_creates`, or an earlier command of the same fold) adds no second create. It merges
into the pending one, whose success pushes whatever changed since its snapshot (`worker.domain.jobs`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from worker.contract.codes import BASE, Errors
from worker.contract.connections import Connections, LookupFailure
from worker.contract.decode import Admitted, Command, Rejection
from worker.contract.links import resolve_connection
from worker.domain.customer import (
    PROVIDER_PUSHED_FIELDS,
    STRIPE_DEFAULT_PAYMENT_METHODS,
    CustomerState,
    advance_high_water_mark,
    apply_patch,
    is_stale,
    new_customer,
    patch_of,
    stripe_setup_methods,
)
from worker.ids import customer_id

JobKind = Literal["create", "update", "checkout"]
Patches = Mapping[tuple[str, str], dict[str, Any]]
"""Commands' patches made ahead (`patch_of`, off the critical path), keyed by (organization_id, message_id): the first
command of a batch with that key is the only one folded (the inbox settles the others as duplicates), so its patch is
the one kept. A command without one gets its patch made when folded."""


@dataclass(frozen=True, slots=True)
class ProviderJob:
    """A provider call the command asks for, recorded with the customer so that a crash cannot lose it."""

    kind: JobKind
    provider: str
    connection_code: str
    message_id: str
    request: CustomerState | None = None
    """For a create: the customer as the call will send it, fixed now so that every retry sends the same request."""
    delay: float = 0.0
    """Seconds before the first background call (a `Retry-After` the inline attempt received)."""


@dataclass(frozen=True, slots=True)
class Applied:
    command: Command
    created: bool
    state: CustomerState
    jobs: tuple[ProviderJob, ...] = ()


@dataclass(frozen=True, slots=True)
class Skipped:
    command: Command


@dataclass(frozen=True, slots=True)
class Rejected:
    """Valid on its own, rejected against the stored customer (its provider connection cannot be resolved): settled
    with `customer.rejected` like a `Rejection`, writes no customer data."""

    command: Command
    errors: Errors


Outcome = Applied | Skipped | Rejected


@dataclass(frozen=True, slots=True)
class FoldResult:
    state: CustomerState | None
    changed: bool
    outcomes: tuple[Outcome, ...]


def fold_customer(
    stored: CustomerState | None,
    commands: Sequence[Command],
    *,
    connections: Connections,
    now: datetime,
    new_id: Callable[[Command], UUID],
    active_creates: frozenset[str] = frozenset(),
    patches: Patches | None = None,
) -> FoldResult:
    """`new_id(command)`: the id of a customer that `command` creates (the same on every retry, see worker.ids).
    `active_creates`: connection codes with a create job pending or running for the stored customer."""
    state = stored
    changed = False
    outcomes: list[Outcome] = []
    creates = set(active_creates)
    for command in commands:
        patch = patches.get((command.organization_id, command.message_id)) if patches else None
        outcome = apply_command(state, command, connections=connections, now=now, new_id=new_id, patch=patch)
        if isinstance(outcome, Applied):
            state = outcome.state
            changed = True
            if any(job.kind == "create" for job in outcome.jobs):
                jobs = tuple(job for job in outcome.jobs if job.kind != "create" or job.connection_code not in creates)
                creates.update(job.connection_code for job in outcome.jobs if job.kind == "create")
                if jobs != outcome.jobs:
                    outcome = Applied(outcome.command, outcome.created, outcome.state, jobs)
        outcomes.append(outcome)
    return FoldResult(state=state, changed=changed, outcomes=tuple(outcomes))


def apply_command(
    state: CustomerState | None,
    command: Command,
    *,
    connections: Connections,
    now: datetime,
    new_id: Callable[[Command], UUID],
    patch: dict[str, Any] | None = None,
) -> Outcome:
    """`patch`: `patch_of(command.customer)` if made ahead; copied, since a retried batch folds it again."""
    if is_stale(state, command.occurred_at):
        return Skipped(command)

    patch = patch_of(command.customer) if patch is None else dict(patch)
    link = command.link
    linked_code: str | None = None
    if link is not None:
        found = resolve_connection(
            connections,
            command.organization_id,
            link,
            stored_provider=state.payment_provider if state else None,
            stored_code=state.payment_provider_code if state else None,
        )
        if isinstance(found, LookupFailure):
            return Rejected(command, {BASE: [found.code.value]})
        if found is not None:
            linked_code = found.code
            patch["payment_provider"] = found.provider
            patch["payment_provider_code"] = found.code

    if command.occurred_at is not None:
        patch["high_water_mark"] = advance_high_water_mark(
            state.high_water_mark if state else None, command.occurred_at
        )
    if (
        linked_code is not None
        and patch.get("payment_provider") == "stripe"
        and not (patch.get("provider_payment_methods") or (state and state.provider_payment_methods))
    ):
        patch["provider_payment_methods"] = STRIPE_DEFAULT_PAYMENT_METHODS
    if state is None:
        after = new_customer(new_id(command), command.organization_id, command.external_id, now, patch)
        created = True
    else:
        after = apply_patch(state, now, patch)
        created = False
    return Applied(command, created, after, _jobs(state, after, command, linked_code, patch))


def _jobs(
    before: CustomerState | None,
    after: CustomerState,
    command: Command,
    linked_code: str | None,
    patch: dict[str, object],
) -> tuple[ProviderJob, ...]:
    provider = after.payment_provider
    link = command.link
    if provider is None or after.payment_provider_code is None:
        return ()
    message_id = command.message_id
    code = after.payment_provider_code
    if linked_code is not None and link is not None:
        if link.sync_with_provider and not after.provider_customer_id:
            return (ProviderJob("create", provider, code, message_id, after),)
        newly_linked = link.provider_customer_id and (
            before is None or before.provider_customer_id != after.provider_customer_id
        )
        if newly_linked and before is not None and provider == "stripe" and stripe_setup_methods(after):
            return (ProviderJob("checkout", provider, code, message_id),)
    # A command that repeats the link (producers often send the whole body) still pushes what it changed.
    if (
        provider == "stripe"
        and before is not None
        and before.provider_customer_id
        and after.provider_customer_id == before.provider_customer_id
        and any(field in patch and getattr(before, field) != getattr(after, field) for field in PROVIDER_PUSHED_FIELDS)
    ):
        return (ProviderJob("update", provider, code, message_id),)
    return ()


# --- The batch as a whole -------------------------------------------------------------------------------------------

InboxKey = tuple[str, str]
"""(organization_id, message_id): what the inbox records, once per command ever."""
CustomerKey = tuple[str, str]
"""(organization_id, external_id)."""


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
        """Records settled per outcome, as the console counts them (`answer_counts.outcome`)."""
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


def _recorded(admitted: Admitted) -> bool:
    """Signature failures are never recorded in the inbox: the genuine command may still come with that id."""
    return not isinstance(admitted, Rejection) or admitted.record_as_processed


def inbox_keys(batch: Sequence[Admitted]) -> list[InboxKey]:
    """The keys to record in the inbox, each once."""
    return list(dict.fromkeys((item.organization_id, item.message_id) for item in batch if _recorded(item)))


def first_deliveries(batch: Sequence[Admitted], inserted: set[InboxKey], summary: BatchSummary) -> list[Admitted]:
    """What to act on, in batch order: the first delivery of each key the inbox took (`inserted`), and signature
    failures. The rest are duplicates, settled without an event."""
    fresh: list[Admitted] = []
    seen: set[InboxKey] = set()
    for item in batch:
        if _recorded(item):
            key = (item.organization_id, item.message_id)
            if key in seen or key not in inserted:
                summary.duplicates += 1
                continue
            seen.add(key)
        fresh.append(item)
    return fresh


def group_by_customer(commands: Sequence[Command]) -> dict[CustomerKey, list[int]]:
    """Each customer's commands, as positions in `commands`, in partition order."""
    groups: dict[CustomerKey, list[int]] = {}
    for position, command in enumerate(commands):
        groups.setdefault((command.organization_id, command.external_id), []).append(position)
    return groups


def asking_for_creates(
    commands: Sequence[Command], groups: Mapping[CustomerKey, list[int]], stored: Mapping[CustomerKey, CustomerState]
) -> list[CustomerState]:
    """The stored customers that a command of this batch may ask a create for (none at all on most batches)."""
    return [
        state
        for key, state in stored.items()
        if any((link := commands[position].link) is not None and link.sync_with_provider for position in groups[key])
    ]


def fold_batch(
    commands: Sequence[Command],
    groups: Mapping[CustomerKey, list[int]],
    stored: Mapping[CustomerKey, CustomerState],
    active_creates: Mapping[UUID, frozenset[str]],
    *,
    connections: Connections,
    now: datetime,
    id_key: bytes,
    patches: Patches | None,
) -> dict[int, Outcome]:
    """Each command's outcome, keyed by its position in `commands`; grouped per customer, in fold order."""

    def new_id(command: Command) -> UUID:
        return customer_id(id_key, command.organization_id, command.message_id)

    outcomes: dict[int, Outcome] = {}
    for key, positions in groups.items():
        state = stored.get(key)
        result = fold_customer(
            state,
            [commands[position] for position in positions],
            connections=connections,
            now=now,
            new_id=new_id,
            active_creates=active_creates.get(state.id, frozenset()) if state is not None else frozenset(),
            patches=patches,
        )
        for position, outcome in zip(positions, result.outcomes, strict=True):
            outcomes[position] = outcome
    return outcomes


def final_states(outcomes: Iterable[Outcome]) -> list[CustomerState]:
    """The customers to write: each one's state after its last applied command."""
    final: dict[UUID, CustomerState] = {}
    for outcome in outcomes:
        if isinstance(outcome, Applied):
            final[outcome.state.id] = outcome.state  # later commands of a customer overwrite earlier ones
    return list(final.values())

"""Provider jobs as the domain sees them: a claimed job, what a call brings back, and the rules that decide whether
a job still has work to do and what follows a create. No I/O: the queue's SQL is `worker.store.jobs`, the calls are
`worker.providers.runner`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from worker.domain.customer import PROVIDER_PUSHED_FIELDS, CustomerState, stripe_setup_methods


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    id: int
    organization_id: str
    customer_id: uuid.UUID
    message_id: str
    kind: str
    provider: str
    connection_code: str
    traceparent: str | None
    attempts: int
    """Claims so far, this one included; also the fencing token of this claim."""
    request: CustomerState | None = None
    """A create's request snapshot (the customer as the command left it); None for other kinds and older jobs."""
    last_error_code: str | None = None
    """The error code the previous attempt ended with, if any."""
    search_missed_for: float | None = None
    """After a dead end (SPEC §12): seconds since search first failed to find the customer (database clock)."""
    search_misses: int = 0
    """After a dead end: how many searches have missed so far."""
    worker_faults: int = 0
    """Attempts that ended through a fault of the worker (a lost lease, an internal error), this one included when
    it is a claim over a lost lease. Only these are bounded; waiting on the provider is not."""


@dataclass(frozen=True, slots=True)
class ConnectionTurn:
    """What a fair claim needs of one connection this replica knows: how many more of its jobs it may take now
    (`room`) and how many it already has in hand (`busy`), so the next free slot goes to the least busy."""

    organization_id: str
    code: str
    provider: str
    room: int
    busy: int


@dataclass(frozen=True, slots=True)
class JobResult:
    """What a successful job brings back: the provider customer id it created or used, and a checkout URL."""

    provider_customer_id: str | None = None
    checkout_url: str | None = None


@dataclass(frozen=True, slots=True)
class InlineResult:
    """What an inline create (`sync: true`) brings back: the provider customer id, or the `Retry-After` the
    background job must honour before its first call."""

    provider_customer_id: str | None = None
    retry_after: float | None = None


def linked_to(job: ClaimedJob, state: CustomerState) -> bool:
    return state.payment_provider == job.provider and state.payment_provider_code == job.connection_code


def needs_checkout_after_create(provider: str, state: CustomerState) -> bool:
    """SPEC §9/§11: Stripe when a payment method needs setup; GoCardless always (a billing request flow); Adyen
    always, its link coming with the create itself."""
    if provider == "stripe":
        return bool(stripe_setup_methods(state))
    return provider in ("gocardless", "adyen")


def needs_push(provider: str, sent: CustomerState, current: CustomerState) -> bool:
    """True when the fields pushed to a linked customer (Stripe: name, e-mail, address, phone) differ from what
    the create sent: an update job then brings the provider up to date (SPEC §12)."""
    if provider != "stripe":
        return False
    return any(getattr(sent, field) != getattr(current, field) for field in PROVIDER_PUSHED_FIELDS)


def skip_reason(job: ClaimedJob, state: CustomerState | None) -> str | None:
    """Why the job has nothing left to do now, or None. Checked before the provider call, and again (for the write)
    under the customer's row lock."""
    if state is None:
        return "customer_missing"
    if not linked_to(job, state):
        return "connection_unlinked"  # a later command unlinked the customer or moved it to another connection
    if job.kind == "create":
        return "already_linked" if state.provider_customer_id else None
    if not state.provider_customer_id:
        return "no_provider_customer"
    if job.kind == "update" and job.provider == "adyen":
        return "nothing_to_push"
    if job.kind == "checkout" and job.provider == "stripe" and not stripe_setup_methods(state):
        return "no_setup_needed"
    return None


def superseded_reason(job: ClaimedJob, state: CustomerState | None, result: JobResult) -> str | None:
    """Why a successful call's result is no longer wanted (nothing linked, no event), or None.

    An update was pushed whatever happened since; a create's customer is linked, and a checkout URL announced, only
    while the customer is still linked to the same connection (and, for a checkout, the same provider customer)."""
    if job.kind == "update":
        return None
    if state is None:
        return "customer_missing"
    if not linked_to(job, state):
        return "connection_unlinked"
    if job.kind == "checkout":
        return None if state.provider_customer_id == result.provider_customer_id else "provider_customer_changed"
    if state.provider_customer_id is None:
        return None
    if state.provider_customer_id == result.provider_customer_id:
        return "already_linked_same"  # e.g. the inline path of `sync: true` linked it and answered already
    return "already_linked"

"""Deterministic idempotency keys (SPEC §9): any retry, redelivery or other replica reuses the same key.

A key depends only on what the job row holds for ever (organization, message id, kind), never on time, attempt
number or process, so a call repeated after a timeout, a crash or a lost answer is recognised by the provider and
answered with what the first call did. Keys stay within 64 characters, the smallest limit among the providers
(Adyen); they carry a hash, not the ids themselves, so no customer data leaves in a header.
"""

from __future__ import annotations

import hashlib
from typing import Final

import orjson

from worker.domain.jobs import ClaimedJob

MAX_KEY_LENGTH: Final = 64
_PREFIX: Final = "cw"
_DIGEST_CHARS: Final = 32  # 128 bits: collisions across all jobs ever are out of reach
_PARAMS_DIGEST_CHARS: Final = 12


def idempotency_key(organization_id: str, message_id: str, kind: str) -> str:
    """`cw-<kind>-<sha256 prefix>`; the three parts are JSON-encoded together, so no two triples share a key."""
    digest = hashlib.sha256(orjson.dumps([organization_id, message_id, kind])).hexdigest()[:_DIGEST_CHARS]
    key = f"{_PREFIX}-{kind}-{digest}"
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError("job kind too long for an idempotency key")
    return key


def derived_key(key: str, step: str, params: object = None) -> str:
    """A key for one further request of the same job (`step`: a short fixed name such as `cs`, `br`).

    With `params`, the key also depends on the request's content. Used where a provider refuses a known key with
    different parameters (Stripe answers 400) and where sending the new content is right: an update pushes the
    customer's current values, a checkout session the current payment methods. Identical content still replays.
    """
    derived = f"{key}-{step}"
    if params is not None:
        digest = hashlib.sha256(orjson.dumps(params, option=orjson.OPT_SORT_KEYS)).hexdigest()
        derived += f"-{digest[:_PARAMS_DIGEST_CHARS]}"
    if len(derived) > MAX_KEY_LENGTH:
        raise ValueError("derived idempotency key too long")
    return derived


def key_for(job: ClaimedJob) -> str:
    """The job's idempotency key. An Adyen `checkout` job reuses the create's key: Adyen replays the payment link the
    create made, which is the customer's checkout link, instead of making a second one."""
    kind = "create" if job.provider == "adyen" and job.kind == "checkout" else job.kind
    return idempotency_key(job.organization_id, job.message_id, kind)

"""Identifiers: random (version 4) UUIDs for events and the like, and customer ids that survive a retry.

Event ids come from `uuid.uuid4()`, that is from the kernel's CSPRNG: unpredictable, and never the same sequence
in two processes (a forked Mersenne Twister would repeat its parent's).

A customer id (`lago_id`) must be the same every time the command that creates the customer is applied: a batch
transaction can roll back (another record's failure, a dropped connection, a kill) after a `sync: true` create has
sent the id to the provider in the customer's metadata, and the retried create must send the same request under the
same idempotency key (SPEC §9, §12). So it is a keyed pseudo-random function of (organization, message id): the first
16 bytes of HMAC-SHA256 under a 256-bit key drawn once per database from PostgreSQL's strong random source
(`id_keys`), shaped as a version 4 UUID. Without the key it is as unpredictable as a random id; with it, every
replica and every retry derives the same id.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import uuid

import orjson


def new_id() -> uuid.UUID:
    return uuid.uuid4()


def new_ids(count: int) -> list[uuid.UUID]:
    """`count` random version 4 UUIDs, as `new_id` makes them, from one read of the kernel's CSPRNG instead of one
    per id (a batch's event ids)."""
    entropy = os.urandom(16 * count)
    return [uuid.UUID(bytes=entropy[start : start + 16], version=4) for start in range(0, 16 * count, 16)]


def customer_id(key: bytes, organization_id: str, message_id: str) -> uuid.UUID:
    """The id of the customer that the command (`organization_id`, `message_id`) creates."""
    digest = hmac.new(key, orjson.dumps([organization_id, message_id]), hashlib.sha256).digest()
    return uuid.UUID(bytes=digest[:16], version=4)

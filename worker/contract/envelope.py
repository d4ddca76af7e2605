"""The command envelope (SPEC §2), as a model for the published JSON Schema.

Decoding does not run this model: the envelope checks are a handful of type tests done by hand in `decode`, which
must tell a dead letter from a rejection. A test keeps the two in step.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from worker.contract.customer import CustomerInput


class CommandEnvelope(BaseModel):
    """A customer upsert command: the value of a record on `customers.upsert.v1`."""

    model_config = ConfigDict(extra="allow", frozen=True)

    message_id: str = Field(
        min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f-\x9f]*$", description="idempotency key"
    )
    organization_id: str = Field(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f-\x9f]*$")
    occurred_at: datetime | None = Field(default=None, description="RFC 3339 with offset; stale guard (SPEC §5)")
    customer: CustomerInput

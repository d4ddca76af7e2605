"""Patches made ahead (`worker.domain.fold.Patches`, in the consumer's decoding stage) fold exactly as patches made
during the fold, and folding twice (a retried batch) from the same patch gives the same result."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Final

import orjson

from tests.unit.test_inline_create import CONTEXT, REGISTRY
from worker.contract.decode import Command, decode
from worker.domain.customer import patch_of
from worker.domain.fold import Applied, fold_customer

NOW: Final = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
CUSTOMER_ID: Final = uuid.uuid4()


def _command(body: dict[str, object], occurred_at: str) -> Command:
    value = orjson.dumps(
        {"message_id": str(uuid.uuid4()), "organization_id": "org_inline", "occurred_at": occurred_at, "customer": body}
    )
    command = decode(value, (), CONTEXT)
    assert isinstance(command, Command), command
    return command


def test_patches_made_ahead_fold_like_patches_made_in_the_fold_and_are_not_consumed() -> None:
    commands = [
        _command(
            {
                "external_id": "cus_1",
                "name": "Ada",
                "billing_configuration": {"payment_provider": "stripe", "payment_provider_code": "stripe_a"},
            },
            "2026-11-25T10:00:00Z",
        ),
        _command({"external_id": "cus_1", "email": "ada@example.com"}, "2026-11-25T11:00:00Z"),
    ]
    patches = {(command.organization_id, command.message_id): patch_of(command.customer) for command in commands}
    before = {key: dict(patch) for key, patch in patches.items()}

    def fold(with_patches: bool) -> list[Applied]:
        result = fold_customer(
            None,
            commands,
            connections=REGISTRY,
            now=NOW,
            new_id=lambda _command: CUSTOMER_ID,
            patches=patches if with_patches else None,
        )
        assert all(isinstance(outcome, Applied) for outcome in result.outcomes)
        return [outcome for outcome in result.outcomes if isinstance(outcome, Applied)]

    made_in_the_fold = fold(with_patches=False)
    assert fold(with_patches=True) == made_in_the_fold
    assert fold(with_patches=True) == made_in_the_fold  # a retry folds the same patches again
    assert patches == before  # the fold added the provider and the high-water mark to copies
    assert made_in_the_fold[-1].state.payment_provider == "stripe"
    assert made_in_the_fold[-1].state.email == "ada@example.com"

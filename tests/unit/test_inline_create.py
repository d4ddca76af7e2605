"""`sync: true` within one batch (`domain.inline.link_inline`): a customer linked inline by one command is linked for
its later commands too, unless a later command moves it to another connection, whose own create must then run."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from pydantic import SecretStr

from worker.contract.connections import Connection, ConnectionConfig, Connections
from worker.contract.decode import Command, DecodeContext, decode
from worker.domain.fold import Applied, Outcome, ProviderJob, fold_customer
from worker.domain.inline import inline_creates, link_inline
from worker.domain.jobs import InlineResult
from worker.security import SigningKeys

ORG: Final = "org_inline"
NOW: Final = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
REGISTRY: Final = Connections(
    [
        Connection(
            config=ConnectionConfig.model_validate(
                {"organization_id": ORG, "code": code, "provider": "stripe", "secret_env": "UNUSED"}
            ),
            secret=SecretStr("unused"),
        )
        for code in ("stripe_a", "stripe_b")
    ]
)
CONTEXT: Final = DecodeContext(signing_keys=SigningKeys({}), connections=REGISTRY)


def _command(code: str, *, sync: bool) -> Command:
    billing: dict[str, Any] = {"payment_provider": "stripe", "payment_provider_code": code, "sync_with_provider": True}
    if sync:
        billing["sync"] = True
    value = orjson.dumps(
        {
            "message_id": str(uuid.uuid4()),
            "organization_id": ORG,
            "customer": {"external_id": "cus_1", "billing_configuration": billing},
        }
    )
    command = decode(value, (), CONTEXT)
    assert isinstance(command, Command)
    return command


async def _fold_and_create(commands: list[Command]) -> list[Applied]:
    result = fold_customer(None, commands, connections=REGISTRY, now=NOW, new_id=lambda _command: uuid.uuid4())
    pairs = zip(commands, result.outcomes, strict=True)
    outcomes: dict[int, Outcome] = {id(command): outcome for command, outcome in pairs}
    targets = inline_creates(outcomes, REGISTRY)
    created = [target.connection.code for target in targets]
    results = [InlineResult(f"cus_at_{target.connection.code}") for target in targets]
    events = link_inline(outcomes, targets, results, NOW)
    assert created == ["stripe_a"]
    assert list(events) == [id(commands[0])]
    applied = []
    for command in commands:
        outcome = outcomes[id(command)]
        assert isinstance(outcome, Applied)
        applied.append(outcome)
    return applied


async def test_a_later_command_on_the_same_connection_is_linked_and_creates_nothing() -> None:
    first, second = await _fold_and_create([_command("stripe_a", sync=True), _command("stripe_a", sync=False)])
    assert first.state.provider_customer_id == second.state.provider_customer_id == "cus_at_stripe_a"
    assert [job.kind for job in second.jobs] == []


async def test_a_later_command_moving_to_another_connection_keeps_its_create() -> None:
    first, second = await _fold_and_create([_command("stripe_a", sync=True), _command("stripe_b", sync=False)])
    assert first.state.provider_customer_id == "cus_at_stripe_a"
    assert second.state.provider_customer_id is None
    assert second.jobs == (ProviderJob("create", "stripe", "stripe_b", second.command.message_id, second.state),)


def test_a_fold_asks_for_one_create_per_connection_and_none_while_one_is_in_hand() -> None:
    commands = [_command("stripe_a", sync=False), _command("stripe_a", sync=True), _command("stripe_b", sync=False)]
    result = fold_customer(None, commands, connections=REGISTRY, now=NOW, new_id=lambda _command: uuid.uuid4())
    jobs = [job for outcome in result.outcomes if isinstance(outcome, Applied) for job in outcome.jobs]
    assert [(job.kind, job.connection_code, job.message_id) for job in jobs] == [
        ("create", "stripe_a", commands[0].message_id),
        ("create", "stripe_b", commands[2].message_id),
    ]
    assert jobs[0].request == result.outcomes[0].state  # type: ignore[union-attr]  # the snapshot of the command

    stored = result.state
    assert stored is not None
    again = fold_customer(
        stored,
        [_command("stripe_b", sync=True)],
        connections=REGISTRY,
        now=NOW,
        new_id=lambda _command: uuid.uuid4(),
        active_creates=frozenset({"stripe_b"}),
    )
    (outcome,) = again.outcomes
    assert isinstance(outcome, Applied) and outcome.jobs == ()


def test_the_id_of_a_new_customer_comes_from_its_creating_command() -> None:
    first = _command("stripe_a", sync=False)
    ids = {first.message_id: uuid.uuid4()}
    result = fold_customer(
        None,
        [first, _command("stripe_a", sync=False)],
        connections=REGISTRY,
        now=NOW,
        new_id=lambda command: ids[command.message_id],
    )
    assert result.state is not None and result.state.id == ids[first.message_id]

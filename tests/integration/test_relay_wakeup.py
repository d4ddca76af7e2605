"""Issue 12: rows committed while a relay round is publishing are published by the next round at once, not after
RELAY_IDLE_INTERVAL (the wake-up used to be cleared after the round, losing a notification that came during it)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import asyncpg
import orjson
import pytest

from worker.domain.events import OutboxEvent
from worker.relay import OutboxRelay
from worker.store.outbox import write_events
from worker.transport.producers import Outcome
from worker.transport.records import Message

pytestmark = pytest.mark.timeout(60)


def _event(label: str) -> OutboxEvent:
    body = {"event_id": str(uuid.uuid4()), "event_type": "customer.updated", "label": label}
    return OutboxEvent(uuid.UUID(body["event_id"]), "customer.updated", f"org_w:{label}", None, orjson.dumps(body))


class GatedSender:
    """Acknowledges a send only when the test opens the gate; records what it was given."""

    max_record_size = 1024 * 1024

    def __init__(self) -> None:
        self.sent: list[bytes | None] = []
        self.sending = asyncio.Event()
        self.gate = asyncio.Event()
        self.both_sent = asyncio.Event()
        self.sizes_checked: list[bool] = []

    async def send_all(self, topic: str, messages: Sequence[Message], *, sizes_checked: bool = False) -> None:
        self.sizes_checked.append(sizes_checked)
        self.sending.set()
        await self.gate.wait()
        self.sent.extend(value for _, value, _ in messages)
        if len(self.sent) >= 2:
            self.both_sent.set()

    async def send_each(self, topic: str, messages: Sequence[Message]) -> list[Outcome]:
        raise AssertionError("send_all never refuses here: nothing is sent one at a time")


async def test_rows_committed_during_a_round_are_published_without_waiting_for_the_idle_poll(
    pool: asyncpg.Pool[asyncpg.Record],
) -> None:
    sender = GatedSender()
    # An idle poll far beyond the test's timeout: only a wake-up can publish the second row in time.
    relay = OutboxRelay(pool=pool, sender=sender, topic="events", idle_interval=3600)
    async with pool.acquire() as conn:
        await write_events(conn, [_event("first")])
    running = asyncio.create_task(relay.run())
    try:
        await asyncio.wait_for(sender.sending.wait(), timeout=10)  # the first round holds the first row
        async with pool.acquire() as conn:
            await write_events(conn, [_event("second")])
        relay.notify()  # as the worker does after committing a batch
        sender.gate.set()
        await asyncio.wait_for(sender.both_sent.wait(), timeout=20)
    finally:
        relay.stop()
        await asyncio.wait_for(running, timeout=10)
    assert [orjson.loads(value or b"null")["label"] for value in sender.sent] == ["first", "second"]
    # The relay sized each row itself (to park the oversized ones): the sender is told not to size them again.
    assert sender.sizes_checked and all(sender.sizes_checked)

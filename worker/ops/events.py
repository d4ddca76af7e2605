"""`customer-worker events tail`: follow the events topic (SPEC §6) so a producer team sees the answers to its
commands. No consumer group (nothing committed, no effect on other readers): from the end of every partition, or
from the beginning with `from_beginning`. One JSON event per line (for `jq` and scripts), or a readable line per
event on a terminal."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from typing import IO, Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from worker.ops.topics import start_consumer
from worker.settings import KafkaSettings
from worker.transport.options import client_options

_POLL_MS = 500


@dataclass(frozen=True, slots=True)
class EventFilter:
    organization_id: str | None = None
    event_types: frozenset[str] = frozenset()

    def matches(self, event: dict[str, Any]) -> bool:
        if self.organization_id is not None and event.get("organization_id") != self.organization_id:
            return False
        return not self.event_types or event.get("event_type") in self.event_types


def readable(event: dict[str, Any]) -> str:
    """One line for a person: time, type, organization/external id, message id, and what the answer says."""
    head = (
        f"{event.get('occurred_at', '?')}  {event.get('event_type', '?'):<36} "
        f"{event.get('organization_id')}/{event.get('external_id')}  message {event.get('message_id')}"
    )
    if "errors" in event:
        errors = event["errors"] if isinstance(event["errors"], dict) else {}
        head += "  errors: " + "; ".join(f"{path}: {', '.join(map(str, codes))}" for path, codes in errors.items())
    if "reason" in event:
        head += f"  reason: {event['reason']}"
    provider_error = event.get("provider_error")
    if isinstance(provider_error, dict):
        head += f"  provider_error: {provider_error.get('provider')} {provider_error.get('error_code')}"
    if "checkout_url" in event:
        head += f"  checkout_url: {event['checkout_url']}"
    return head


async def tail(
    settings: KafkaSettings,
    selection: EventFilter,
    *,
    from_beginning: bool = False,
    text: bool = False,
    limit: int | None = None,
    stop: asyncio.Event | None = None,
    out: IO[str] | None = None,
) -> int:
    """Print matching events until `stop` is set (or `limit` events were printed); returns the exit status."""
    out = out or sys.stdout
    stop = stop or asyncio.Event()
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False, group_id=None)
    await start_consumer(consumer)
    printed = 0
    try:
        partitions = [
            TopicPartition(settings.events_topic, p)
            for p in sorted(consumer.partitions_for_topic(settings.events_topic) or ())
        ]
        if not partitions:
            print(f"topic {settings.events_topic} does not exist (EVENTS_TOPIC)", file=sys.stderr)
            return 1
        consumer.assign(partitions)
        if from_beginning:
            await consumer.seek_to_beginning(*partitions)
        else:
            # On Tansu the reported end can be a little behind the real one: a few recent events may show.
            await consumer.seek_to_end(*partitions)
        print(f"following {settings.events_topic} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        while not stop.is_set() and (limit is None or printed < limit):
            batches = await consumer.getmany(timeout_ms=_POLL_MS)
            for tp in sorted(batches, key=lambda tp: tp.partition):
                for record in batches[tp]:
                    event = _event(record.value)
                    if event is None or not selection.matches(event):
                        continue
                    line = readable(event) if text else orjson.dumps(event).decode()
                    print(line, file=out, flush=True)
                    printed += 1
                    if limit is not None and printed >= limit:
                        return 0
    finally:
        await consumer.stop()
    return 0


def _event(value: bytes | None) -> dict[str, Any] | None:
    if not value:
        return None
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None

"""`customer-worker topics create`: the three topics of SPEC §1, created if missing."""

from __future__ import annotations

from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from worker.settings import KafkaSettings
from worker.transport.options import client_options


async def create_worker_topics(settings: KafkaSettings, *, partitions: int, replication: int) -> list[str]:
    """Create the commands, events and DLQ topics; returns the names that were created (not already there)."""
    names = [settings.commands_topic, settings.events_topic, settings.dlq_topic]
    admin = AIOKafkaAdminClient(**{**client_options(settings), "client_id": "customer-worker-admin"})
    await admin.start()
    try:
        response = await admin.create_topics([NewTopic(name, partitions, replication) for name in names])
    finally:
        await admin.close()
    return created_topics(response)


def created_topics(response: Any) -> list[str]:
    """The topics a CreateTopics response says were created. One that already exists is no error (its partition
    count is left as it is); any other per-topic error raises the matching aiokafka error."""
    created = []
    for entry in response.to_object()["topic_errors"]:
        code = int(entry["error_code"])
        if code == 0:
            created.append(entry["topic"])
        elif code != TopicAlreadyExistsError.errno:
            raise for_code(code)(f"creating topic {entry['topic']!r}: {entry.get('error_message')}")
    return created


async def start_consumer(consumer: Any) -> None:
    """Start an aiokafka consumer; on failure (broker unreachable) close it before raising, so nothing leaks."""
    try:
        await consumer.start()
    except BaseException:
        await consumer.stop()
        raise

"""`customer-worker topics create`: the three topics of SPEC §1, created if missing."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import for_code

from worker.settings import KafkaSettings
from worker.transport.options import client_options

_TOPIC_ALREADY_EXISTS = 36


async def create_topics(settings: KafkaSettings, *, partitions: int, replication: int) -> list[str]:
    """Create the commands, events and DLQ topics; returns the names that were created (not already there)."""
    names = [settings.commands_topic, settings.events_topic, settings.dlq_topic]
    options = client_options(settings)
    options.pop("client_id", None)
    admin = AIOKafkaAdminClient(**options, client_id="customer-worker-admin")
    await admin.start()
    try:
        response = await admin.create_topics([NewTopic(name, partitions, replication) for name in names])
    finally:
        await admin.close()
    created = []
    for entry in response.to_object()["topic_errors"]:
        code = int(entry["error_code"])
        if code == 0:
            created.append(entry["topic"])
        elif code != _TOPIC_ALREADY_EXISTS:
            raise for_code(code)(f"creating topic {entry['topic']}")
    return created

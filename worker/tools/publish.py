"""`customer-worker publish FILE`: commands from a JSON-lines file (or stdin), keyed and optionally signed.

Each non-empty line is published byte for byte, so a producer's exact bytes (and their signature) are what the
worker sees. The key is `{organization_id}:{external_id}` when the line is readable, the signature is made with the
organization's first key from `SIGNING_KEYS_FILE` when it has one (SPEC §8 and §11).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import orjson

from worker.domain.events import event_key
from worker.security import SIGNATURE_HEADER, SigningKeys, sign
from worker.settings import KafkaSettings
from worker.transport.producers import KafkaProducer, Message


def command_message(value: bytes, keys: SigningKeys) -> Message:
    headers: list[tuple[str, bytes]] = [("content-type", b"application/json")]
    key: bytes | None = None
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError:
        document = None
    if isinstance(document, dict):
        organization_id = document.get("organization_id")
        customer = document.get("customer")
        external_id = customer.get("external_id") if isinstance(customer, dict) else None
        if isinstance(organization_id, str):
            key = event_key(organization_id, external_id if isinstance(external_id, str) else None).encode()
            secret = keys.first_key(organization_id)
            if secret is not None:
                headers.append((SIGNATURE_HEADER, sign(secret, value)))
    return key, value, headers


def read_lines(source: IO[bytes]) -> Iterator[bytes]:
    for line in source:
        stripped = line.rstrip(b"\r\n")
        if stripped.strip():
            yield stripped


async def publish_values(
    settings: KafkaSettings, values: Iterable[bytes], keys: SigningKeys, *, chunk: int = 1000
) -> int:
    producer = KafkaProducer(settings)
    await producer.start()
    count = 0
    try:
        pending: list[Message] = []
        for value in values:
            pending.append(command_message(value, keys))
            if len(pending) >= chunk:
                await producer.send_all(settings.commands_topic, pending)
                count += len(pending)
                pending = []
        if pending:
            await producer.send_all(settings.commands_topic, pending)
            count += len(pending)
    finally:
        await producer.stop()
    return count


async def publish_file(settings: KafkaSettings, path: str, keys: SigningKeys) -> int:
    if path == "-":
        return await publish_values(settings, read_lines(sys.stdin.buffer), keys)
    with Path(path).open("rb") as source:  # noqa: ASYNC230 - a CLI reading its input file
        return await publish_values(settings, read_lines(source), keys)

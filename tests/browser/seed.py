"""A seeded run for the browser tests: commands carrying canary names, e-mails and phone numbers go through the
real worker (created, rejected, dead-lettered, a Stripe create refused), plus a parked event and a dead letter
whose record applies when replayed (what a fixed bug leaves behind). No page may ever show a canary."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from aiokafka import AIOKafkaProducer

from tests.browser.stack import ORG, ConsoleStack
from worker.store.console import DeadLetterRow, record_dead_letters

CANARY_NAMES: Final = ("Zephyrine Canarywood", "Bartholomew Q. Canaryfield")
CANARY_EMAILS: Final = ("zephyrine.canary@canary-mail.example", "bart.canary@canary-mail.example")
CANARY_PHONES: Final = ("+33 6 71 82 93 04", "+49 151 99887766")
CANARIES: Final = (*CANARY_NAMES, *CANARY_EMAILS, *CANARY_PHONES, "canary-external")
HTML_ORG: Final = '<img src=x id="injected">org'
OTHER_ORG: Final = "org_console_b"


@dataclass
class Seeded:
    created: list[str] = field(default_factory=list)  # external ids expected in `customers`
    failed_link: str = ""  # external id whose Stripe create was refused
    replayable_id: int = 0  # dead_letters.id of the record that applies when replayed
    replayable_external_id: str = ""
    parked_event_id: str = ""
    rejected: int = 0
    dead_lettered: int = 0


def _command(org: str, external_id: str, name: str, email: str, phone: str, **billing: Any) -> dict[str, Any]:
    customer: dict[str, Any] = {"external_id": external_id, "name": name, "email": email, "phone": phone}
    if billing:
        customer["billing_configuration"] = billing
    return {"message_id": f"msg-{uuid.uuid4().hex}", "organization_id": org, "customer": customer}


def _key(document: dict[str, Any]) -> bytes:
    return f"{document['organization_id']}:{document['customer'].get('external_id', '')}".encode()


async def seed(stack: ConsoleStack) -> Seeded:
    seeded = Seeded()
    env = stack.env
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        documents: list[dict[str, Any]] = []
        # Two creates applied, the second with a Stripe create (the fake answers).
        documents.append(_command(ORG, "canary-external-1", CANARY_NAMES[0], CANARY_EMAILS[0], CANARY_PHONES[0]))
        seeded.created.append("canary-external-1")
        # Rejections: a bad e-mail and a bad country, each carrying canaries in other fields.
        for index, org in enumerate((ORG, OTHER_ORG, OTHER_ORG)):
            bad = _command(org, f"canary-external-bad-{index}", CANARY_NAMES[1], "not-an-email", CANARY_PHONES[1])
            bad["customer"]["country"] = "XX"
            documents.append(bad)
            seeded.rejected += 1
        for document in documents:
            await producer.send_and_wait(env["COMMANDS_TOPIC"], value=orjson.dumps(document), key=_key(document))
        # Dead letters: no message_id (invalid_envelope, twice: one organization id is HTML), and broken JSON.
        for org in (ORG, HTML_ORG):
            envelope = _command(org, "canary-external-dlq", CANARY_NAMES[0], CANARY_EMAILS[1], CANARY_PHONES[0])
            del envelope["message_id"]
            await producer.send_and_wait(env["COMMANDS_TOPIC"], value=orjson.dumps(envelope), key=_key(envelope))
            seeded.dead_lettered += 1
        broken = orjson.dumps(_command(ORG, "canary-external-json", CANARY_NAMES[1], CANARY_EMAILS[0], "x"))[:-7]
        await producer.send_and_wait(env["COMMANDS_TOPIC"], value=broken, key=b"org_console:broken")
        seeded.dead_lettered += 1
        # A Stripe create the provider refuses for good (400): a failed provider job, retried from the console.
        stack.stripe.fail_next(400, method="POST", path="/v1/customers")
        linked = _command(
            ORG,
            "canary-external-stripe",
            CANARY_NAMES[1],
            CANARY_EMAILS[1],
            CANARY_PHONES[1],
            payment_provider="stripe",
            sync_with_provider=True,
        )
        await producer.send_and_wait(env["COMMANDS_TOPIC"], value=orjson.dumps(linked), key=_key(linked))
        seeded.created.append("canary-external-stripe")
        seeded.failed_link = "canary-external-stripe"
        seeded.replayable_external_id, seeded.replayable_id = await _replayable(stack, producer)
    finally:
        await producer.stop()
    seeded.parked_event_id = await _parked(stack)
    await _settled(stack, seeded)
    return seeded


async def _replayable(stack: ConsoleStack, producer: AIOKafkaProducer) -> tuple[str, int]:
    """A valid command sitting in the DLQ as `processing_error`, recorded as the worker records its copies."""
    document = _command(ORG, "canary-external-replay", CANARY_NAMES[0], CANARY_EMAILS[0], CANARY_PHONES[1])
    value = orjson.dumps(document)
    headers = [
        ("dlq-reason", b"processing_error"),
        ("dlq-error", b"processing_error: a bug since fixed"),
        ("dlq-source-topic", stack.env["COMMANDS_TOPIC"].encode()),
        ("dlq-source-partition", b"0"),
        ("dlq-source-offset", b"999"),
    ]
    sent = await producer.send_and_wait(stack.env["DLQ_TOPIC"], value=value, key=_key(document), headers=headers)
    assert stack.pool is not None
    row = DeadLetterRow(
        stack.env["DLQ_TOPIC"],
        sent.partition,
        sent.offset,
        stack.env["COMMANDS_TOPIC"],
        0,
        999,
        "processing_error",
        (),
        (),
        ORG,
        document["message_id"],
        len(value),
        hashlib.sha256(value).digest(),
        False,
        None,
        None,
    )
    await record_dead_letters(stack.pool, [row])
    ident = await stack.fetchval(
        "SELECT id FROM dead_letters WHERE dlq_topic = $1 AND dlq_offset = $2 AND dlq_partition = $3",
        stack.env["DLQ_TOPIC"],
        sent.offset,
        sent.partition,
    )
    return "canary-external-replay", int(ident)


async def _parked(stack: ConsoleStack) -> str:
    """An event the broker once refused as too large (its payload names a canary: it must never be shown)."""
    event_id = uuid.uuid4()
    payload = orjson.dumps(
        {
            "event_id": str(event_id),
            "event_type": "customer.created",
            "organization_id": ORG,
            "customer": {"name": CANARY_NAMES[1], "email": CANARY_EMAILS[1]},
        }
    )
    await stack.fetchval(
        "INSERT INTO parked_events (outbox_id, event_id, event_key, event_type, payload, created_at, reason, error) "
        "VALUES (1, $1, $2, 'customer.created', $3, now(), 'too_large', "
        "'MessageSizeTooLargeError: <b>the broker refused</b> the record') RETURNING id",
        event_id,
        f"{ORG}:canary-external-parked",
        payload,
    )
    return str(event_id)


async def _settled(stack: ConsoleStack, seeded: Seeded, seconds: float = 45) -> None:
    """Wait for the worker to have answered everything: customers, dead letters, the failed provider job."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        customers = await stack.fetchval("SELECT count(*) FROM customers WHERE external_id = ANY($1)", seeded.created)
        letters = await stack.fetchval("SELECT count(*) FROM dead_letters WHERE reason <> 'processing_error'")
        failed = await stack.fetchval("SELECT count(*) FROM provider_jobs WHERE status = 'failed'")
        rejected = await stack.fetchval("SELECT coalesce(sum(count), 0) FROM rejection_counts")
        if (customers, letters, failed) == (len(seeded.created), seeded.dead_lettered, 1) and rejected >= 1:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"the seeded run did not settle: {customers=} {letters=} {failed=} {rejected=}")

"""End to end: a real `Worker` in-process against the session's PostgreSQL and Tansu (SPEC §2, §5-§7, §10, §11).

One worker serves the whole module (joining and leaving a consumer group costs seconds); every test uses its own
organization, keys and message ids, and finds its own records in the shared topics.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import aiohttp
import pytest

from tests.harness.in_process import RunningWorker, running_worker
from tests.harness.records import (
    command,
    encode,
    header_dict,
    key_of,
    new_traceparent,
    payload,
    read_topic,
    trace_id,
)
from worker.contract.codes import DlqReason
from worker.contract.decode import DeadLetter
from worker.contract.events import CustomerCreated, CustomerRejected, CustomerUpdated
from worker.contract.framing import frame
from worker.dev import create_topics
from worker.ops.dlq import ReplayFilter, replay
from worker.service import RawRecord
from worker.transport.producers import DLQ_HEADERS, DeadLetterProducer, KafkaProducer

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024
PARTITIONS = 3
Headers = list[tuple[str, bytes]]


class Pipeline(RunningWorker):
    """The module's worker, with readers of its output topics."""

    async def events_for(
        self, message_ids: Sequence[str], *, count: int | None = None, settle: float = 0.0
    ) -> list[Any]:
        """Events of the events topic whose `message_id` is one of `message_ids` (at least `count`, default one
        per id), in topic order per partition."""
        wanted = set(message_ids)
        needed = len(wanted) if count is None else count

        def mine(records: list[Any]) -> list[Any]:
            return [r for r in records if r.value and payload(r).get("message_id") in wanted]

        records = await read_topic(
            self.bootstrap, self.topics["events"], until=lambda rs: len(mine(rs)) >= needed, settle=settle
        )
        return mine(records)

    async def dead_letters(self, keys: Sequence[bytes]) -> dict[bytes, Any]:
        wanted = set(keys)

        def mine(records: list[Any]) -> dict[bytes, Any]:
            return {r.key: r for r in records if r.key in wanted}

        records = await read_topic(self.bootstrap, self.topics["dlq"], until=lambda rs: len(mine(rs)) >= len(wanted))
        return mine(records)

    async def sync(self) -> None:
        """Returns once every command published so far on every partition has been answered and its events relayed:
        a sentinel command per partition is processed after them, and its event published after theirs."""
        sentinels = []
        for partition in range(PARTITIONS):
            document = command(f"org_sentinel_{uuid.uuid4().hex[:8]}", {"external_id": "sentinel"})
            await self.publish(encode(document), key=key_of(document), partition=partition)
            sentinels.append(document["message_id"])
        await self.events_for(sentinels)


@pytest.fixture(scope="module")
async def pipeline(pg_dsn: str, kafka_bootstrap: str) -> AsyncIterator[Pipeline]:
    async with running_worker(
        pg_dsn, kafka_bootstrap, "pipeline", kind=Pipeline, partitions=PARTITIONS, max_request_size=4 * MiB
    ) as running:
        yield running


def _org() -> str:
    return f"org_{uuid.uuid4().hex[:10]}"


async def test_readyz_becomes_ready_once_partitions_are_assigned(pipeline: Pipeline) -> None:
    first_status, first_body = pipeline.readiness[0]
    assert first_status == 503
    assert first_body["status"] == "not_ready"
    assert "partitions" in first_body["not_ready"]
    assert pipeline.readiness[-1] == (200, {"status": "ready"})
    assert pipeline.worker.health.partitions_assigned
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{pipeline.http_port}/readyz") as response:
            assert (response.status, await response.json()) == (200, {"status": "ready"})
        async with session.get(f"http://127.0.0.1:{pipeline.http_port}/healthz") as response:
            assert response.status == 200


async def test_events_have_the_contract_key_headers_and_shape(pipeline: Pipeline) -> None:
    org = _org()
    traceparent = new_traceparent()
    created = command(org, {"external_id": "cus_e2e", "name": "Acme", "country": "fr", "tax_codes": ["t1"]})
    nameless = command(org, {"name": "no external id"})
    invalid = command(org, {"external_id": "cus_bad", "timezone": "Mars/Olympus"})
    await pipeline.publish(
        encode(created),
        key=key_of(created),
        headers=[("content-type", b"application/json"), ("traceparent", traceparent.encode())],
    )
    await pipeline.publish(encode(nameless), key=key_of(nameless))
    await pipeline.publish(encode(invalid), key=key_of(invalid), headers=[("traceparent", b"not-a-traceparent")])

    events = {
        payload(r)["message_id"]: r
        for r in await pipeline.events_for([m["message_id"] for m in (created, nameless, invalid)])
    }

    record = events[created["message_id"]]
    assert record.key == f"{org}:cus_e2e".encode()
    headers = header_dict(record)
    assert (headers["event-type"], headers["content-type"]) == (b"customer.created", b"application/json")
    assert trace_id(headers["traceparent"].decode()) == trace_id(traceparent)
    assert len(headers["traceparent"]) == len(traceparent)
    event = CustomerCreated.model_validate_json(record.value)
    assert (event.organization_id, event.external_id, event.message_id) == (org, "cus_e2e", created["message_id"])
    assert (event.customer.name, event.customer.country, event.customer.tax_codes) == ("Acme", "FR", ["t1"])
    assert event.customer.finalize_zero_amount_invoice == "inherit"
    assert event.customer.shipping_address.city is None
    async with pipeline.db() as conn:
        stored_id = await conn.fetchval(
            "SELECT id FROM customers WHERE organization_id = $1 AND external_id = 'cus_e2e'", org
        )
    assert event.customer.lago_id == stored_id

    record = events[nameless["message_id"]]
    assert record.key == f"{org}:".encode()
    assert header_dict(record) == {"event-type": b"customer.rejected", "content-type": b"application/json"}
    rejected = CustomerRejected.model_validate_json(record.value)
    assert (rejected.external_id, rejected.errors) == (None, {"external_id": ["value_is_mandatory"]})
    assert "customer" not in payload(record)

    record = events[invalid["message_id"]]
    assert record.key == f"{org}:cus_bad".encode()
    assert "traceparent" not in header_dict(record)
    assert CustomerRejected.model_validate_json(record.value).errors == {"timezone": ["invalid_timezone"]}


async def test_a_framed_command_s_answer_carries_its_schema_id(pipeline: Pipeline) -> None:
    """SPEC §12: the Schema Registry id of a framed value goes to the command's answer as a `schema-id` header
    (accepted or rejected); an unframed command's answer has none."""
    org = _org()
    framed = command(org, {"external_id": "cus_framed", "name": "Framed"})
    framed_invalid = command(org, {"external_id": "cus_framed_bad", "timezone": "Mars/Olympus"})
    unframed = command(org, {"external_id": "cus_plain", "name": "Plain"})
    await pipeline.publish(frame(encode(framed), 42), key=key_of(framed))
    await pipeline.publish(frame(encode(framed_invalid), 2**31 + 5), key=key_of(framed_invalid))
    await pipeline.publish(encode(unframed), key=key_of(unframed))

    events = {
        payload(r)["message_id"]: r
        for r in await pipeline.events_for([m["message_id"] for m in (framed, framed_invalid, unframed)])
    }

    headers = header_dict(events[framed["message_id"]])
    assert (headers["event-type"], headers["schema-id"]) == (b"customer.created", b"42")
    headers = header_dict(events[framed_invalid["message_id"]])
    assert (headers["event-type"], headers["schema-id"]) == (b"customer.rejected", str(2**31 + 5).encode())
    headers = header_dict(events[unframed["message_id"]])
    assert headers == {"event-type": b"customer.created", "content-type": b"application/json"}


async def test_a_record_with_a_non_utf8_header_is_still_answered(pipeline: Pipeline) -> None:
    org = _org()
    document = command(org, {"external_id": "cus_bin"})
    await pipeline.publish(
        encode(document), key=key_of(document), headers=[("x-binary", b"\xff\xfe\x80"), ("x-empty", b"")]
    )
    [record] = await pipeline.events_for([document["message_id"]])
    assert header_dict(record)["event-type"] == b"customer.created"
    assert payload(record)["customer"]["external_id"] == "cus_bin"


async def test_unreadable_records_are_dead_lettered_byte_for_byte(pipeline: Pipeline) -> None:
    org = _org()
    tag = uuid.uuid4().hex[:8]
    traceparent = new_traceparent()
    big = encode(command(org, {"external_id": "cus_big", "legal_name": "y" * MiB}))
    assert len(big) > MiB
    cases: dict[str, tuple[bytes | None, Headers, str]] = {
        "garbage": (
            b"\x80\x81 {not json",
            [
                ("content-type", b"application/json"),
                ("x-binary", b"\xff\x00\xfe"),
                ("traceparent", traceparent.encode()),
            ],
            "invalid_json",
        ),
        "tombstone": (None, [("x-a", b"1")], "invalid_json"),
        "array": (b"[1, 2, 3]", [], "invalid_envelope"),
        "envelope": (
            encode({"message_id": "m-1", "organization_id": org, "customer": "jane.doe@example.com"}),
            [("content-type", b"application/json")],
            "invalid_envelope",
        ),
        "large": (big, [("content-type", b"application/json"), ("x-dup", b"1"), ("x-dup", b"2")], "too_large"),
    }
    sent: dict[bytes, tuple[Any, bytes | None, Headers, str]] = {}
    for name, (value, headers, reason) in cases.items():
        key = f"{org}:{name}-{tag}".encode()
        metadata = await pipeline.publish(value, key=key, headers=headers)
        sent[key] = (metadata, value, headers, reason)
    # The partitions move on: a valid command behind the dead letters is applied.
    good = command(org, {"external_id": "cus_after_dlq"})
    await pipeline.publish(encode(good), key=key_of(good))

    letters = await pipeline.dead_letters(list(sent))
    assert set(letters) == set(sent)
    for key, (metadata, value, headers, reason) in sent.items():
        letter = letters[key]
        original, added = list(letter.headers)[: len(headers)], list(letter.headers)[len(headers) :]
        assert original == headers
        dlq = dict(added)
        if reason == "too_large":
            # Over KAFKA_MAX_REQUEST_SIZE (1 MiB): the first bytes are kept, and the copy says so (SPEC §12).
            assert value is not None and letter.value is not None
            assert MiB - 1024 < len(letter.value) < MiB and value.startswith(letter.value)
            assert dlq["dlq-original-size"] == str(len(value)).encode()
            assert dlq["dlq-truncated"] == b"true"
            assert set(dlq) == DLQ_HEADERS
        else:
            assert letter.value == value
            assert set(dlq) == DLQ_HEADERS - {"dlq-original-size", "dlq-truncated"}
        assert len(added) == len(dlq)
        assert dlq["dlq-reason"] == reason.encode(), key
        assert dlq["dlq-source-topic"] == pipeline.topics["commands"].encode()
        assert dlq["dlq-source-partition"] == str(metadata.partition).encode()
        assert dlq["dlq-source-offset"] == str(metadata.offset).encode()
        assert dlq["dlq-error"]
        assert b"jane.doe" not in dlq["dlq-error"]
        assert datetime.fromisoformat(dlq["dlq-failed-at"].decode()).tzinfo is not None
    [event] = await pipeline.events_for([good["message_id"]])
    assert header_dict(event)["event-type"] == b"customer.created"


async def test_dlq_replay_filters_and_is_safe_to_repeat(pipeline: Pipeline) -> None:
    org = _org()
    traceparent = new_traceparent()

    async def park(value: bytes, reason: str, headers: Headers) -> int:
        """Write a dead letter as the worker would have (DLQ partition 0); returns its DLQ offset."""
        dlq_headers = [
            *headers,
            ("dlq-reason", reason.encode()),
            ("dlq-error", b"failed repeatedly: TypeError"),
            ("dlq-source-topic", pipeline.topics["commands"].encode()),
            ("dlq-source-partition", b"0"),
            ("dlq-source-offset", b"0"),
            ("dlq-failed-at", b"2026-01-01T00:00:00.000Z"),
        ]
        metadata = await pipeline.producer.send_and_wait(
            pipeline.topics["dlq"], value=value, key=f"{org}:parked".encode(), headers=dlq_headers, partition=0
        )
        offset: int = metadata.offset
        return offset

    commands = {name: command(org, {"external_id": f"cus_{name}"}) for name in ("before", "a", "c", "after")}
    tp_headers: Headers = [("content-type", b"application/json"), ("traceparent", traceparent.encode())]
    before = await park(encode(commands["before"]), "processing_error", [])
    first = await park(encode(commands["a"]), "processing_error", tp_headers)
    await park(b"{still not json", "invalid_json", [])
    last = await park(encode(commands["c"]), "processing_error", [])
    await park(encode(commands["after"]), "processing_error", [])
    assert before < first < last

    selection = ReplayFilter(reason="processing_error", from_offset=first, to_offset=last)
    assert (await replay(pipeline.kafka_settings(), selection, watch_seconds=0)).replayed == 2

    replayed = {
        payload(r)["message_id"]: r
        for r in await pipeline.events_for([commands["a"]["message_id"], commands["c"]["message_id"]])
    }
    assert {payload(r)["event_type"] for r in replayed.values()} == {"customer.created"}
    assert trace_id(header_dict(replayed[commands["a"]["message_id"]])["traceparent"].decode()) == trace_id(traceparent)

    # Again: the commands are duplicates now, answered with no new event.
    assert (await replay(pipeline.kafka_settings(), selection, watch_seconds=0)).replayed == 2
    await pipeline.sync()
    every = [commands[name]["message_id"] for name in commands]
    events = await pipeline.events_for(every, count=2, settle=0.5)
    assert sorted(payload(r)["external_id"] for r in events) == ["cus_a", "cus_c"]

    # What was republished: key, value and the original headers, without the dlq-* ones.
    republished = await read_topic(
        pipeline.bootstrap,
        pipeline.topics["commands"],
        until=lambda rs: sum(r.value == encode(commands["a"]) for r in rs) >= 2,
    )
    copies = [r for r in republished if r.value == encode(commands["a"])]
    assert [(r.key, list(r.headers)) for r in copies] == [(f"{org}:parked".encode(), tp_headers)] * 2


async def test_an_update_in_a_later_batch_is_answered_with_updated(pipeline: Pipeline) -> None:
    org = _org()
    created = command(org, {"external_id": "cus_later", "name": "v1"})
    await pipeline.publish(encode(created), key=key_of(created))
    [first] = await pipeline.events_for([created["message_id"]])

    updated = command(org, {"external_id": "cus_later", "name": "v2"})
    await pipeline.publish(encode(updated), key=key_of(updated))
    answer = await _event_or_dead_letter(pipeline, updated["message_id"], key_of(updated))
    assert answer.topic == pipeline.topics["events"], f"dead-lettered: {header_dict(answer).get('dlq-error')!r}"
    event = CustomerUpdated.model_validate_json(answer.value)
    assert event.customer.name == "v2"
    assert str(event.customer.lago_id) == payload(first)["customer"]["lago_id"]


async def _event_or_dead_letter(pipeline: Pipeline, message_id: str, key: bytes) -> Any:
    """The first answer to a command: its event, or its copy in the DLQ."""

    async def event() -> Any:
        [record] = await pipeline.events_for([message_id])
        return record

    async def letter() -> Any:
        return (await pipeline.dead_letters([key]))[key]

    tasks = [asyncio.ensure_future(event()), asyncio.ensure_future(letter())]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return next(iter(done)).result()


async def test_dlq_replay_republishes_every_letter_of_one_dead_letter_batch(pipeline: Pipeline) -> None:
    org = _org()
    suffix = uuid.uuid4().hex[:12]
    dlq_topic, target = f"test.pipeline.parked.{suffix}", f"test.pipeline.target.{suffix}"
    await create_topics(pipeline.bootstrap, [dlq_topic, target], partitions=1)
    settings = pipeline.kafka_settings(dlq_topic=dlq_topic, commands_topic=target)
    producer = KafkaProducer(settings)
    documents = [command(org, {"external_id": f"cus_{n}"}) for n in range(3)]
    letters = [
        (
            RawRecord(target, 0, offset, key_of(document), encode(document), ()),
            DeadLetter(DlqReason.PROCESSING_ERROR, "failed repeatedly"),
        )
        for offset, document in enumerate(documents)
    ]
    try:
        await DeadLetterProducer(producer, dlq_topic).send(letters)  # as the worker sends them: one pipelined batch
    finally:
        await producer.stop()
    parked = await read_topic(pipeline.bootstrap, dlq_topic, until=lambda rs: len(rs) >= 3)
    assert [r.value for r in parked] == [encode(d) for d in documents]

    assert (await replay(settings, ReplayFilter(), watch_seconds=0)).replayed == 3
    copies = await read_topic(pipeline.bootstrap, target, until=lambda rs: len(rs) >= 3)
    assert [r.value for r in copies] == [encode(d) for d in documents]

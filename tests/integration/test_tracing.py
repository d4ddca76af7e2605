"""Tracing (worker/tracing.py): one command through a real worker yields consume, apply and publish spans in the
command's own trace, linked parent to child; with tracing off nothing is recorded."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

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
from worker import tracing

pytestmark = pytest.mark.timeout(90)


async def _run_one_command(
    pg_dsn: str, kafka_bootstrap: str, headers: list[tuple[str, bytes]]
) -> tuple[dict[str, Any], Any]:
    """Starts a worker, sends one command with `headers`, returns (its command document, the event record)."""
    async with running_worker(pg_dsn, kafka_bootstrap, "tracing", kind=RunningWorker, partitions=1) as running:
        document = command(f"org_{uuid.uuid4().hex[:12]}", {"external_id": "cus_traced", "name": "Traced"})
        await running.publish(encode(document), key=key_of(document), headers=headers)
        records = await read_topic(
            kafka_bootstrap,
            running.topics["events"],
            until=lambda rs: any(payload(r)["message_id"] == document["message_id"] for r in rs),
            timeout=45,
        )
    return document, records[-1]


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    tracing.install(SimpleSpanProcessor(memory))
    try:
        yield memory
    finally:
        tracing.uninstall()


def _one(spans: list[ReadableSpan], predicate: Callable[[ReadableSpan], bool], what: str) -> ReadableSpan:
    found = [s for s in spans if predicate(s)]
    assert found, f"no {what} span among {[s.name for s in spans]}"
    return found[0]


async def test_one_command_yields_linked_consume_apply_publish_spans_in_its_trace(
    pg_dsn: str, kafka_bootstrap: str, exporter: InMemorySpanExporter
) -> None:
    traceparent = new_traceparent()
    incoming = int(trace_id(traceparent), 16)
    parent_span_id = int(traceparent.split("-")[2], 16)
    _, event = await _run_one_command(pg_dsn, kafka_bootstrap, [("traceparent", traceparent.encode())])
    assert trace_id(header_dict(event)["traceparent"].decode()) == trace_id(traceparent)

    def traced() -> list[ReadableSpan]:
        return [s for s in exporter.get_finished_spans() if s.context is not None and s.context.trace_id == incoming]

    # The relay ends its publish span once the broker acknowledged the send, which may be just after we read the
    # event; the exporter has no event to wait on, hence the polling.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not any(s.name.endswith(" publish") for s in traced()) and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    spans = traced()
    consume = _one(spans, lambda s: s.name.endswith(" process"), "consume")
    apply = _one(spans, lambda s: s.name == "apply", "apply")
    publish = _one(spans, lambda s: s.name.endswith(" publish"), "publish")
    assert consume.parent is not None and consume.parent.span_id == parent_span_id
    assert apply.parent is not None and consume.context is not None
    assert apply.parent.span_id == consume.context.span_id
    assert publish.parent is not None and publish.parent.span_id == parent_span_id
    assert consume.attributes is not None and consume.attributes["messaging.batch.message_count"] == 1


async def test_tracing_off_records_nothing_and_hooks_pass_through(pg_dsn: str, kafka_bootstrap: str) -> None:
    assert not tracing.enabled()
    _, event = await _run_one_command(pg_dsn, kafka_bootstrap, [])
    assert "traceparent" not in header_dict(event)
    assert not tracing.configure_from_env()  # no OTEL_EXPORTER_OTLP_ENDPOINT here: stays off


def test_a_batch_mixing_traces_starts_its_own_trace_and_links_each() -> None:
    memory = InMemorySpanExporter()
    tracing.install(SimpleSpanProcessor(memory))
    try:
        parents = [new_traceparent(), new_traceparent()]
        messages = [(b"k", b"v", [("traceparent", p.encode())]) for p in parents]
        with tracing.publish_span("events", messages):
            pass
    finally:
        tracing.uninstall()
    (span,) = memory.get_finished_spans()
    assert span.parent is None
    assert {format(link.context.trace_id, "032x") for link in span.links} == {trace_id(p) for p in parents}

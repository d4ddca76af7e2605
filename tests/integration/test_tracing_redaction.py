"""Issue 18, case 8: spans are redacted exactly like log lines.

A real PostgreSQL unique violation (whose `str()` carries the DETAIL line `Key (organization_id, external_id)=(…)`)
raised through the worker's own span and through the asyncpg instrumentation's span; an in-memory exporter holds
what an OTLP exporter would have sent."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from worker import tracing
from worker.observability import redaction

pytestmark = pytest.mark.timeout(60)

EXTERNAL_ID = "cus_private_7731"
EMAIL = "jane.doe@example.com"


@pytest.fixture
def memory() -> Iterator[tuple[InMemorySpanExporter, TracerProvider]]:
    exporter = InMemorySpanExporter()
    provider = tracing.install(SimpleSpanProcessor(exporter))
    try:
        yield exporter, provider
    finally:
        tracing.uninstall()


@pytest.fixture
async def conn(fresh_database: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    connection = await asyncpg.connect(fresh_database)
    try:
        await connection.execute(
            "CREATE TABLE customers (organization_id text, external_id text, email text, "
            "UNIQUE (organization_id, external_id))"
        )
        await connection.execute("INSERT INTO customers VALUES ('org_a', $1, $2)", EXTERNAL_ID, EMAIL)
        yield connection
    finally:
        await connection.close()


async def _insert_again(conn: asyncpg.Connection[Any]) -> None:
    await conn.execute("INSERT INTO customers VALUES ('org_a', $1, $2)", EXTERNAL_ID, EMAIL)


def _everything(span: ReadableSpan) -> str:
    """Every text a span would export: name, status, attributes, events' and links' attributes."""
    parts: list[str] = [span.name, str(span.status.description), repr(dict(span.attributes or {}))]
    parts += [f"{event.name} {dict(event.attributes or {})!r}" for event in span.events]
    parts += [repr(dict(link.attributes or {})) for link in span.links]
    return "\n".join(parts)


async def test_worker_span_records_a_unique_violation_like_a_log_line(
    memory: tuple[InMemorySpanExporter, TracerProvider], conn: asyncpg.Connection[Any]
) -> None:
    exporter, _ = memory

    @tracing.traced("apply")
    async def apply() -> None:
        await _insert_again(conn)

    with pytest.raises(asyncpg.UniqueViolationError) as raised:
        await apply()
    assert EXTERNAL_ID in str(raised.value)  # the server did quote the key: there is something to redact

    (span,) = exporter.get_finished_spans()
    assert EXTERNAL_ID not in _everything(span)
    assert "DETAIL" not in _everything(span)
    assert span.status.status_code is StatusCode.ERROR
    (event,) = span.events
    attributes = dict(event.attributes or {})
    assert event.name == "exception"
    assert attributes["exception.type"] == "asyncpg.exceptions.UniqueViolationError"
    # Exactly what the log line's `error` and `traceback` fields hold.
    assert attributes["exception.message"] == redaction.safe_message(raised.value)
    assert attributes["exception.message"].endswith("(sqlstate 23505)")
    # The traceback as of the span's end (shorter than the test's own), rendered like the log's `traceback`.
    stacktrace = str(attributes["exception.stacktrace"])
    assert stacktrace.startswith("Traceback (most recent call last):")
    assert stacktrace.endswith(f"asyncpg.exceptions.UniqueViolationError: {redaction.safe_message(raised.value)}")


async def test_asyncpg_instrumentation_spans_are_redacted_too(
    memory: tuple[InMemorySpanExporter, TracerProvider], conn: asyncpg.Connection[Any]
) -> None:
    """The instrumentation records `str(exc)` and a stock traceback itself; the processor in front of the exporter
    cleans them."""
    exporter, provider = memory
    instrumentor = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
    instrumentor.instrument(tracer_provider=provider)
    try:
        with pytest.raises(asyncpg.UniqueViolationError):
            await _insert_again(conn)
    finally:
        instrumentor.uninstrument()

    spans = [span for span in exporter.get_finished_spans() if span.events]
    assert spans, [span.name for span in exporter.get_finished_spans()]
    for span in spans:
        text = _everything(span)
        assert EXTERNAL_ID not in text and "DETAIL" not in text, text
        (event,) = span.events
        attributes = dict(event.attributes or {})
        assert str(attributes["exception.message"]).startswith("duplicate key value violates unique constraint")
        assert "Traceback (most recent call last)" in str(attributes["exception.stacktrace"])


def test_span_and_event_attributes_lose_personal_keys_and_mask_addresses(
    memory: tuple[InMemorySpanExporter, TracerProvider],
) -> None:
    exporter, provider = memory
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span(
        "call",
        attributes={
            "enduser.email": EMAIL,
            "server.address": f"https://user:pw@api.example/?q={EMAIL}",
        },
    ):
        trace.get_current_span().add_event("note", {"customer.phone": "+33 6 12 34 56 78", "text": f"to {EMAIL}"})

    (span,) = exporter.get_finished_spans()
    assert dict(span.attributes or {}) == {"server.address": "https://***@api.example/?q=<email>"}
    assert dict(span.events[0].attributes or {}) == {"text": "to <email>"}

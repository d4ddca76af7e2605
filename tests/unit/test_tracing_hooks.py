"""worker/tracing.py hooks without the pipeline: provider calls and background jobs continue the command's trace,
the OTLP exporter sends to OTEL_EXPORTER_OTLP_ENDPOINT, and with tracing off the hooks pass straight through."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from worker import tracing


@dataclass
class _Connection:
    provider: str = "stripe"
    code: str = "stripe_main"


@dataclass
class _Job:
    traceparent: str | None
    kind: str = "create"


class _Caller:
    @tracing.provider_call
    async def call(self, connection: _Connection) -> str:
        return format(trace.get_current_span().get_span_context().trace_id, "032x")

    @tracing.provider_job
    async def execute(self, job: _Job) -> str:
        return await self.call(_Connection())


@pytest.fixture
def memory() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.install(SimpleSpanProcessor(exporter))
    try:
        yield exporter
    finally:
        tracing.uninstall()


async def test_a_background_job_and_its_provider_call_continue_the_commands_trace(
    memory: InMemorySpanExporter,
) -> None:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    seen = await _Caller().execute(_Job(f"00-{trace_id}-{span_id}-01"))
    assert seen == trace_id
    call, job = memory.get_finished_spans()
    assert (call.name, job.name) == ("provider stripe", "provider job create")
    assert job.parent is not None and format(job.parent.span_id, "016x") == span_id
    assert call.parent is not None and job.context is not None and call.parent.span_id == job.context.span_id
    assert call.attributes is not None and call.attributes["provider.connection"] == "stripe_main"


async def test_tracing_off_the_hooks_create_no_span() -> None:
    assert not tracing.enabled()
    seen = await _Caller().execute(_Job(f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"))
    assert seen == "0" * 32  # no current span: the invalid context


class _Collector(BaseHTTPRequestHandler):
    paths: ClassVar[list[str]] = []
    received: ClassVar[threading.Event] = threading.Event()

    def log_message(self, format: str, *args: object) -> None:
        return None

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.paths.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
        self.received.set()


def test_spans_are_exported_over_otlp_http_when_the_endpoint_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        assert tracing.configure_from_env()
        with tracing.publish_span("events", [(b"k", b"v", [])]):
            pass
        tracing.shutdown()  # flushes the batch processor
        assert _Collector.received.wait(10)
        assert _Collector.paths == ["/v1/traces"]
    finally:
        tracing.uninstall()
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        AsyncPGInstrumentor().uninstrument()  # type: ignore[no-untyped-call]
        HTTPXClientInstrumentor().uninstrument()
        server.shutdown()
        server.server_close()

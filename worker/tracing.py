"""OpenTelemetry spans for consume (per batch), apply, publish and provider calls, continuing each command's trace.

Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` is set (`configure_from_env`) or a test installs a provider (`install`).
Off, each hook is one attribute test per batch and the decorated call runs as if undecorated: no span objects, no
header parsing, no context switches on the hot path.

Trace context (W3C `traceparent`): a batch whose records all carry the same trace continues it (the consume span
is a child of the producer's span); a batch mixing traces starts its own trace and links every record's span, as
OpenTelemetry's messaging conventions do for batch receive. The apply span is a child of the consume span; the
publish span continues the trace of the events it sends (the relay runs apart from the consumer); a provider call
continues the job's trace. The instrumentation packages for asyncpg and httpx (the Stripe SDK's client) add their
own spans underneath when exporting. aiokafka's is left out: it would inject a second `traceparent` into the
events, whose header is the command's own (SPEC §11).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    # The SDK (about 50 ms of imports) is loaded only when tracing is turned on: an untraced worker starts without it.
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

P = ParamSpec("P")
T = TypeVar("T")
Headers = Iterable[tuple[str, bytes]]

SERVICE_NAME: Final = "customer-worker"
_PROPAGATOR: Final = TraceContextTextMapPropagator()


class _State:
    tracer: Tracer | None = None
    provider: TracerProvider | None = None


_state = _State()


def enabled() -> bool:
    return _state.tracer is not None


def install(processor: SpanProcessor) -> TracerProvider:
    """Turn tracing on with `processor` (tests: a SimpleSpanProcessor over an InMemorySpanExporter)."""
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415

    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    provider.add_span_processor(processor)
    _state.provider = provider
    _state.tracer = provider.get_tracer("worker.tracing")
    return provider


def uninstall() -> None:
    if _state.provider is not None:
        _state.provider.shutdown()
    _state.provider = None
    _state.tracer = None


def configure_from_env() -> bool:
    """OTLP over HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the exporter reads the other standard `OTEL_*`
    variables itself); returns whether tracing is on."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return False
    # Imported only when exporting: the exporter pulls in protobuf and requests, which an untraced worker never needs.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor  # noqa: PLC0415
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    provider = install(BatchSpanProcessor(OTLPSpanExporter()))
    AsyncPGInstrumentor().instrument(  # type: ignore[no-untyped-call]
        tracer_provider=provider
    )
    HTTPXClientInstrumentor().instrument(tracer_provider=provider)
    return True


def shutdown() -> None:
    """Flush what is buffered (SIGTERM)."""
    if _state.provider is not None:
        _state.provider.force_flush(timeout_millis=2000)


def span_context(traceparent: str | bytes | None) -> SpanContext | None:
    if not traceparent:
        return None
    value = traceparent.decode("ascii", "replace") if isinstance(traceparent, bytes) else traceparent
    context = trace.get_current_span(_PROPAGATOR.extract({"traceparent": value})).get_span_context()
    return context if context.is_valid else None


def _header(headers: Headers, name: str) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


@contextmanager
def _batch_span(
    tracer: Tracer, name: str, kind: SpanKind, traceparents: Iterable[str | bytes | None], **attributes: Any
) -> Iterator[None]:
    contexts = [c for c in (span_context(t) for t in traceparents) if c is not None]
    parent: Context | None = None
    links: list[Link] = []
    if contexts and len({c.trace_id for c in contexts}) == 1:
        parent = trace.set_span_in_context(NonRecordingSpan(contexts[0]))
    else:
        links = [Link(c) for c in contexts]
    with tracer.start_as_current_span(name, context=parent, kind=kind, links=links, attributes=attributes):
        yield


def consume_span(records: Sequence[Any]) -> Any:
    """Context manager around settling a batch of records (with `.headers` and `.topic`): one `consume` span."""
    tracer = _state.tracer
    if tracer is None:
        return _noop()
    topic = getattr(records[0], "topic", "") if records else ""
    return _batch_span(
        tracer,
        f"{topic} process",
        SpanKind.CONSUMER,
        [_header(getattr(r, "headers", ()), "traceparent") for r in records],
        **{"messaging.system": "kafka", "messaging.batch.message_count": len(records)},
    )


def traced(name: str) -> Callable[[Callable[P, Coroutine[Any, Any, T]]], Callable[P, Coroutine[Any, Any, T]]]:
    """Decorates a coroutine function with a span `name`, a child of the current span."""

    def decorate(func: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        @functools.wraps(func)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            tracer = _state.tracer
            if tracer is None:
                return await func(*args, **kwargs)
            with tracer.start_as_current_span(name):
                return await func(*args, **kwargs)

        return wrapper

    return decorate


@contextmanager
def _noop() -> Iterator[None]:
    yield


def publish_span(topic: str, messages: Sequence[tuple[Any, Any, Sequence[tuple[str, bytes]]]]) -> Any:
    """Context manager around sending (key, value, headers) messages: one `publish` span continuing their trace."""
    tracer = _state.tracer
    if tracer is None:
        return _noop()
    return _batch_span(
        tracer,
        f"{topic} publish",
        SpanKind.PRODUCER,
        [_header(headers, "traceparent") for _, _, headers in messages],
        **{"messaging.system": "kafka", "messaging.batch.message_count": len(messages)},
    )


def provider_call(func: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Decorates `call(self, connection, ...)`: one client span per provider call, under the current span."""

    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        tracer = _state.tracer
        if tracer is None:
            return await func(*args, **kwargs)
        connection = args[1]
        provider = getattr(connection, "provider", "unknown")
        attributes = {"provider": str(provider), "provider.connection": str(getattr(connection, "code", ""))}
        with tracer.start_as_current_span(f"provider {provider}", kind=SpanKind.CLIENT, attributes=attributes):
            return await func(*args, **kwargs)

    return wrapper


def provider_job(func: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Decorates `_execute(self, job)`: a background provider job continues the trace of its command."""

    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        tracer = _state.tracer
        if tracer is None:
            return await func(*args, **kwargs)
        job = args[1]
        traceparent = getattr(job, "traceparent", None)
        with _batch_span(tracer, f"provider job {getattr(job, 'kind', '')}", SpanKind.INTERNAL, [traceparent]):
            return await func(*args, **kwargs)

    return wrapper

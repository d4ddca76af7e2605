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

Spans are redacted exactly like log lines. The worker's own spans record an exception with the log's short message
and traceback (asyncpg's DETAIL, which can quote a row, and pydantic's input values left out), not OpenTelemetry's
`str(exc)`; and every span, the instrumentation libraries' too, passes a redacting processor before any exporter:
attributes of the span, its events and links lose personal-data and secret keys and have e-mail addresses and URL
credentials masked, and exception texts lose the server's DETAIL and HINT lines. The rules live with the log
redaction (`worker.observability.redaction`, a higher layer), which registers them here (`use_redaction`); until
then exception texts are dropped, keeping only the type.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, ParamSpec, Protocol, TypeVar

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    # The SDK (about 50 ms of imports) is loaded only when tracing is turned on: an untraced worker starts without it.
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
    from opentelemetry.util.types import Attributes

P = ParamSpec("P")
T = TypeVar("T")
Headers = Iterable[tuple[str, bytes]]

SERVICE_NAME: Final = "customer-worker"
_PROPAGATOR: Final = TraceContextTextMapPropagator()


class Redaction(Protocol):
    """The log redaction's rules, applied to spans (see the module's docstring)."""

    def attributes(self, attributes: Mapping[str, Any]) -> dict[str, Any]: ...

    def error_message(self, exc: BaseException) -> str: ...

    def error_traceback(self, exc: BaseException) -> str: ...

    def error_text(self, text: str, *, long: bool = False) -> str:
        """An exception text that someone else rendered: `str(exc)`, or a formatted traceback when `long`."""
        ...


class _TypesOnly:
    """Before `use_redaction`: nothing free-form is kept."""

    def attributes(self, attributes: Mapping[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in attributes.items() if not isinstance(value, str)}

    def error_message(self, exc: BaseException) -> str:
        return ""

    def error_traceback(self, exc: BaseException) -> str:
        return ""

    def error_text(self, text: str, *, long: bool = False) -> str:
        return ""


class _State:
    tracer: Tracer | None = None
    provider: TracerProvider | None = None
    redaction: Redaction = _TypesOnly()


_state = _State()


def use_redaction(redaction: Redaction) -> None:
    _state.redaction = redaction


def enabled() -> bool:
    return _state.tracer is not None


def install(processor: SpanProcessor) -> TracerProvider:
    """Turn tracing on with `processor` (tests: a SimpleSpanProcessor over an InMemorySpanExporter)."""
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415

    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    provider.add_span_processor(_redacting(processor))
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
    with _span(tracer, name, context=parent, kind=kind, links=links, attributes=attributes):
        yield


@contextmanager
def _span(tracer: Tracer, name: str, **options: Any) -> Iterator[Span]:
    """`start_as_current_span`, but an exception is recorded as a log line shows it, not as `str(exc)`."""
    with tracer.start_as_current_span(name, record_exception=False, set_status_on_exception=False, **options) as span:
        try:
            yield span
        except Exception as exc:
            record_error(span, exc)
            raise


def record_error(span: Span, exc: BaseException) -> None:
    redaction = _state.redaction
    message = redaction.error_message(exc)
    exception_type = type(exc).__qualname__
    if type(exc).__module__ not in {"builtins", "__main__"}:
        exception_type = f"{type(exc).__module__}.{exception_type}"
    span.add_event(
        "exception",
        {
            "exception.type": exception_type,
            "exception.message": message,
            "exception.stacktrace": redaction.error_traceback(exc),
            "exception.escaped": "False",
        },
    )
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {message}"))


def _redacting(inner: SpanProcessor) -> SpanProcessor:
    """`inner` seeing every span redacted: the worker's own, and those of the asyncpg and httpx instrumentation,
    which record `str(exc)` (asyncpg's includes the DETAIL line, `Key (organization_id, external_id)=(...)`)."""
    from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor  # noqa: PLC0415

    class RedactingSpanProcessor(SpanProcessor):
        def on_start(self, span: Any, parent_context: Context | None = None) -> None:
            inner.on_start(span, parent_context)

        def on_end(self, span: ReadableSpan) -> None:
            inner.on_end(_redacted(span))

        def shutdown(self) -> None:
            inner.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return inner.force_flush(timeout_millis)

    def _redacted(span: ReadableSpan) -> ReadableSpan:
        redaction = _state.redaction
        status = span.status
        if status.description:
            status = Status(status.status_code, redaction.error_text(status.description))
        return ReadableSpan(
            name=span.name,
            context=span.context,
            parent=span.parent,
            resource=span.resource,
            attributes=_attributes(redaction, span.attributes),
            events=[
                Event(event.name, _attributes(redaction, event.attributes, exception=True), event.timestamp)
                for event in span.events
            ],
            links=[Link(link.context, _attributes(redaction, link.attributes)) for link in span.links],
            kind=span.kind,
            status=status,
            start_time=span.start_time,
            end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope,
        )

    return RedactingSpanProcessor()


_EXCEPTION_TEXTS: Final = frozenset({"exception.message", "exception.stacktrace"})


def _attributes(redaction: Redaction, attributes: Attributes, *, exception: bool = False) -> dict[str, Any]:
    if not attributes:
        return {}
    kept = redaction.attributes({k: v for k, v in attributes.items() if not (exception and k in _EXCEPTION_TEXTS)})
    if exception:
        for key in _EXCEPTION_TEXTS & attributes.keys():
            text = attributes[key]
            kept[key] = redaction.error_text(text, long=key == "exception.stacktrace") if isinstance(text, str) else ""
    return kept


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
            with _span(tracer, name):
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
        with _span(tracer, f"provider {provider}", kind=SpanKind.CLIENT, attributes=attributes):
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

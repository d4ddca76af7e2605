"""Logs, metrics and the health endpoints.

Logging: one structured line per entry, JSON in production (``LOG_FORMAT=json``) or a console rendering for people.
Both structlog loggers and stdlib loggers of libraries (aiokafka, faststream, asyncpg, ...) go through the same
processors, so a library's exception is one structured line with ``error`` / ``error_type`` / ``traceback`` fields,
never a raw traceback on stderr. Personal data and secrets never belong in a log line: log ids and counts, not
customer values. The ``redact`` processor is a safety net for mistakes, not a licence: it drops known personal-data
and secret keys (also inside nested mappings) and masks e-mail addresses and URL credentials in strings.

Metrics: a `Metrics` object owns its own ``CollectorRegistry``. Label values are closed sets (outcomes, reasons,
dependencies, providers, partition numbers); organization ids, external ids and personal data are never labels.

Health: `Health` holds the readiness flags, `HealthServer` serves ``/healthz``, ``/readyz`` and ``/metrics``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import string
import sys
import threading
import traceback
import types
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal, Protocol, TextIO, get_args

import orjson
import structlog
from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from pydantic import BaseModel, ValidationError
from structlog.typing import EventDict, Processor, WrappedLogger

from worker.contract.connections import ProviderName
from worker.outages import Dependency

__all__ = [
    "COMMAND_OUTCOMES",
    "DEPENDENCIES",
    "DLQ_REASONS",
    "NOISY_LIBRARIES",
    "PROVIDERS",
    "PROVIDER_CALL_OUTCOMES",
    "PROVIDER_JOB_STATUSES",
    "REDACTED_KEYS",
    "CommandOutcome",
    "Dependency",
    "DlqReason",
    "Health",
    "HealthServer",
    "LogFormat",
    "Logger",
    "Metrics",
    "ProviderCallOutcome",
    "adopt_library_loggers",
    "configure_logging",
    "get_logger",
    "record_context",
    "redact",
    "safe_message",
]

# --------------------------------------------------------------------------------------------------------------------
# Logging
# --------------------------------------------------------------------------------------------------------------------

LogFormat = Literal["json", "console"]
Logger = structlog.stdlib.BoundLogger

#: Library loggers held at WARNING (or the configured level when that is higher); their own handlers are removed so
#: that they propagate to the structured root handler.
NOISY_LIBRARIES: Final[tuple[str, ...]] = (
    "aiokafka",
    "kafka",
    "faststream",
    "asyncpg",
    "aiohttp",
    "httpx",
    "httpcore",
    "urllib3",
    "stripe",
    "Adyen",
    "gocardless_pro",
)

#: Event-dict keys dropped by `redact` (compared lower-cased, ``-`` read as ``_``), at any depth.
REDACTED_KEYS: Final[frozenset[str]] = frozenset(
    {
        "email",
        "phone",
        "name",
        "firstname",
        "lastname",
        "legal_name",
        "legal_number",
        "tax_identification_number",
        "address_line1",
        "address_line2",
        "city",
        "zipcode",
        "state",
        "url",
        "logo_url",
        "secret",
        "api_key",
        "password",
        "signature",
        "token",
        "authorization",
    }
)
# Keys ending like these are dropped too (``sasl_password``, ``access_token``, ``billing_email``, ``x_signature``).
_REDACTED_SUFFIXES: Final[tuple[str, ...]] = (
    "_email",
    "_phone",
    "_password",
    "_secret",
    "_token",
    "_api_key",
    "_signature",
    "_authorization",
)
# Linear time: a match starts only where a run of local-part characters starts, and the possessive `++` never
# backtracks into the run (none of its characters is `@`). The domain needs no dot, so that an address cut short by
# truncation (`jane.doe@exa`) is still masked.
_EMAIL_RE: Final = re.compile(r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]++@[A-Za-z0-9\-]*+(?:\.[A-Za-z0-9\-]++)*+")
_URL_CREDENTIALS_RE: Final = re.compile(r"(?<=://)[^/\s@]+@")
_MAX_DEPTH: Final = 8
_MAX_ERROR_CHARS: Final = 500
_MAX_TRACEBACK_CHARS: Final = 20_000
_MAX_CHAINED: Final = 8
_MAX_ID_CHARS: Final = 255
_MAX_VALUE_CHARS: Final = 2_000
_LONG_TEXT_KEYS: Final = frozenset({"traceback", "exception", "stack"})
_ADDRESS_CHARACTERS: Final = string.ascii_letters + string.digits + "._%+-@"
_HANDLER_MARK: Final = "_customer_worker_handler"


def _is_redacted_key(key: object) -> bool:
    if not isinstance(key, str):
        return False
    normalized = key.strip().lower().replace("-", "_")
    return normalized in REDACTED_KEYS or normalized.endswith(_REDACTED_SUFFIXES)


def _scrub_text(text: str) -> str:
    """Mask URL credentials (``scheme://user:pass@`` → ``scheme://***@``) and e-mail addresses."""
    if "@" not in text:
        return text
    return _EMAIL_RE.sub("<email>", _URL_CREDENTIALS_RE.sub("***@", text))


def _scrub_value(value: Any, depth: int = 0, limit: int = _MAX_VALUE_CHARS) -> Any:
    if isinstance(value, str):
        # Truncated first: scrubbing then costs at most `limit` characters, whatever a caller passed.
        return _scrub_text(_truncate_words(value, limit))
    if value is None or isinstance(value, bool | int | float):
        return value
    if depth >= _MAX_DEPTH:
        return "<nested too deep>"
    if isinstance(value, Mapping):
        return {k: _scrub_value(v, depth + 1) for k, v in value.items() if not _is_redacted_key(k)}
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub_value(v, depth + 1) for v in value]
    if isinstance(value, BaseModel):
        # A model's repr would show every field: dump it and drop the personal ones.
        return _scrub_value(value.model_dump(mode="json"), depth + 1)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _scrub_value(dataclasses.asdict(value), depth + 1)
    return value


def redact(_logger: WrappedLogger, _method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: drop personal-data and secret keys, mask e-mails and URL credentials in strings.

    A safety net only: code must not log customer values in the first place.
    """
    return {
        key: _scrub_value(value, limit=_MAX_TRACEBACK_CHARS if key in _LONG_TEXT_KEYS else _MAX_VALUE_CHARS)
        for key, value in event_dict.items()
        if not _is_redacted_key(key)
    }


def _truncate_words(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, without the word cut in half: half an address (`jane.doe`, no `@` left)
    is no longer recognisable as one, so it is dropped rather than shown."""
    if len(text) <= limit:
        return text
    return text[: limit - 1].rstrip(_ADDRESS_CHARACTERS) + "…"


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def safe_message(exc: BaseException) -> str:
    """A short message for `exc` that leaves out what commonly carries data.

    asyncpg appends the server's DETAIL (which can quote a whole row) to ``str()``: only the primary message is kept.
    pydantic's message quotes the input values: only locations and error types are kept.
    """
    try:
        if isinstance(exc, ValidationError):
            errors = exc.errors(include_input=False, include_url=False, include_context=False)
            parts = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['type']}" for e in errors[:20])
            message = f"{exc.error_count()} validation error(s) for {exc.title}: {parts}"
        elif isinstance(getattr(exc, "sqlstate", None), str) and exc.args and isinstance(exc.args[0], str):
            message = f"{exc.args[0]} (sqlstate {getattr(exc, 'sqlstate', '')})"
        else:
            message = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not break logging
        message = "<unprintable exception>"
    return _truncate(_scrub_text(message.replace("\n", " ")), _MAX_ERROR_CHARS)


def _qualified_name(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module in {"builtins", "__main__"} else f"{module}.{cls.__qualname__}"


def _format_traceback(exc: BaseException, seen: set[int] | None = None, depth: int = 0) -> list[str]:
    """Python's traceback layout, with each exception's message from `safe_message` (no DETAIL, no inputs)."""
    seen = set() if seen is None else seen
    seen.add(id(exc))
    lines: list[str] = []
    if depth < _MAX_CHAINED:
        cause = exc.__cause__
        context = None if exc.__suppress_context__ else exc.__context__
        if cause is not None and id(cause) not in seen:
            lines += _format_traceback(cause, seen, depth + 1)
            lines.append("\nThe above exception was the direct cause of the following exception:\n\n")
        elif context is not None and id(context) not in seen:
            lines += _format_traceback(context, seen, depth + 1)
            lines.append("\nDuring handling of the above exception, another exception occurred:\n\n")
    if exc.__traceback__ is not None:
        lines.append("Traceback (most recent call last):\n")
        lines += traceback.format_tb(exc.__traceback__)
    lines.append(f"{_qualified_name(exc)}: {safe_message(exc)}\n")
    if isinstance(exc, BaseExceptionGroup) and depth < _MAX_CHAINED:
        for index, sub in enumerate(exc.exceptions[:10], 1):
            lines.append(f"+---------------- {index} ----------------\n")
            sub_text = "".join(_format_traceback(sub, seen, depth + 1))
            lines += [f"| {line}" for line in sub_text.splitlines(keepends=True)]
    return lines


def _exception_of(exc_info: object) -> BaseException | None:
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple):
        return exc_info[1] if len(exc_info) == 3 and isinstance(exc_info[1], BaseException) else None
    if exc_info:
        return sys.exc_info()[1]
    return None


def _exception_fields(traceback_key: str) -> Processor:
    """Replace ``exc_info`` by ``error``, ``error_type`` and a formatted traceback under `traceback_key`."""

    def processor(_logger: WrappedLogger, _method_name: str, event_dict: EventDict) -> EventDict:
        exc = _exception_of(event_dict.pop("exc_info", None))
        event_dict.pop("exception", None)  # only ever our own rendering below
        if exc is not None:
            event_dict["error"] = safe_message(exc)
            event_dict["error_type"] = type(exc).__name__
            text = "".join(_format_traceback(exc)).rstrip("\n")
            if len(text) > _MAX_TRACEBACK_CHARS:
                text = "…" + text[-(_MAX_TRACEBACK_CHARS - 1) :]
            event_dict[traceback_key] = text
        stack = event_dict.pop("stack_info", None)
        if isinstance(stack, str):
            event_dict["stack"] = stack
        elif stack:
            event_dict["stack"] = "".join(traceback.format_stack()[:-1])
        return event_dict

    return processor


_FRONT_KEYS: Final[tuple[str, ...]] = ("timestamp", "level", "logger", "event")


def _front_keys(_logger: WrappedLogger, _method_name: str, event_dict: EventDict) -> EventDict:
    """``timestamp``, ``level``, ``logger``, ``event`` first: easier to read raw JSON lines."""
    ordered = {key: event_dict.pop(key) for key in _FRONT_KEYS if key in event_dict}
    ordered.update(event_dict)
    return ordered


def _json_dumps(obj: Any, **kwargs: Any) -> str:
    default = kwargs.get("default")
    try:
        return orjson.dumps(obj, default=default, option=orjson.OPT_NON_STR_KEYS).decode()
    except (orjson.JSONEncodeError, TypeError):
        # Integers beyond 64 bits, cycles and other rarities: the standard library copes or says what it is.
        return json.dumps(obj, default=repr, ensure_ascii=False)


class _StructuredHandler(logging.StreamHandler[TextIO]):
    """Writes to the current ``sys.stderr`` (looked up at each record, so redirections and test capture work)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def adopt_library_loggers(level: int | None = None) -> None:
    """Make the existing loggers of `NOISY_LIBRARIES` propagate to the root handler, without handlers of their own.

    FastStream installs its own stderr/stdout handlers (``faststream``, ``faststream.access.*``) with propagation
    off. `configure_logging` calls this; call it again after creating a broker if one was built without an
    explicit ``logger=``. With `level`, also sets their level to at least WARNING.
    """
    manager = logging.Logger.manager
    for name, candidate in list(manager.loggerDict.items()):
        if not isinstance(candidate, logging.Logger):
            continue
        if any(name == lib or name.startswith(lib + ".") for lib in NOISY_LIBRARIES):
            for handler in list(candidate.handlers):
                candidate.removeHandler(handler)
            candidate.propagate = True
            if name not in NOISY_LIBRARIES:  # the libraries' own loggers are set below
                candidate.setLevel(logging.NOTSET)
    if level is not None:
        for lib in NOISY_LIBRARIES:
            logging.getLogger(lib).setLevel(max(logging.WARNING, level))


def _parse_level(level: str) -> int:
    mapping = logging.getLevelNamesMapping()
    try:
        return mapping[level.strip().upper()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; expected DEBUG, INFO, WARNING or ERROR") from None


def _log_uncaught(exc_type: type[BaseException], exc: BaseException, tb: types.TracebackType | None) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    structlog.stdlib.get_logger("worker").critical("uncaught_exception", exc_info=(exc_type, exc, tb))


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or issubclass(args.exc_type, SystemExit):
        return
    thread = args.thread.name if args.thread is not None else None
    structlog.stdlib.get_logger("worker").error(
        "uncaught_thread_exception", thread=thread, exc_info=(args.exc_type, args.exc_value, args.exc_traceback)
    )


def _log_unraisable(unraisable: Any) -> None:
    exc = unraisable.exc_value
    structlog.stdlib.get_logger("worker").error(
        "unraisable_exception",
        error_message=unraisable.err_msg or "Exception ignored",
        exc_info=(type(exc), exc, unraisable.exc_traceback) if exc is not None else None,
    )


def configure_logging(level: str, fmt: LogFormat, *, capture_uncaught: bool = True) -> None:
    """Configure structlog and the stdlib root logger; idempotent (a second call replaces the first).

    Every line carries ``timestamp`` (ISO 8601, UTC), ``level``, ``logger``, ``event`` and the context bound with
    structlog.contextvars (see `record_context`). ``exc_info`` becomes ``error`` (short, without data),
    ``error_type`` and ``traceback`` (JSON) or a rendered traceback below the line (console). Lines go to stderr.
    With `capture_uncaught`, uncaught exceptions (main thread, other threads, unraisable) and Python warnings are
    logged through the same pipeline instead of printed raw.
    """
    numeric_level = _parse_level(level)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if fmt == "json":
        exception_processor = _exception_fields("traceback")
        renderer = structlog.processors.JSONRenderer(serializer=_json_dumps)
    elif fmt == "console":
        exception_processor = _exception_fields("exception")  # ConsoleRenderer prints it below the line
        renderer = structlog.dev.ConsoleRenderer(colors=_stderr_is_tty(), sort_keys=True)
    else:
        raise ValueError(f"unknown log format {fmt!r}; expected 'json' or 'console'")

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.PositionalArgumentsFormatter(),
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        context_class=dict,
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: tests swap the configuration (structlog.testing.capture_logs) after loggers exist.
        cache_logger_on_first_use=False,
    )

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            exception_processor,
            redact,
            *([_front_keys] if fmt == "json" else []),
            renderer,
        ],
    )
    handler = _StructuredHandler()
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(numeric_level)
    adopt_library_loggers(numeric_level)

    if capture_uncaught:
        logging.captureWarnings(True)
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_thread_exception
        sys.unraisablehook = _log_unraisable


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def get_logger(name: str) -> Logger:
    """A structlog logger named `name` (the ``logger`` field); configuration is looked up at each call."""
    return structlog.stdlib.get_logger(name)


def record_context(
    organization_id: str | None, message_id: str | None, partition: int, offset: int
) -> contextlib.AbstractContextManager[None]:
    """Bind the record being processed to every log line of this task/thread inside the `with` block; ``None`` ids
    are left out. On exit the previous context comes back; other context variables stay."""
    context: dict[str, Any] = {"partition": partition, "offset": offset}
    if organization_id is not None:
        context["organization_id"] = organization_id[:_MAX_ID_CHARS]
    if message_id is not None:
        context["message_id"] = message_id[:_MAX_ID_CHARS]
    return structlog.contextvars.bound_contextvars(**context)


# --------------------------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------------------------

CommandOutcome = Literal["created", "updated", "rejected", "skipped", "duplicate", "dead_lettered", "invalid_signature"]
DlqReason = Literal["invalid_json", "invalid_envelope", "too_large", "processing_error", "unreadable_record"]
#: ``success``; ``retryable_error`` (network, 429, 5xx: will be retried); ``permanent_error`` (other 4xx, or attempts
#: exhausted); ``timeout`` (the inline budget ran out, the call goes on as a background job).
ProviderCallOutcome = Literal["success", "retryable_error", "permanent_error", "timeout"]

ParkReason = Literal["too_large", "invalid_record"]
SkipReason = Literal["dead_letter_refused"]
COMMAND_OUTCOMES: Final[tuple[CommandOutcome, ...]] = get_args(CommandOutcome)
PARK_REASONS: Final[tuple[ParkReason, ...]] = get_args(ParkReason)
SKIP_REASONS: Final[tuple[SkipReason, ...]] = get_args(SkipReason)
DLQ_REASONS: Final[tuple[DlqReason, ...]] = get_args(DlqReason)
DEPENDENCIES: Final[tuple[Dependency, ...]] = get_args(Dependency)
PROVIDERS: Final[tuple[ProviderName, ...]] = get_args(ProviderName)
PROVIDER_CALL_OUTCOMES: Final[tuple[ProviderCallOutcome, ...]] = get_args(ProviderCallOutcome)

_NAMESPACE: Final = "customer_worker"
#: Statuses of `customer_worker_provider_jobs`: the open jobs (finished ones are counted by the provider call counters).
PROVIDER_JOB_STATUSES: Final[tuple[str, ...]] = ("pending", "running")

# Every counter and histogram would also expose a `_created` timestamp series: noise for dashboards and alerts.
disable_created_metrics()  # type: ignore[no-untyped-call]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415 - only when metrics are built

    try:
        return version("customer-worker")
    except PackageNotFoundError:
        return "unknown"


_BATCH_SIZE_BUCKETS: Final = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
_LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_PROVIDER_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _check(value: str, allowed: Iterable[str], label: str) -> str:
    if value not in allowed:
        # The value is not echoed: a wrong label might be exactly the kind of data that must not leak.
        raise ValueError(f"not an allowed value for metric label {label!r}")
    return value


class Metrics:
    """Prometheus metrics of one worker, in their own registry (names prefixed ``customer_worker_``).

    Labels only take values from closed sets (`COMMAND_OUTCOMES`, `DLQ_REASONS`, `DEPENDENCIES`, `PROVIDERS`,
    `PROVIDER_CALL_OUTCOMES`, partition numbers): never organization ids, external ids or personal data. The helper
    methods check this; the metric attributes are public for ``.time()`` / ``.observe()`` and the like.

    ``consumer_lag`` is computed from the partitions' end offsets minus the committed position. Tansu does not keep
    end offsets the way Kafka does, so on Tansu the value is wrong (treat it as indicative only).
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, process_metrics: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        if process_metrics:
            ProcessCollector(registry=self.registry)
        reg = self.registry
        ns = _NAMESPACE
        self.commands_total = Counter(
            "commands", "Commands answered, by outcome.", ["outcome"], namespace=ns, registry=reg
        )
        self.unknown_fields_total = Counter(
            "unknown_fields", "Unknown customer fields seen (ignored) in commands.", namespace=ns, registry=reg
        )
        self.batch_size = Histogram(
            "batch_size", "Records per consumed batch.", namespace=ns, registry=reg, buckets=_BATCH_SIZE_BUCKETS
        )
        self.processing_seconds = Histogram(
            "processing_seconds",
            "Time to process one batch, from receipt to offset commit.",
            namespace=ns,
            registry=reg,
            buckets=_LATENCY_BUCKETS,
        )
        self.consumer_lag = Gauge(
            "consumer_lag",
            "Records behind the partition's end offset (from end offsets; wrong on Tansu).",
            ["partition"],
            namespace=ns,
            registry=reg,
        )
        self.outbox_backlog = Gauge("outbox_backlog", "Outbox events not yet published.", namespace=ns, registry=reg)
        self.outbox_oldest_age_seconds = Gauge(
            "outbox_oldest_age_seconds", "Age of the oldest unpublished outbox event.", namespace=ns, registry=reg
        )
        self.dlq_total = Counter(
            "dlq", "Records sent to the dead-letter topic, by reason.", ["reason"], namespace=ns, registry=reg
        )
        self.events_published_total = Counter(
            "events_published", "Result events published to the events topic.", namespace=ns, registry=reg
        )
        self.events_parked_total = Counter(
            "events_parked",
            "Outbox events the broker refused for good, moved to parked_events (reason too_large, invalid_record).",
            ["reason"],
            namespace=ns,
            registry=reg,
        )
        self.records_skipped_total = Counter(
            "records_skipped",
            "Records neither answered nor dead-lettered: even their headers-only DLQ stub was refused.",
            ["reason"],
            namespace=ns,
            registry=reg,
        )
        self.dependency_retries_total = Counter(
            "dependency_retries",
            "Retries caused by an unavailable dependency.",
            ["dependency"],
            namespace=ns,
            registry=reg,
        )
        self.provider_calls_total = Counter(
            "provider_calls",
            "Payment provider API calls, by provider and outcome.",
            ["provider", "outcome"],
            namespace=ns,
            registry=reg,
        )
        self.provider_call_seconds = Histogram(
            "provider_call_seconds",
            "Payment provider API call latency.",
            ["provider"],
            namespace=ns,
            registry=reg,
            buckets=_PROVIDER_BUCKETS,
        )
        self.build_info = Info("build", "Version of the running worker.", namespace=ns, registry=reg)
        self.build_info.info({"version": _version()})
        self.provider_jobs = Gauge(
            "provider_jobs",
            "Open provider jobs in the database, by status (database-wide: every replica reports the same value).",
            ["status"],
            namespace=ns,
            registry=reg,
        )
        for status in PROVIDER_JOB_STATUSES:
            self.provider_jobs.labels(status=status)
        self.provider_runner_up = Gauge(
            "provider_runner_up",
            "1 while the provider job runner is running, 0 when it has stopped.",
            namespace=ns,
            registry=reg,
        )
        # Known label values start at 0, so rates and absent-series alerts work from the first scrape.
        for outcome in COMMAND_OUTCOMES:
            self.commands_total.labels(outcome=outcome)
        for reason in DLQ_REASONS:
            self.dlq_total.labels(reason=reason)
        for dependency in DEPENDENCIES:
            self.dependency_retries_total.labels(dependency=dependency)
        for refusal in PARK_REASONS:
            self.events_parked_total.labels(reason=refusal)
        for skip in SKIP_REASONS:
            self.records_skipped_total.labels(reason=skip)
        for provider in PROVIDERS:
            self.provider_call_seconds.labels(provider=provider)
            for call_outcome in PROVIDER_CALL_OUTCOMES:
                self.provider_calls_total.labels(provider=provider, outcome=call_outcome)

    # -- checked helpers -------------------------------------------------------------------------------------------

    def command(self, outcome: CommandOutcome, count: int = 1) -> None:
        self.commands_total.labels(outcome=_check(outcome, COMMAND_OUTCOMES, "outcome")).inc(count)

    def dead_lettered(self, reason: DlqReason, count: int = 1) -> None:
        self.dlq_total.labels(reason=_check(reason, DLQ_REASONS, "reason")).inc(count)

    def parked(self, reason: str, count: int = 1) -> None:
        self.events_parked_total.labels(reason=_check(reason, PARK_REASONS, "reason")).inc(count)

    def skipped(self, reason: SkipReason, count: int = 1) -> None:
        self.records_skipped_total.labels(reason=_check(reason, SKIP_REASONS, "reason")).inc(count)

    def dependency_retry(self, dependency: Dependency) -> None:
        self.dependency_retries_total.labels(dependency=_check(dependency, DEPENDENCIES, "dependency")).inc()

    def provider_call(self, provider: ProviderName, outcome: ProviderCallOutcome, seconds: float) -> None:
        checked = _check(provider, PROVIDERS, "provider")
        self.provider_calls_total.labels(
            provider=checked, outcome=_check(outcome, PROVIDER_CALL_OUTCOMES, "outcome")
        ).inc()
        self.provider_call_seconds.labels(provider=checked).observe(seconds)

    def batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.processing_seconds.observe(seconds)

    def set_consumer_lag(self, partition: int, lag: int) -> None:
        if isinstance(partition, bool) or not isinstance(partition, int) or partition < 0:
            raise ValueError("partition must be a non-negative integer")
        self.consumer_lag.labels(partition=str(partition)).set(max(lag, 0))

    def forget_partition(self, partition: int) -> None:
        """Drop the lag series of a revoked partition."""
        with contextlib.suppress(KeyError):
            self.consumer_lag.remove(str(partition))

    def set_outbox(self, backlog: int, oldest_age_seconds: float) -> None:
        self.outbox_backlog.set(backlog)
        self.outbox_oldest_age_seconds.set(oldest_age_seconds)

    def set_provider_jobs(self, counts: Mapping[str, int]) -> None:
        """Open jobs by status, as just counted; a status with no row is 0."""
        for status in PROVIDER_JOB_STATUSES:
            self.provider_jobs.labels(status=status).set(counts.get(status, 0))

    @property
    def content_type(self) -> str:
        return CONTENT_TYPE_PLAIN_0_0_4

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format (version 0.0.4)."""
        return generate_latest(self.registry)


# --------------------------------------------------------------------------------------------------------------------
# Health
# --------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Health:
    """Readiness flags; ready when the database is reachable, the broker connected and partitions assigned."""

    database_ok: bool = False
    broker_ok: bool = False
    partitions_assigned: bool = False
    provider_runner_ok: bool = True
    """False once the provider job runner has stopped while the worker runs (it should never stop by itself)."""

    @property
    def ready(self) -> bool:
        return not self.not_ready()

    def not_ready(self) -> list[str]:
        """Names of the failing checks (``database``, ``broker``, ``partitions``, ``provider_runner``), empty when
        ready."""
        checks = (
            ("database", self.database_ok),
            ("broker", self.broker_ok),
            ("partitions", self.partitions_assigned),
            ("provider_runner", self.provider_runner_ok),
        )
        return [name for name, ok in checks if not ok]


class Readiness(Protocol):
    def not_ready(self) -> list[str]: ...


class Exposition(Protocol):
    @property
    def content_type(self) -> str: ...

    def render(self) -> bytes: ...


class HealthServer:
    """``GET /healthz``, ``/readyz`` and ``/metrics`` on `host`:`port` (port 0 picks a free port); no access log.
    Serves a worker's `Health` and `Metrics`, or those of a replica's processes (`worker.processes`)."""

    def __init__(self, health: Readiness, metrics: Exposition, host: str = "0.0.0.0", port: int = 8080) -> None:
        self._health = health
        self._metrics = metrics
        self._host = host
        self._requested_port = port
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_view)
        return app

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"}, headers={"Cache-Control": "no-store"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        failing = self._health.not_ready()
        if not failing:
            return web.json_response({"status": "ready"}, headers={"Cache-Control": "no-store"})
        return web.json_response(
            {"status": "not_ready", "not_ready": failing}, status=503, headers={"Cache-Control": "no-store"}
        )

    async def _metrics_view(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=self._metrics.render(),
            headers={"Content-Type": self._metrics.content_type, "Cache-Control": "no-store"},
        )

    async def start(self) -> None:
        if self._runner is not None:
            return
        runner = web.AppRunner(self._app(), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._requested_port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        addresses = runner.addresses
        self._port = int(addresses[0][1]) if addresses else self._requested_port

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        self._port = None
        if runner is not None:
            await runner.cleanup()

    @property
    def port(self) -> int:
        """The bound port (the one chosen when 0 was asked); only while started."""
        if self._port is None:
            raise RuntimeError("HealthServer is not started")
        return self._port


def export_readiness(metrics: Metrics, health: Health) -> None:
    """`customer_worker_ready`: 1 while /readyz would answer 200, else 0 (read at scrape time), for dashboards and
    the not-ready alert."""
    Gauge(
        "ready", "1 when ready (database, broker, partitions), else 0.", namespace=_NAMESPACE, registry=metrics.registry
    ).set_function(lambda: 1.0 if health.ready else 0.0)

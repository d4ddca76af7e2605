"""Logging: one structured line per entry, JSON in production (``LOG_FORMAT=json``) or a console rendering for people.
Both structlog loggers and stdlib loggers of libraries (aiokafka, asyncpg, ...) go through the same
processors, so a library's exception is one structured line with ``error`` / ``error_type`` / ``traceback`` fields,
never a raw traceback on stderr."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import types
from typing import Any, Final, Literal, TextIO

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from worker.observability.redaction import _HANDLER_MARK, _MAX_ID_CHARS, _exception_fields, redact

LogFormat = Literal["json", "console"]
Logger = structlog.stdlib.BoundLogger

#: Library loggers held at WARNING (or the configured level when that is higher); their own handlers are removed so
#: that they propagate to the structured root handler.
NOISY_LIBRARIES: Final[tuple[str, ...]] = (
    "aiokafka",
    "kafka",
    "asyncpg",
    "aiohttp",
    "httpx",
    "httpcore",
    "urllib3",
    "stripe",
    "Adyen",
    "gocardless_pro",
)

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

    A library may install stderr/stdout handlers of its own with propagation off: they would print around the
    structured pipeline. `configure_logging` calls this; call it again after importing such a library. With `level`,
    also sets their level to at least WARNING.
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

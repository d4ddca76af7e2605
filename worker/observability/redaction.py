"""Redaction of log entries and trace spans: personal-data and secret keys dropped, e-mail addresses and URL
credentials masked, long values and tracebacks truncated, exception messages without asyncpg's DETAIL or pydantic's
input values. A safety net for mistakes, not a licence: log ids and counts, not customer values.

The same rules apply to spans (`worker.tracing`, a lower layer, which they are registered with on import)."""

from __future__ import annotations

import dataclasses
import re
import string
import sys
import traceback
from collections.abc import Mapping
from typing import Any, Final

from pydantic import BaseModel, ValidationError
from structlog.typing import EventDict, Processor, WrappedLogger

from worker import tracing
from worker.contract.fields import PERSONAL_NAMES

#: Event-dict keys dropped by `redact` (compared lower-cased, ``-`` read as ``_``), at any depth: the customer fields
#: that the field table flags as personal, and secrets.
REDACTED_KEYS: Final[frozenset[str]] = frozenset(
    {*PERSONAL_NAMES, "secret", "api_key", "password", "signature", "token", "authorization"}
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
            event_dict[traceback_key] = safe_traceback(exc)
        stack = event_dict.pop("stack_info", None)
        if isinstance(stack, str):
            event_dict["stack"] = stack
        elif stack:
            event_dict["stack"] = "".join(traceback.format_stack()[:-1])
        return event_dict

    return processor


def safe_traceback(exc: BaseException) -> str:
    """Python's traceback of `exc` (its causes and contexts too), each message from `safe_message`, cut from the
    start to `_MAX_TRACEBACK_CHARS`."""
    text = "".join(_format_traceback(exc)).rstrip("\n")
    if len(text) > _MAX_TRACEBACK_CHARS:
        text = "…" + text[-(_MAX_TRACEBACK_CHARS - 1) :]
    return text


# asyncpg's `str()` appends these to the server's message, each on a line of its own (DETAIL can quote a row).
_SERVER_DETAIL_LINES: Final = ("DETAIL:", "HINT:")


def scrub_error_text(text: str, *, long: bool = False) -> str:
    """An exception text rendered by someone else (`str(exc)`, `traceback.format_exception`), as safe as
    `safe_message` / `safe_traceback` can make it from the text alone: the server's DETAIL and HINT lines dropped,
    e-mail addresses and URL credentials masked, cut like them. A message keeps its first line only."""
    lines = [line for line in text.splitlines() if not line.lstrip(" |").startswith(_SERVER_DETAIL_LINES)]
    if long:
        text = "\n".join(lines)
        if len(text) > _MAX_TRACEBACK_CHARS:  # the end holds the exception itself, as in `safe_traceback`
            text = "…" + text[-(_MAX_TRACEBACK_CHARS - 1) :].lstrip(_ADDRESS_CHARACTERS)
        return _scrub_text(text)
    return _truncate(_scrub_text(_truncate_words(lines[0] if lines else "", _MAX_ERROR_CHARS)), _MAX_ERROR_CHARS)


class _SpanRedaction:
    """The rules above, for `worker.tracing`: a span's attributes are an event dict's fields."""

    def attributes(self, attributes: Mapping[str, Any]) -> dict[str, Any]:
        # Attribute names are dotted (`enduser.email`, `http.request.header.authorization`): the last part counts.
        kept = {key: value for key, value in attributes.items() if not _is_redacted_key(key.rsplit(".", 1)[-1])}
        return dict(redact(None, "", kept))

    def error_message(self, exc: BaseException) -> str:
        return safe_message(exc)

    def error_traceback(self, exc: BaseException) -> str:
        return safe_traceback(exc)

    def error_text(self, text: str, *, long: bool = False) -> str:
        return scrub_error_text(text, long=long)


tracing.use_redaction(_SpanRedaction())

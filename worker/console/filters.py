"""The filters of the list pages, read from a query string or a form, and the SQL conditions they stand for.

Values are always bound parameters; column names come from this module only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

WINDOWS: Final = {"1h": 1, "6h": 6, "24h": 24, "7d": 168, "30d": 720}
DEFAULT_WINDOW: Final = "24h"
DLQ_STATES: Final = ("new", "replayed", "returned", "skipped")
JOB_STATES: Final = ("waiting", "running", "stuck", "failed", "cancelled", "done", "skipped")


def _text(values: Mapping[str, str], name: str, limit: int = 200) -> str | None:
    value = values.get(name, "").strip()
    return value[:limit] or None


def window_of(values: Mapping[str, str]) -> str:
    value = values.get("window", DEFAULT_WINDOW)
    return value if value in WINDOWS else DEFAULT_WINDOW


def window_start(window: str, now: datetime | None = None) -> datetime:
    return (now or datetime.now(UTC)) - timedelta(hours=WINDOWS[window])


class Where:
    """SQL conditions with numbered parameters, starting after `first` already used ones."""

    def __init__(self, first: int = 0) -> None:
        self.parts: list[str] = []
        self.args: list[Any] = []
        self._first = first

    def add(self, template: str, value: Any) -> None:
        """`template` holds one `{}` for the parameter's placeholder."""
        self.args.append(value)
        self.parts.append(template.format(f"${self._first + len(self.args)}"))

    def keyset(self, template: str, values: tuple[Any, ...]) -> None:
        """A condition over several parameters (a keyset cursor): one `{}` per value."""
        first = self.next_param()
        self.args.extend(values)
        self.parts.append(template.format(*(f"${first + offset}" for offset in range(len(values)))))

    def sql(self) -> str:
        return " AND ".join(self.parts) if self.parts else "true"

    def next_param(self) -> int:
        return self._first + len(self.args) + 1


@dataclass(frozen=True, slots=True)
class DeadLetterQuery:
    reason: str | None = None
    organization_id: str | None = None
    code: str | None = None
    replay_state: str | None = None
    window: str = DEFAULT_WINDOW

    @classmethod
    def parse(cls, values: Mapping[str, str]) -> DeadLetterQuery:
        state = _text(values, "state")
        return cls(
            reason=_text(values, "reason"),
            organization_id=_text(values, "organization"),
            code=_text(values, "code"),
            replay_state=state if state in DLQ_STATES else None,
            window=window_of(values),
        )

    def where(self, now: datetime | None = None) -> Where:
        where = Where()
        where.add("failed_at >= {}", window_start(self.window, now))
        if self.reason:
            where.add("reason = {}", self.reason)
        if self.organization_id:
            where.add("organization_id = {}", self.organization_id)
        if self.code:
            where.add("codes @> ARRAY[{}]::text[]", self.code)
        if self.replay_state:
            where.add("replay_state = {}", self.replay_state)
        return where

    def params(self) -> dict[str, str]:
        return _params(asdict(self), organization_id="organization", replay_state="state")


@dataclass(frozen=True, slots=True)
class ParkedQuery:
    reason: str | None = None
    event_type: str | None = None

    @classmethod
    def parse(cls, values: Mapping[str, str]) -> ParkedQuery:
        return cls(reason=_text(values, "reason"), event_type=_text(values, "event_type"))

    def where(self) -> Where:
        where = Where()
        if self.reason:
            where.add("reason = {}", self.reason)
        if self.event_type:
            where.add("event_type = {}", self.event_type)
        return where

    def params(self) -> dict[str, str]:
        return _params(asdict(self))


@dataclass(frozen=True, slots=True)
class ProviderJobQuery:
    state: str | None = None
    connection: str | None = None
    error_code: str | None = None
    organization_id: str | None = None

    @classmethod
    def parse(cls, values: Mapping[str, str]) -> ProviderJobQuery:
        state = _text(values, "state")
        return cls(
            state=state if state in JOB_STATES else None,
            connection=_text(values, "connection"),
            error_code=_text(values, "error_code"),
            organization_id=_text(values, "organization"),
        )

    def where(self) -> Where:
        where = Where()
        state_sql = {
            "waiting": "status = 'pending'",
            "running": "status = 'running' AND lease_until >= now()",
            "stuck": "status = 'running' AND lease_until < now()",
        }
        if self.state in state_sql:
            where.parts.append(state_sql[self.state])
        elif self.state:
            where.add("status = {}", self.state)
        if self.connection:
            where.add("connection_code = {}", self.connection)
        if self.error_code:
            where.add("last_error->>'error_code' = {}", self.error_code)
        if self.organization_id:
            where.add("organization_id = {}", self.organization_id)
        return where

    def params(self) -> dict[str, str]:
        return _params(asdict(self), organization_id="organization")


@dataclass(frozen=True, slots=True)
class RejectionQuery:
    organization_id: str | None = None
    code: str | None = None
    path: str | None = None
    window: str = DEFAULT_WINDOW

    @classmethod
    def parse(cls, values: Mapping[str, str]) -> RejectionQuery:
        return cls(
            organization_id=_text(values, "organization"),
            code=_text(values, "code"),
            path=_text(values, "path"),
            window=window_of(values),
        )

    def where(self, now: datetime | None = None) -> Where:
        where = Where()
        where.add("minute >= {}", window_start(self.window, now))
        if self.organization_id:
            where.add("organization_id = {}", self.organization_id)
        if self.code:
            where.add("code = {}", self.code)
        if self.path:
            where.add("path = {}", self.path)
        return where

    def params(self) -> dict[str, str]:
        return _params(asdict(self), organization_id="organization")


def _params(fields: dict[str, Any], **renamed: str) -> dict[str, str]:
    """The filter as query-string parameters (for links and hidden form fields), empty ones left out."""
    return {renamed.get(name, name): str(value) for name, value in fields.items() if value}


def cursor_of(values: Mapping[str, str]) -> tuple[datetime, int] | None:
    """A keyset cursor `ISO-time~id`, as the list's "next page" link writes it; anything else is the first page."""
    raw = values.get("after", "")
    at, _, ident = raw.partition("~")
    try:
        return datetime.fromisoformat(at), int(ident)
    except ValueError:
        return None


def id_cursor_of(values: Mapping[str, str]) -> int | None:
    try:
        return int(values.get("after", ""))
    except ValueError:
        return None

"""Rendering: every template gets the signed-in identity, its CSRF token and the navigation; Jinja2 autoescapes, so
an organization id or an error text holding HTML shows as text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

import aiohttp_jinja2
import jinja2
from aiohttp import web

from worker.console.guard import SESSION

TEMPLATES: Final = Path(__file__).parent / "templates"
NAV: Final = (
    ("/", "Overview"),
    ("/dead-letters", "Dead letters"),
    ("/parked", "Parked events"),
    ("/provider-jobs", "Provider jobs"),
    ("/rejections", "Rejections"),
    ("/jobs", "Operator jobs"),
    ("/audit", "Audit"),
)


def setup(app: web.Application) -> None:
    environment = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # every template, whatever its name
        undefined=jinja2.StrictUndefined,
    )
    environment.filters.update(number=number, ago=ago, stamp=stamp, query=query)


def render(request: web.Request, template: str, context: dict[str, Any], status: int = 200) -> web.Response:
    session = request.get(SESSION)
    base = {
        "me": session.identity if session else None,
        "csrf": session.csrf if session else "",
        "nav": NAV,
        "path": request.path,
    }
    return aiohttp_jinja2.render_template(template, request, {**base, **context}, status=status)


def number(value: int | None, cap: int | None = None) -> str:
    if value is None:
        return "–"
    if cap is not None and value > cap:
        return f"{cap:,}+"
    return f"{value:,}"


def ago(value: datetime | timedelta | None) -> str:
    if value is None:
        return "–"
    delta = value if isinstance(value, timedelta) else datetime.now(UTC) - value
    seconds = int(delta.total_seconds())
    if seconds < 0:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def stamp(value: datetime | None) -> str:
    return "–" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def query(values: dict[str, Any], **changes: Any) -> str:
    """A query string of `values` with `changes` applied (None removes a key)."""
    merged = {**values, **changes}
    return urlencode({key: value for key, value in merged.items() if value not in (None, "")})

"""The read-only pages: overview, dead letters, parked events, provider jobs, rejections, audit, operator jobs."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from aiohttp import web

from worker.console import queries as q
from worker.console.chart import stacked
from worker.console.filters import (
    DLQ_STATES,
    JOB_STATES,
    WINDOWS,
    DeadLetterQuery,
    ParkedQuery,
    ProviderJobQuery,
    RejectionQuery,
    cursor_of,
    id_cursor_of,
    window_start,
)
from worker.console.render import render
from worker.console.state import LAG, POOL

OUTCOMES: Final = ("created", "updated", "rejected", "skipped", "duplicate", "dead_lettered")
OVERVIEW_HOURS: Final = 3
_CREDENTIALS: Final = frozenset({"unauthorized", "forbidden"})
_UNREACHABLE: Final = frozenset({"network_error", "timeout", "server_error"})


def _ident(request: web.Request) -> int:
    try:
        return int(request.match_info["id"])
    except ValueError:
        raise web.HTTPNotFound from None


async def overview(request: web.Request) -> web.Response:
    since = datetime.now(UTC) - timedelta(hours=OVERVIEW_HOURS)
    pool = request.app[POOL]
    answers, outbox, parked, jobs, workers, letters, rejected, running = await q.gather(
        pool,
        lambda c: q.answers_per_minute(c, since),
        q.outbox_backlog,
        q.parked_by_reason,
        q.provider_job_states,
        q.workers_seen,
        q.dead_letter_states,
        lambda c: q.rejections_since(c, datetime.now(UTC) - timedelta(hours=1)),
        q.open_operator_jobs,
    )
    monitor = request.app[LAG]
    chart = stacked(
        f"Commands answered per minute, last {OVERVIEW_HOURS} hours",
        q.series(answers, "outcome", since=since, step_seconds=60),
        fixed_order=OUTCOMES,
    )
    states: dict[str, int] = defaultdict(int)
    for row in jobs:
        states[row["state"]] += row["count"]
    context: dict[str, Any] = {
        "chart": chart,
        "lag": monitor.snapshot,
        "lag_age": monitor.age(),
        "outbox": outbox,
        "parked": parked,
        "parked_total": sum(row["count"] for row in parked),
        "job_states": [(state, states.get(state, 0)) for state in JOB_STATES],
        "connections": connection_health(jobs),
        "workers": workers,
        "letters": {row["replay_state"]: row["count"] for row in letters},
        "rejected_last_hour": rejected,
        "running": running,
    }
    return render(request, "overview.html", context)


def connection_health(rows: q.Rows) -> list[dict[str, Any]]:
    """Per connection, from its jobs of the last hour and those still in hand: credentials refused, rate limited,
    provider unreachable, working (a job went through), or idle."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        item = found.setdefault(
            (row["connection_code"], row["provider"]),
            {
                "connection": row["connection_code"],
                "provider": row["provider"],
                "waiting": 0,
                "failed": 0,
                "stuck": 0,
                "done": 0,
                "codes": set(),
            },
        )
        if row["state"] in ("waiting", "failed", "stuck", "done"):
            item[row["state"]] += row["count"]
        if row["error_code"] and row["state"] in ("waiting", "failed", "stuck"):
            item["codes"].add(row["error_code"])
    for item in found.values():
        codes = item["codes"]
        if codes & _CREDENTIALS:
            item["health"] = "refusing credentials"
        elif "rate_limited" in codes:
            item["health"] = "rate-limited"
        elif codes & _UNREACHABLE:
            item["health"] = "provider failing"
        elif item["done"]:
            item["health"] = "working"
        else:
            item["health"] = "idle"
        item["codes"] = sorted(codes)
    return sorted(found.values(), key=lambda item: item["connection"])


async def dead_letters(request: web.Request) -> web.Response:
    query = DeadLetterQuery.parse(request.query)
    after = cursor_of(request.query)
    pool = request.app[POOL]
    rows, total, buckets, reasons, codes, organizations = await q.gather(
        pool,
        lambda c: q.dead_letter_page(c, query, after),
        lambda c: q.dead_letter_count(c, query),
        lambda c: q.dead_letter_buckets(c, query),
        lambda c: q.dead_letter_top(c, query, "reason"),
        lambda c: q.dead_letter_top(c, query, "code"),
        lambda c: q.dead_letter_top(c, query, "organization_id"),
    )
    hourly = query.window in ("1h", "6h", "24h")
    chart = stacked(
        "Dead letters by reason",
        q.series(buckets, "reason", since=window_start(query.window), step_seconds=3600 if hourly else 86400),
        time_format="%H:%M" if hourly else "%m-%d",
    )
    last = rows[-1] if len(rows) == q.PAGE else None
    context = {
        "query": query,
        "params": query.params(),
        "rows": rows,
        "total": total,
        "cap": q.CAP,
        "chart": chart,
        "reasons": reasons,
        "codes": codes,
        "organizations": organizations,
        "states": DLQ_STATES,
        "windows": WINDOWS,
        "next_cursor": f"{last['failed_at'].isoformat()}~{last['id']}" if last else None,
    }
    return render(request, "dead_letters.html", context)


async def dead_letter(request: web.Request) -> web.Response:
    async with request.app[POOL].acquire() as conn:
        row = await q.dead_letter_one(conn, _ident(request))
    if row is None:
        raise web.HTTPNotFound(text="no such dead letter")
    return render(request, "dead_letter.html", {"row": row})


async def parked(request: web.Request) -> web.Response:
    query = ParkedQuery.parse(request.query)
    rows, total, groups = await q.gather(
        request.app[POOL],
        lambda c: q.parked_page(c, query, id_cursor_of(request.query)),
        lambda c: q.parked_count(c, query),
        q.parked_by_reason,
    )
    last = rows[-1] if len(rows) == q.PAGE else None
    context = {
        "query": query,
        "params": query.params(),
        "rows": rows,
        "total": total,
        "cap": q.CAP,
        "groups": groups,
        "next_cursor": last["id"] if last else None,
    }
    return render(request, "parked.html", context)


async def provider_jobs(request: web.Request) -> web.Response:
    query = ProviderJobQuery.parse(request.query)
    rows, total, errors, states = await q.gather(
        request.app[POOL],
        lambda c: q.provider_job_page(c, query, id_cursor_of(request.query)),
        lambda c: q.provider_job_count(c, query),
        lambda c: q.provider_job_errors(c, query),
        q.provider_job_states,
    )
    by_state: dict[str, int] = defaultdict(int)
    for row in states:
        by_state[row["state"]] += row["count"]
    last = rows[-1] if len(rows) == q.PAGE else None
    context = {
        "query": query,
        "params": query.params(),
        "rows": rows,
        "total": total,
        "cap": q.CAP,
        "errors": errors,
        "states": JOB_STATES,
        "by_state": by_state,
        "connections": connection_health(states),
        "next_cursor": last["id"] if last else None,
    }
    return render(request, "provider_jobs.html", context)


async def rejections(request: web.Request) -> web.Response:
    query = RejectionQuery.parse(request.query)
    top, buckets = await q.gather(
        request.app[POOL], lambda c: q.rejection_top(c, query), lambda c: q.rejection_buckets(c, query)
    )
    hourly = query.window in ("1h", "6h", "24h")
    chart = stacked(
        "Rejections by code",
        q.series(buckets, "code", since=window_start(query.window), step_seconds=3600 if hourly else 86400),
        time_format="%H:%M" if hourly else "%m-%d",
    )
    context = {"query": query, "params": query.params(), "rows": top, "chart": chart, "windows": WINDOWS}
    return render(request, "rejections.html", context)


async def audit_log(request: web.Request) -> web.Response:
    actor = request.query.get("actor", "").strip()[:200] or None
    async with request.app[POOL].acquire() as conn:
        rows = await q.audit_page(conn, cursor_of(request.query), actor)
    last = rows[-1] if len(rows) == q.PAGE else None
    context = {
        "rows": rows,
        "actor": actor or "",
        "next_cursor": f"{last['at'].isoformat()}~{last['id']}" if last else None,
    }
    return render(request, "audit.html", context)


async def operator_jobs(request: web.Request) -> web.Response:
    async with request.app[POOL].acquire() as conn:
        rows = await q.operator_jobs(conn)
    return render(request, "jobs.html", {"rows": rows})


async def operator_job(request: web.Request) -> web.Response:
    ident = _ident(request)
    job, items = await q.gather(
        request.app[POOL], lambda c: q.operator_job(c, ident), lambda c: q.operator_job_items(c, ident)
    )
    if job is None:
        raise web.HTTPNotFound(text="no such job")
    return render(request, "job.html", {"job": job, "items": items})


async def operator_job_progress(request: web.Request) -> web.Response:
    """The progress fragment that the job page polls (htmx) until the job is over."""
    async with request.app[POOL].acquire() as conn:
        job = await q.operator_job(conn, _ident(request))
    if job is None:
        raise web.HTTPNotFound(text="no such job")
    return render(request, "_progress.html", {"job": job})

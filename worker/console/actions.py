"""The console's actions: a dry run that counts, a confirmation that starts an operator job (worker.ops.jobs, the
same code as the command line), and cancelling a job. Operators only; every outcome is audited."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from aiohttp import web
from multidict import MultiDictProxy

from worker.console.audit import audit
from worker.console.filters import DeadLetterQuery, ParkedQuery, ProviderJobQuery, window_start
from worker.console.guard import require_operator
from worker.console.render import render
from worker.console.state import CONSOLE, POOL
from worker.ops import jobs

MAX_SELECTED: Final = 1_000


@dataclass(frozen=True, slots=True)
class Kind:
    title: str  # the button's verb phrase
    noun: str
    verb: str
    back: str


KINDS: Final[dict[str, Kind]] = {
    "dlq_replay": Kind("Replay", "dead letters", "replayed", "/dead-letters"),
    "parked_republish": Kind("Republish", "parked events", "republished", "/parked"),
    "provider_jobs_retry": Kind("Retry", "provider jobs", "retried", "/provider-jobs"),
    "provider_jobs_cancel": Kind("Cancel", "provider jobs", "cancelled", "/provider-jobs"),
}
# The page's states as `provider_jobs.status`; a stuck job is a running one past its lease (cancel ends it; the
# worker's runner claims it again by itself, so there is nothing to retry).
_PROVIDER_STATES: Final = {"waiting": "pending", "stuck": "running"}


def _kind(request: web.Request) -> tuple[jobs.JobKind, Kind]:
    name = request.match_info["kind"]
    if name not in KINDS:
        raise web.HTTPNotFound(text="no such action")
    return name, KINDS[name]  # type: ignore[return-value]  # checked against KINDS, the JobKind values


def _ids(form: MultiDictProxy[Any]) -> tuple[int, ...]:
    try:
        ids = tuple(sorted({int(value) for value in form.getall("id", [])}))
    except ValueError:
        raise web.HTTPBadRequest(text="ids must be numbers") from None
    if len(ids) > MAX_SELECTED:
        raise web.HTTPBadRequest(text=f"select at most {MAX_SELECTED} rows, or act on everything matching")
    return ids


def selection_of(kind: jobs.JobKind, form: MultiDictProxy[Any]) -> tuple[jobs.Selection, dict[str, str]]:
    """The selection a form names, and the filter parameters to carry into the confirmation."""
    values = {key: str(form.get(key, "")) for key in form}
    if form.get("scope") == "selected":
        ids = _ids(form)
        if not ids:
            raise web.HTTPBadRequest(text="select at least one row")
        return jobs.Ids(ids), {}
    if kind == "dlq_replay":
        query = DeadLetterQuery.parse(values)
        # The period ends at the dry run: the confirmation acts on the same span, not one shifted by its delay.
        failed_from = _time(values.get("failed_from")) or window_start(query.window)
        params = {**query.params(), "failed_from": failed_from.isoformat()}
        selection: jobs.Selection = jobs.DeadLetterFilter(
            reason=query.reason, organization_id=query.organization_id, code=query.code, failed_from=failed_from
        )
        return selection, params
    if kind == "parked_republish":
        parked = ParkedQuery.parse(values)
        return jobs.ParkedFilter(reason=parked.reason, event_type=parked.event_type), parked.params()
    provider = ProviderJobQuery.parse(values)
    state = _PROVIDER_STATES.get(provider.state or "", provider.state)
    selection = jobs.ProviderJobFilter(
        state=state,
        connection=provider.connection,
        error_code=provider.error_code,
        organization_id=provider.organization_id,
    )
    return selection, provider.params()


def _time(value: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


def _described(selection: jobs.Selection) -> dict[str, Any]:
    if isinstance(selection, jobs.Ids):
        return {"ids": len(selection.ids)}
    return jobs.filter_of(selection)


async def preview(request: web.Request) -> web.Response:
    kind, about = _kind(request)
    identity = await require_operator(request, f"{kind}.dry_run")
    form = await request.post()
    selection, params = selection_of(kind, form)
    count = await jobs.dry_run(request.app[POOL], kind, selection)
    await audit(request, identity, f"{kind}.dry_run", outcome="done", detail=_described(selection), count=count)
    context = {
        "kind": kind,
        "title": about.title,
        "noun": about.noun,
        "verb": about.verb,
        "back": about.back,
        "count": count,
        "scope": "selected" if isinstance(selection, jobs.Ids) else "matching",
        "ids": selection.ids if isinstance(selection, jobs.Ids) else (),
        "params": params,
    }
    return render(request, "confirm.html", context)


async def start(request: web.Request) -> web.Response:
    kind, _ = _kind(request)
    identity = await require_operator(request, kind)
    selection, _ = selection_of(kind, await request.post())
    pool = request.app[POOL]
    rate = request.app[CONSOLE].console_job_rate
    job_id = await jobs.start_job(pool, kind, selection, actor=identity.actor, rate_per_second=rate)
    status = await jobs.job_status(pool, job_id)
    total = status.total if status else None
    await audit(request, identity, kind, outcome="started", detail=_described(selection), count=total, job_id=job_id)
    raise web.HTTPSeeOther(f"/jobs/{job_id}")


async def cancel(request: web.Request) -> web.Response:
    identity = await require_operator(request, "job_cancel")
    try:
        job_id = int(request.match_info["id"])
    except ValueError:
        raise web.HTTPNotFound from None
    asked = await jobs.cancel_job(request.app[POOL], job_id, actor=identity.actor)
    await audit(
        request,
        identity,
        "job_cancel",
        outcome="done" if asked else "refused",
        job_id=job_id,
        detail={} if asked else {"why": "finished_or_missing"},
    )
    raise web.HTTPSeeOther(f"/jobs/{job_id}")

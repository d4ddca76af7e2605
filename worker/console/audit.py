"""Every action and every refusal leaves an audit row (who, when, what, filter, count, outcome): never a payload,
never a token. A failing audit write fails the action (an unaudited action must not happen)."""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web

from worker.console.auth import Identity
from worker.console.state import POOL
from worker.ops.jobs import record_audit


async def audit(
    request: web.Request,
    identity: Identity | None,
    action: str,
    *,
    outcome: Literal["done", "refused", "failed", "started"],
    detail: dict[str, Any] | None = None,
    count: int | None = None,
    job_id: int | None = None,
) -> None:
    await record_audit(
        request.app[POOL],
        actor=identity.actor if identity else "anonymous",
        role=identity.role.value if identity else "none",
        action=action,
        filter=detail or {},
        count=count,
        outcome=outcome,
        remote_addr=request.remote,
        job_id=job_id,
    )

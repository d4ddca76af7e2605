"""Outages waited out: `until_done` retries an operation through the failures `worker.outages` calls outages, with
capped exponential backoff and jitter, for as long as it takes, reporting each to an `OutageHook`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import stamina
import structlog

from worker.observability import safe_message
from worker.outages import Dependency, is_outage

log = structlog.get_logger("worker.service")  # where `dependency_retry` has always been logged
# stamina's default hooks log `repr(exc)` (an asyncpg DETAIL can quote a row); `until_done` logs retries itself.
stamina.instrumentation.set_on_retry_hooks([])
T = TypeVar("T")

OutageHook = Callable[[Dependency, bool], None]
"""Called with (dependency, available): False on each retry during an outage, True once the operation succeeded."""


def ignore_outage(dependency: Dependency, available: bool) -> None:
    return None


async def until_done(
    operation: Callable[[], Awaitable[T]],
    dependency: Dependency,
    on_outage: OutageHook = ignore_outage,
    *,
    outage: Callable[[BaseException], bool] = is_outage,
) -> T:
    """Retry `operation` through outages, with capped exponential backoff and jitter, for as long as it takes.

    Each failed attempt is logged here, through the redaction pipeline (type and a short message without data);
    stamina's own retry hooks, which log `repr(exc)`, are switched off above."""
    failed = False
    async for attempt in stamina.retry_context(on=outage, attempts=None, timeout=None, wait_max=5.0):
        with attempt:
            try:
                result = await operation()
            except Exception as exc:
                if outage(exc):
                    failed = True
                    log.warning(
                        "dependency_retry",
                        dependency=dependency,
                        attempt=attempt.num,
                        error_type=type(exc).__name__,
                        error=safe_message(exc),
                    )
                    on_outage(dependency, False)
                raise
            if failed:
                on_outage(dependency, True)
            return result
    raise AssertionError("unreachable: retry_context without limits only ends by returning or raising")

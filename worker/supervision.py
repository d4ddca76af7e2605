"""Supervision of the worker's background loops (relay, provider runner, maintenance, lag collector).

A loop that raises, or returns while the worker is not stopping, is restarted after a capped exponential backoff
(`BACKOFF_INITIAL` doubling to `BACKOFF_MAX`). A failure streak is logged once, when it starts (`loop_failed`), and
once when it ends (`loop_recovered`, after the restarted loop has run `STABLE_AFTER` seconds without failing), not
at every restart. Meanwhile:

* `down()` names the loops waiting to be restarted or dead: `/readyz` shows them;
* `failed()` names the loops dead (their supervision was cancelled from outside, or a `BaseException` such as
  `SystemExit` escaped) or failing for longer than `give_up_after` seconds: `/healthz` fails, so that the
  orchestrator restarts the process. A loop failing that long is still restarted: should no one restart the
  process (compose, a developer's shell), it recovers by itself once its cause is gone.

    loops = LoopSupervisor(give_up_after=300, on_change=metrics.background_loop)
    relay_task = loops.spawn("relay", relay.run)
    ...
    loops.stopping()          # SIGTERM: a loop that ends from now on has finished
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Literal

import structlog

log = structlog.get_logger("worker.supervision")

BACKOFF_INITIAL: Final = 1.0
BACKOFF_MAX: Final = 30.0
STABLE_AFTER: Final = 60.0

LoopState = Literal["running", "restarting", "stopped", "dead"]
StateHook = Callable[[str, bool, bool], None]
"""Called as `(name, up, restarted)` on every change: `up` while the loop runs, `restarted` once per restart."""


@dataclass(slots=True)
class LoopStatus:
    name: str
    state: LoopState = "running"
    restarts: int = 0
    failing_since: float | None = None
    """Monotonic time the current failure streak began; None while the loop is healthy."""
    last_error: str | None = None
    """Type name of the last failure (never its message: it may hold data)."""


class LoopSupervisor:
    def __init__(
        self,
        *,
        give_up_after: float = 300.0,
        backoff_initial: float = BACKOFF_INITIAL,
        backoff_max: float = BACKOFF_MAX,
        stable_after: float = STABLE_AFTER,
        on_change: StateHook | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._give_up_after = give_up_after
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._stable_after = stable_after
        self._on_change = on_change
        self._clock = clock
        self._stopping = False
        self._stop = asyncio.Event()  # wakes the loops waiting out a backoff
        self.loops: dict[str, LoopStatus] = {}

    def spawn(self, name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run `run()` under supervision in a task named `name`; awaiting the task waits for the loop to end
        after `stopping()` (its stop method called), cancelling it cancels the loop."""
        status = self.loops[name] = LoopStatus(name)
        self._changed(status, restarted=False)
        return asyncio.create_task(self._supervise(status, run), name=name)

    def stopping(self) -> None:
        """The worker is stopping: a loop that ends from now on is done, neither restarted nor reported."""
        self._stopping = True
        self._stop.set()

    def down(self) -> list[str]:
        return [status.name for status in self.loops.values() if status.state in ("restarting", "dead")]

    def failed(self) -> list[str]:
        now = self._clock()
        return [
            status.name
            for status in self.loops.values()
            if status.state == "dead"
            or (status.failing_since is not None and now - status.failing_since > self._give_up_after)
        ]

    async def _supervise(self, status: LoopStatus, run: Callable[[], Awaitable[None]]) -> None:
        backoff = self._backoff_initial
        loop = asyncio.get_running_loop()
        while True:
            # The end of a streak is noticed while the loop runs, not when it next fails.
            stable = loop.call_later(self._stable_after, self._recovered, status) if status.failing_since else None
            error: BaseException | None = None
            try:
                await run()
            except asyncio.CancelledError:
                self._ended(status, "cancelled")
                raise
            except Exception as exc:  # noqa: BLE001 - any failure of the loop is restarted
                error = exc
            except BaseException as exc:
                self._ended(status, type(exc).__name__)
                raise
            finally:
                if stable is not None:
                    stable.cancel()
            if self._stopping:
                status.state = "stopped"
                self._changed(status, restarted=False)
                return
            status.last_error = type(error).__name__ if error is not None else "returned"
            if status.failing_since is None:  # a new streak (the last one ended in `_recovered`)
                backoff = self._backoff_initial
                status.failing_since = self._clock()
                log.error(
                    "loop_failed",
                    loop=status.name,
                    error_type=status.last_error,
                    restart_in=backoff,
                    hint="restarted with backoff; logged again only when it recovers",
                    exc_info=error,
                )
            status.state = "restarting"
            status.restarts += 1
            self._changed(status, restarted=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=backoff)
            backoff = min(backoff * 2, self._backoff_max)
            if self._stopping:
                status.state = "stopped"
                self._changed(status, restarted=False)
                return
            status.state = "running"
            self._changed(status, restarted=False)

    def _recovered(self, status: LoopStatus) -> None:
        if status.failing_since is None or status.state != "running":
            return
        log.info(
            "loop_recovered",
            loop=status.name,
            restarts=status.restarts,
            failing_seconds=round(self._clock() - status.failing_since, 1),
        )
        status.failing_since = None

    def _ended(self, status: LoopStatus, how: str) -> None:
        if self._stopping:
            status.state = "stopped"
        else:
            status.state = "dead"
            status.last_error = how
            log.error("loop_dead", loop=status.name, reason=how, hint="/healthz fails: the process must restart")
        self._changed(status, restarted=False)

    def _changed(self, status: LoopStatus, *, restarted: bool) -> None:
        if self._on_change is not None:
            self._on_change(status.name, status.state == "running", restarted)

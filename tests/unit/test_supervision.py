"""Issue 18, case 10: every background loop supervised (`worker.supervision.LoopSupervisor`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pytest
from structlog.testing import capture_logs

from worker.observability import Metrics
from worker.supervision import LoopSupervisor

pytestmark = pytest.mark.timeout(20)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:  # noqa: ASYNC109
    """Poll a state that no event announces (the supervisor's own bookkeeping)."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def test_a_loop_that_raises_is_restarted_shown_down_meanwhile_and_logged_once_per_streak() -> None:
    metrics = Metrics(process_metrics=False)
    loops = LoopSupervisor(
        backoff_initial=0.2, backoff_max=0.4, stable_after=0.5, on_change=metrics.background_loop, give_up_after=60
    )
    runs = 0
    healthy = asyncio.Event()
    down_seen: list[list[str]] = []

    async def relay() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise RuntimeError(f"bug number {runs}")
        healthy.set()
        await asyncio.Event().wait()

    with capture_logs() as logs:
        task = loops.spawn("relay", relay)
        await _until(lambda: loops.down() == ["relay"])
        down_seen.append(loops.down())
        assert 'customer_worker_background_loop_up{loop="relay"} 0.0' in metrics.render().decode()
        await asyncio.wait_for(healthy.wait(), timeout=5)
        assert loops.down() == []
        assert loops.failed() == []
        await _until(lambda: any(entry["event"] == "loop_recovered" for entry in logs))
    text = metrics.render().decode()
    assert 'customer_worker_background_loop_restarts_total{loop="relay"} 3.0' in text
    assert 'customer_worker_background_loop_up{loop="relay"} 1.0' in text
    failed = [entry for entry in logs if entry["event"] == "loop_failed"]
    assert len(failed) == 1, "one line per failure streak, not one per restart"
    assert failed[0]["loop"] == "relay"
    assert failed[0]["error_type"] == "RuntimeError"
    recovered = [entry for entry in logs if entry["event"] == "loop_recovered"]
    assert recovered[0]["restarts"] == 3

    loops.stopping()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert loops.loops["relay"].state == "stopped"
    assert loops.failed() == []


async def test_a_new_streak_after_recovery_is_logged_again() -> None:
    loops = LoopSupervisor(backoff_initial=0.01, backoff_max=0.01, stable_after=0.1)
    runs = 0
    crash = asyncio.Event()

    async def maintenance() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise ValueError("first")
        await crash.wait()
        crash.clear()
        raise ValueError("later")

    with capture_logs() as logs:
        task = loops.spawn("maintenance", maintenance)
        await _until(lambda: any(entry["event"] == "loop_recovered" for entry in logs))
        crash.set()
        await _until(lambda: sum(entry["event"] == "loop_failed" for entry in logs) == 2)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_a_loop_failing_longer_than_the_limit_fails_liveness_but_is_still_restarted() -> None:
    clock = Clock()
    loops = LoopSupervisor(backoff_initial=0.01, backoff_max=0.01, stable_after=100, give_up_after=300, clock=clock)
    runs = 0

    async def collector() -> None:
        nonlocal runs
        runs += 1
        raise OSError("always")

    task = loops.spawn("lag_collector", collector)
    await _until(lambda: runs >= 3)
    assert loops.failed() == []
    clock.now += 301
    assert loops.failed() == ["lag_collector"]
    before = runs
    await _until(lambda: runs > before + 2)  # still restarted: it recovers by itself once the cause is gone
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_a_loop_cancelled_from_outside_is_dead_and_one_that_returns_is_restarted() -> None:
    loops = LoopSupervisor(backoff_initial=0.01, backoff_max=0.01)
    returns = 0

    async def quits() -> None:
        nonlocal returns
        returns += 1

    async def forever() -> None:
        await asyncio.Event().wait()

    quitting = loops.spawn("maintenance", quits)
    running = loops.spawn("provider_runner", forever)
    await _until(lambda: returns >= 3)
    with capture_logs() as logs:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    assert loops.loops["provider_runner"].state == "dead"
    assert loops.failed() == ["provider_runner"]
    assert "provider_runner" in loops.down()
    assert [entry["event"] for entry in logs] == ["loop_dead"]

    loops.stopping()  # from now on, a loop that returns has finished
    await asyncio.wait_for(quitting, timeout=5)
    assert loops.loops["maintenance"].state == "stopped"

"""`ShutdownBudget`: every stage of a stop ends at its mark of SHUTDOWN_TIMEOUT, counted from the first request."""

from __future__ import annotations

import asyncio

import pytest

from worker import shutdown
from worker.shutdown import ShutdownBudget

TOTAL = 10.0
SLACK = 0.05  # the loop's clock moves between two calls


async def test_each_stage_ends_at_its_mark_counted_from_the_stop_request() -> None:
    budget = ShutdownBudget(TOTAL)
    budget.start()
    assert budget.until(shutdown.CONSUMER) == pytest.approx(0.7 * TOTAL, abs=SLACK)
    assert budget.until(shutdown.DRAIN) == pytest.approx(0.8 * TOTAL, abs=SLACK)
    assert budget.until_close() == pytest.approx(TOTAL - shutdown.EXIT_MARGIN_SECONDS, abs=SLACK)
    assert budget.until_close(part=0.5) == pytest.approx((TOTAL - shutdown.EXIT_MARGIN_SECONDS) / 2, abs=SLACK)
    assert budget.share(shutdown.BATCH_IN_FLIGHT) == 0.5 * TOTAL
    assert budget.share(shutdown.PROVIDER_JOBS) == 0.3 * TOTAL
    loop = asyncio.get_running_loop()
    assert budget.deadline(shutdown.DRAIN) == pytest.approx(loop.time() + 0.8 * TOTAL, abs=SLACK)


async def test_a_second_request_does_not_extend_the_budget() -> None:
    budget = ShutdownBudget(0.4)
    budget.start()
    await asyncio.sleep(0.2)
    budget.start()
    assert budget.until(1.0, floor=0.0) == pytest.approx(0.2, abs=SLACK)


async def test_a_mark_already_passed_leaves_the_floor() -> None:
    budget = ShutdownBudget(0.2)
    budget.start()
    await asyncio.sleep(0.25)
    assert budget.until(shutdown.DRAIN) == 0.1
    assert budget.until_close() == 0.05


async def test_a_closing_step_past_its_time_is_abandoned() -> None:
    budget = ShutdownBudget(shutdown.EXIT_MARGIN_SECONDS + 0.2)
    never = asyncio.Event()
    assert not await budget.closing(never.wait())
    assert await budget.closing(asyncio.sleep(0))

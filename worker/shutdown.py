"""Every share of `SHUTDOWN_TIMEOUT`, in one place: what each part of a stop may spend, counted from the request.

    0 ─────────── 0.5 ──────── 0.7 ─────── 0.8 ───────────── 1.0 (× SHUTDOWN_TIMEOUT)
    │ batch in flight │ leave group │        │ close producer, │
    │ finishes, commits                     │ then the pool   │
    │ provider jobs in hand (0.3)           │                 │
    │ relay drains the outbox ──────────────┘     last 0.5 s: HTTP server, interpreter exit

A stage that ends early leaves its time to the next: every stage ends at its mark, not after its own share.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Final

BATCH_IN_FLIGHT: Final = 0.5
"""The batch being applied may finish and commit; past this it is abandoned (rolled back, read again later)."""
CONSUMER: Final = 0.7
"""The consumer's whole stop: the batch in flight, then leaving the group."""
PROVIDER_JOBS: Final = 0.3
"""Provider jobs in hand may finish; the runner gives the others back."""
DRAIN: Final = 0.8
"""The relay publishes what the outbox holds until then; the rest closes the producer and the pool."""
EXIT_MARGIN_SECONDS: Final = 0.5
"""Kept free at the very end for the HTTP server and the interpreter's own exit."""
KILL_MARGIN_SECONDS: Final = 5.0
"""With WORKER_PROCESSES: what a child still running after its own SHUTDOWN_TIMEOUT is given before it is killed."""


async def within(step: Awaitable[object], seconds: float) -> None:
    """Awaits a stopping step for at most `seconds`; past them it is cancelled and the stop goes on."""
    with contextlib.suppress(asyncio.CancelledError, TimeoutError):
        await asyncio.wait_for(step, timeout=seconds)


class ShutdownBudget:
    def __init__(self, total: float) -> None:
        self.total = total
        self._deadline: float | None = None

    def start(self) -> None:
        """The stop request: the clock starts once (a second signal does not extend it)."""
        if self._deadline is None:
            self._deadline = asyncio.get_running_loop().time() + self.total

    def share(self, fraction: float) -> float:
        """A stage's own length, for a part that applies it itself (the consumer's grace, the runner's drain)."""
        return self.total * fraction

    def until(self, fraction: float, *, floor: float = 0.1) -> float:
        """Seconds from now to the mark `fraction`, at least `floor`."""
        return max(self._mark(self.total * fraction), floor)

    def until_close(self, *, part: float = 1.0) -> float:
        """Seconds for a closing step: `part` of what is left before the exit margin."""
        return max(self._mark(self.total - EXIT_MARGIN_SECONDS) * part, 0.05)

    async def closing(self, step: Awaitable[object], *, part: float = 1.0) -> bool:
        """Awaits a closing step for `part` of what is left before the exit margin; False if it was abandoned."""
        try:
            await asyncio.wait_for(step, timeout=self.until_close(part=part))
        except TimeoutError:
            return False
        return True

    def deadline(self, fraction: float) -> float:
        """The loop time of the mark `fraction`."""
        self.start()
        assert self._deadline is not None
        return self._deadline - self.total + self.total * fraction

    def _mark(self, offset: float) -> float:
        self.start()
        assert self._deadline is not None
        loop = asyncio.get_running_loop()
        return self._deadline - self.total + offset - loop.time()

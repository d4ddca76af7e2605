"""What `/healthz` checks beyond "the process answers": an event loop that runs, and a consumer that progresses.

`EventLoopWatchdog`: a callback on the loop beats every `stall_after / 4` seconds (at most every second); a thread
of its own looks at the last beat. The HTTP server runs on the loop, so while the loop is blocked nothing answers
`/healthz` at all: a probe gets no answer within its `timeoutSeconds` and counts a failure. What the watchdog adds:
the stall is logged while it lasts (`event_loop_stalled`, with where the loop is stuck), counted, and reported by
`/healthz` (503, `event_loop`) for `stall_after` seconds after the loop ran again, so that a stall between two probes
is seen by the next one, and a loop blocked again and again never gets a clean answer in between.

`ConsumerProgress`: per assigned partition, the committed offset and how long records have waited past it (handed to
the worker, or arriving) without it moving (`customer_worker_consumer_stalled_seconds`, whatever the cause). For
liveness, an outage seen meanwhile (database or broker down, a retry: a readiness matter, a restart would not help)
restarts the count, even one shorter than the interval between two observations. A partition with nothing to read
never counts, nor one whose lag is only transaction markers or aborted records (never delivered, never committed).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final, NamedTuple

import structlog

log = structlog.get_logger("worker.liveness")

_STACK_FRAMES: Final = 6


def _where(thread_id: int | None) -> list[str]:
    """Innermost frames of the loop's thread, as `file:line function` (no source text, no values)."""
    frame = sys._current_frames().get(thread_id) if thread_id is not None else None
    if frame is None:
        return []
    summary = traceback.extract_stack(frame)[-_STACK_FRAMES:]
    return [f"{Path(entry.filename).name}:{entry.lineno} {entry.name}" for entry in summary]


class EventLoopWatchdog:
    def __init__(
        self,
        stall_after: float,
        *,
        on_stall: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stall_after = stall_after
        self._beat_every = min(stall_after / 4, 1.0)
        self._on_stall = on_stall
        self._clock = clock
        self._last_beat = clock()
        self._reported_beat: float | None = None  # the beat a stall was last reported after (one report per stall)
        self._stall_seen_at: float | None = None
        self._loop_thread: int | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """On the loop to watch."""
        loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._last_beat = self._clock()
        self._stop.clear()
        self._handle = loop.call_later(self._beat_every, self._beat, loop)
        self._thread = threading.Thread(target=self._watch, name="event-loop-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._handle is not None:
            self._handle.cancel()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None

    def failing(self) -> bool:
        now = self._clock()
        if now - self._last_beat > self.stall_after:
            return True
        seen = self._stall_seen_at
        return seen is not None and now - seen < self.stall_after

    def _beat(self, loop: asyncio.AbstractEventLoop) -> None:
        now = self._clock()
        blocked = now - self._last_beat
        if blocked > self.stall_after:
            # Seen here too: a stall the thread could not see (an extension holding the GIL) ends in this beat.
            self._stall_seen_at = now
            self._report(self._last_beat, blocked, where=[])
            log.warning("event_loop_resumed", blocked_seconds=round(blocked, 1))
        self._last_beat = now
        self._handle = loop.call_later(self._beat_every, self._beat, loop)

    def _watch(self) -> None:
        while not self._stop.wait(self._beat_every):
            beat = self._last_beat
            blocked = self._clock() - beat
            if blocked > self.stall_after:
                self._stall_seen_at = self._clock()
                self._report(beat, blocked, where=_where(self._loop_thread))

    def _report(self, beat: float, blocked: float, *, where: list[str]) -> None:
        if self._reported_beat == beat:
            return
        self._reported_beat = beat
        log.error(
            "event_loop_stalled",
            blocked_seconds=round(blocked, 1),
            where=where,
            hint="nothing runs on the event loop: /healthz fails until it has run again for LIVENESS_EVENT_LOOP_STALL",
        )
        if self._on_stall is not None:
            self._on_stall()


class Position(NamedTuple):
    committed: int
    end: int

    @property
    def lag(self) -> int:
        return max(self.end - self.committed, 0)


class _Waiting(NamedTuple):
    committed: int
    first_end: int
    end: int
    since: float
    """When records began to wait on this commit (`waiting_seconds`, the operator's view)."""
    unexplained_since: float
    """The same, restarted by every outage seen (`stalled`, the liveness check)."""


class ConsumerProgress:
    def __init__(self, stall_after: float, *, max_age: float, clock: Callable[[], float] = time.monotonic) -> None:
        """`max_age`: an observation older than this says nothing (the collector could not read the offsets)."""
        self.stall_after = stall_after
        self._max_age = max_age
        self._clock = clock
        self._waiting: dict[int, _Waiting] = {}
        self._delivered: dict[int, int] = {}
        self._observed_at: float | None = None
        self._outage_seen = False

    def delivered(self, offsets: Mapping[int, int]) -> None:
        """The last offset per partition of a batch handed to the worker (answered or not)."""
        for partition, offset in offsets.items():
            if offset > self._delivered.get(partition, -1):
                self._delivered[partition] = offset

    def outage(self) -> None:
        """A dependency was found down (a retry): kept until the next observation, however short the outage."""
        self._outage_seen = True

    def observe(self, positions: Mapping[int, Position], *, outage: bool) -> None:
        """The assigned partitions as just read; `outage`: a dependency is down now."""
        now = self._clock()
        explained = outage or self._outage_seen
        self._outage_seen = False
        self._delivered = {p: offset for p, offset in self._delivered.items() if p in positions}
        waiting: dict[int, _Waiting] = {}
        for partition, position in positions.items():
            if position.lag <= 0:
                continue
            before = self._waiting.get(partition)
            if before is None or before.committed != position.committed:
                waiting[partition] = _Waiting(position.committed, position.end, position.end, now, now)
            else:
                waiting[partition] = before._replace(
                    end=position.end, unexplained_since=now if explained else before.unexplained_since
                )
        self._waiting = waiting
        self._observed_at = now

    def waiting_seconds(self) -> float:
        """How long the longest-waiting partition has had records to read and no commit, whatever the cause (0 when
        none waits, or when the last observation is too old to say)."""
        return self._longest(lambda waiting: waiting.since)

    def stalled(self) -> bool:
        """Records waiting with no commit for `stall_after` seconds, and no outage seen meanwhile."""
        return self._longest(lambda waiting: waiting.unexplained_since) > self.stall_after

    def _longest(self, since: Callable[[_Waiting], float]) -> float:
        now = self._clock()
        if self._observed_at is None or now - self._observed_at > self._max_age:
            return 0.0
        return max((now - since(waiting) for p, waiting in self._waiting.items() if self._records_wait(p)), default=0.0)

    def _records_wait(self, partition: int) -> bool:
        """Lag alone is not enough: transaction markers and aborted records count in the end offset, are never
        delivered, and so are never committed past. Records wait when one at or past the committed offset was
        handed to the worker (a batch in hand, or read again and again), or when records keep arriving and none is
        handed over (the consumer does not fetch)."""
        waiting = self._waiting[partition]
        return self._delivered.get(partition, -1) >= waiting.committed or waiting.end > waiting.first_end

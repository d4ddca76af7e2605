"""Crash points for the fault tests: `CUSTOMER_WORKER_CRASH_AT=<point>:<n>` kills the process with SIGKILL the
n-th time execution passes `<point>`. Unset (always, outside those tests) it costs one dict lookup per batch."""

from __future__ import annotations

import os
import signal
from typing import Final, Literal

CrashPoint = Literal["after_db_commit", "after_relay_publish"]

_SETTING: Final = os.environ.get("CUSTOMER_WORKER_CRASH_AT", "")
_POINT, _, _AFTER = _SETTING.partition(":")
_remaining = int(_AFTER or "1") if _POINT else 0


def crash_point(point: CrashPoint) -> None:
    global _remaining  # noqa: PLW0603 - one process-wide counter, by design
    if point != _POINT:
        return
    _remaining -= 1
    if _remaining <= 0:
        os.kill(os.getpid(), signal.SIGKILL)

"""Process-wide runtime settings of the worker."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import sys
import time
from pathlib import Path
from typing import Final

_YOUNG_THRESHOLD: Final = 50_000
_M_ARENA_MAX: Final = -8
_ARENAS: Final = 2
_M_MMAP_THRESHOLD: Final = -3
_MMAP_THRESHOLD: Final = 1024 * 1024
_IMPORTED_AT: Final = time.monotonic()
_START_TIME_FIELD: Final = 19  # of /proc/self/stat, counted after the command name: start time in clock ticks


def tune_garbage_collector() -> None:
    """The hot path allocates many short-lived, acyclic objects (dicts, tuples, strings) that reference counting
    frees: the cyclic collector's frequent young-generation passes over them are pure overhead (about a sixth of
    the drain rate, measured with `customer-worker bench`). Objects alive at start-up (modules, settings) are moved
    out of its sight, and young collections run every 50,000 allocations instead of 700."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(_YOUNG_THRESHOLD, 20, 50)


def tune_malloc() -> None:
    """Keeps glibc's heap near one batch's worth (the peak RSS of a drain: about 195 MB with two arenas alone, 182 MB
    with the fixed mmap threshold as well, at the same drain rate, measured with `customer-worker bench`). glibc
    gives each thread that allocates its own malloc arena (up to 8 per core), and an arena keeps the pages it once
    used: the decoding thread, the provider SDKs' threads and the loop each hold a batch's worth. Two arenas
    suffice; the threads rarely allocate at the same moment. Called before any thread starts; a no-op on other C
    libraries."""
    if sys.platform != "linux":
        return
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(_M_ARENA_MAX, _ARENAS)
        # glibc raises its mmap threshold each time an mmapped block is freed (up to 32 MiB), after which a batch's
        # large buffers (the rows' JSON, asyncpg's arrays, fetched record sets) come from the heap and keep their
        # pages. A fixed threshold keeps blocks of 1 MiB and more mmapped, given back when freed.
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    except (OSError, AttributeError):
        return


def seconds_since_process_start() -> float:
    """Seconds since this process started (interpreter start-up and imports included): `/proc/self/stat` gives
    the start in clock ticks since boot, the monotonic clock's origin on Linux. Elsewhere, since this module's
    import."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[_START_TIME_FIELD]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        started = _IMPORTED_AT
    return max(time.monotonic() - started, 0.0)

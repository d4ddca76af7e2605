"""Process-wide runtime settings of the worker."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
from typing import Final

_YOUNG_THRESHOLD: Final = 50_000
_M_ARENA_MAX: Final = -8
_ARENAS: Final = 2


def tune_garbage_collector() -> None:
    """The hot path allocates many short-lived, acyclic objects (dicts, tuples, strings) that reference counting
    frees: the cyclic collector's frequent young-generation passes over them are pure overhead (about a sixth of
    the drain rate, measured with `customer-worker bench`). Objects alive at start-up (modules, settings) are moved
    out of its sight, and young collections run every 50,000 allocations instead of 700."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(_YOUNG_THRESHOLD, 20, 50)


def limit_malloc_arenas() -> None:
    """glibc gives each thread that allocates its own malloc arena (up to 8 per core), and an arena keeps the pages
    it once used: the decoding thread, the provider SDKs' threads and the loop each hold a batch's worth. Two arenas
    keep the peak RSS of a drain near one batch's worth; the threads rarely allocate at the same moment. Called
    before any thread starts; a no-op on other C libraries."""
    if sys.platform != "linux":
        return
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        ctypes.CDLL(name).mallopt(_M_ARENA_MAX, _ARENAS)
    except (OSError, AttributeError):
        return

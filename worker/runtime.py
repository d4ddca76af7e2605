"""Process-wide runtime settings of the worker."""

from __future__ import annotations

import gc
from typing import Final

_YOUNG_THRESHOLD: Final = 50_000


def tune_garbage_collector() -> None:
    """The hot path allocates many short-lived, acyclic objects (dicts, tuples, strings) that reference counting
    frees: the cyclic collector's frequent young-generation passes over them are pure overhead (about a sixth of
    the drain rate, measured with `customer-worker bench`). Objects alive at start-up (modules, settings) are moved
    out of its sight, and young collections run every 50,000 allocations instead of 700."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(_YOUNG_THRESHOLD, 20, 50)

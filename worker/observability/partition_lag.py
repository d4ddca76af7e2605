"""`customer_worker_consumer_lag{partition}`: the lag of the partitions a consumer holds now, and only those.

A `Gauge` would not do in multi-process mode (`WORKER_PROCESSES` > 1): prometheus-client keeps each process's values
in files of `PROMETHEUS_MULTIPROC_DIR` that `remove()` does not touch, so a revoked partition's lag stayed frozen on
the replica's endpoint and inflated the lag alert. Instead:

* `PartitionLag`, a collector of a process's own registry, holds the lags of its assignment (single-process mode
  renders it directly);
* in multi-process mode it also writes them, at every change, to a file of its own in that folder
  (`consumer_lag_<pid>.json`, replaced atomically; not a `*.db` file, which the multiprocess collector would read);
* `LiveProcessesLag`, on the replica's endpoint, reads the files of the processes that run now, with a `pid` label
  as prometheus-client gives every multi-process gauge. A process that died leaves a file nobody reads.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Final

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

_DOCUMENTATION: Final = "Records behind the partition's end offset (from end offsets; wrong on Tansu)."
_MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"


def lag_file(folder: str | Path, pid: int) -> Path:
    return Path(folder) / f"consumer_lag_{pid}.json"


def read_lag_file(path: Path) -> dict[int, int]:
    """The lags a process last wrote; empty when it has not written any (or the file is being replaced)."""
    try:
        loaded = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return {int(partition): int(lag) for partition, lag in loaded.items()}


def _checked(partition: int) -> int:
    if isinstance(partition, bool) or not isinstance(partition, int) or partition < 0:
        raise ValueError("partition must be a non-negative integer")
    return partition


class PartitionLag(Collector):
    def __init__(self, name: str, *, folder: str | None = None) -> None:
        self._name = name
        self._lags: dict[int, int] = {}
        folder = folder if folder is not None else os.environ.get(_MULTIPROC_ENV)
        self._file = lag_file(folder, os.getpid()) if folder else None

    def set(self, partition: int, lag: int) -> None:
        self._lags[_checked(partition)] = max(lag, 0)
        self._write()

    def replace(self, lags: Mapping[int, int]) -> None:
        self._lags = {_checked(partition): max(lag, 0) for partition, lag in lags.items()}
        self._write()

    def forget(self, partition: int) -> None:
        if self._lags.pop(partition, None) is not None:
            self._write()

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self._name, _DOCUMENTATION, labels=["partition"])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self._name, _DOCUMENTATION, labels=["partition"])
        for partition, lag in sorted(self._lags.items()):
            family.add_metric([str(partition)], lag)
        yield family

    def _write(self) -> None:
        if self._file is None:
            return
        temporary = self._file.with_suffix(".tmp")
        # A metric never stops the worker: a folder gone or full only leaves the replica's lag out of date.
        with contextlib.suppress(OSError):
            temporary.write_text(json.dumps({str(p): lag for p, lag in self._lags.items()}))
            temporary.replace(self._file)


class LiveProcessesLag(Collector):
    """The replica's `consumer_lag`: the lag files of the processes `pids()` names (those running now)."""

    def __init__(self, name: str, folder: str, pids: Callable[[], Collection[int]]) -> None:
        self._name = name
        self._folder = folder
        self._pids = pids

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self._name, _DOCUMENTATION, labels=["partition", "pid"])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self._name, _DOCUMENTATION, labels=["partition", "pid"])
        for pid in sorted(self._pids()):
            for partition, lag in sorted(read_lag_file(lag_file(self._folder, pid)).items()):
                family.add_metric([str(partition), str(pid)], lag)
        yield family

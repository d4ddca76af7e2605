"""A worker running in-process on fresh topics and a fresh database, and the environment the CLI needs to reach
it: shared by the CLI tests (dlq replay, publish, events tail, metrics)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import AsyncIterator

from tests.integration.helpers import environ_without, run_cli
from tests.integration.worker_stack import CLEARED_SETTINGS, RunningWorker, running_worker

PARTITIONS = 3


class Stack(RunningWorker):
    def cli_env(self, **extra: str) -> dict[str, str]:
        """The process environment a user would have after `eval "$(customer-worker dev --print-env)"`."""
        base = environ_without({*self.env, *CLEARED_SETTINGS})
        client = {k: v for k, v in self.env.items() if k not in ("KAFKA_GROUP_ID", "KAFKA_SESSION_TIMEOUT_MS")}
        return {**base, **client, **extra}

    def cli(self, *args: str, stdin: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`customer-worker ARGS` as a subprocess (stdout, stderr captured as text)."""
        return run_cli(*args, env=self.cli_env(), stdin=stdin.decode() if stdin is not None else None, timeout=timeout)


@contextlib.asynccontextmanager
async def running_stack(pg_dsn: str, bootstrap: str, name: str) -> AsyncIterator[Stack]:
    async with running_worker(pg_dsn, bootstrap, name, kind=Stack, partitions=PARTITIONS) as stack:
        yield stack

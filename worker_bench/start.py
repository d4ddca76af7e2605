"""Start-up figures of `customer-worker bench`: a cold start, and a restart after a crash, each with where its time
went.

* Cold start: a fresh worker in a fresh group (no earlier member to wait for), a command published before the spawn;
  seconds from spawn to `/readyz` and to the command's event at a consumer.
* Restart after kill -9: a worker is killed in a group it served; a new worker of the same group is spawned at once
  and a command published. Until the broker expires the dead member (KAFKA_SESSION_TIMEOUT_MS after its last
  heartbeat) the group cannot settle without it: that is the figure an operator tunes.

The breakdown comes from the worker's own `worker_starting` and `worker_started` log lines: process start-up and
imports, connecting to both dependencies, the group join (the broker holds it), then the first batch.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import orjson
from aiokafka import AIOKafkaConsumer

from worker_bench.load import build_commands, producer

# The measuring consumer's own fetch wait. On Tansu, which answers a fetch by polling its storage, the wait is what a
# hop costs (one produce-to-fetch hop at 1,000/s: p50 2.7 ms and p99 9 ms at 10 ms; p50 2.1 ms and p99 8 ms at 5 ms,
# measured on this machine): the client that times the events should add as little of its own as it can.
PROBE_FETCH_WAIT_MS: Final = 5


def event_probe(bootstrap: str, topic: str) -> AIOKafkaConsumer:
    """The consumer that times arriving events: no group, from the start of the topic, the shortest fetch wait."""
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=PROBE_FETCH_WAIT_MS,
    )


@dataclass(frozen=True, slots=True)
class StartFigures:
    """Seconds from the spawn: to `/readyz` answering 200 and to the first event; and the breakdown."""

    ready: float
    first_event: float
    process: float  # interpreter start-up and imports, until the event loop runs
    prepare: float  # PostgreSQL (connect, migrations check) and Kafka (credentials, producer) side by side
    join: float  # the consumer group join, held by the broker

    @property
    def first_batch(self) -> float:
        """What is left: the first fetch, the batch's transaction and the relay's publish to the event's arrival."""
        return self.first_event - self.process - self.prepare - self.join

    def describe(self) -> str:
        return (
            f"first event after {self.first_event:.2f} s (ready after {self.ready:.2f} s): process start and imports"
            f" {self.process:.2f} s, dependencies {self.prepare:.2f} s, group join {self.join:.2f} s,"
            f" first batch {self.first_batch:.2f} s"
        )


def spawn(module: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    log = log_path.open("wb")
    return subprocess.Popen([sys.executable, "-m", *module], env={**os.environ, **env}, stdout=log, stderr=log)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


async def wait_ready(
    port: int, process: subprocess.Popen[bytes], wait_seconds: float = 60.0, poll: float = 0.2
) -> float:
    """The monotonic time at which the worker answered ready."""
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"worker exited with {process.returncode}")
        if await asyncio.to_thread(_ready, port):
            return time.monotonic()
        await asyncio.sleep(poll)
    raise TimeoutError("worker not ready")


def start_breakdown(log_path: Path) -> tuple[float, float, float]:
    """(process, prepare, join) seconds from the worker's JSON log lines; NaN where a line is missing."""
    nan = float("nan")
    process = prepare = join = nan
    for line in log_path.read_bytes().splitlines():
        if not line.startswith(b"{"):
            continue
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if entry.get("event") == "worker_starting":
            process = float(entry.get("seconds_since_process_start", nan))
        elif entry.get("event") == "worker_started":
            prepare, join = entry.get("prepare_ms", nan) / 1000, entry.get("join_ms", nan) / 1000
    return process, prepare, join


async def _first_event(
    bootstrap: str,
    topics: dict[str, str],
    start: Callable[[], Awaitable[subprocess.Popen[bytes]]],
    port: int,
    seed: int,
) -> tuple[subprocess.Popen[bytes], float, float, float]:
    """Publishes one command, then calls `start`; (worker, started, ready, first event) on the monotonic clock."""
    # A message id of its own per run (the topics are fresh, the database is shared): a repeated one is a duplicate,
    # answered without an event.
    key, value = build_commands(1, seed=seed, providers=False, prefix=f"start{seed}-{topics['commands']}")[0]
    message_id = orjson.loads(value)["message_id"]
    consumer = event_probe(bootstrap, topics["events"])
    await consumer.start()
    try:
        async with producer(bootstrap) as kafka:
            await kafka.send_and_wait(topics["commands"], value=value, key=key)
        started = time.monotonic()
        worker = await start()
        ready = asyncio.create_task(wait_ready(port, worker, poll=0.05))
        while True:
            batches = await consumer.getmany(timeout_ms=50)
            arrived = time.monotonic()
            if any(orjson.loads(r.value).get("message_id") == message_id for rs in batches.values() for r in rs):
                return worker, started, await ready, arrived
            if arrived - started > 60:
                ready.cancel()
                stop(worker)
                raise TimeoutError("no event within 60 s of start")
    finally:
        await consumer.stop()


async def measure_cold_start(
    bootstrap: str, topics: dict[str, str], env: dict[str, str], log_path: Path
) -> StartFigures:
    """A fresh worker in a fresh group (`env` names one no worker used before)."""
    env = {**env, "LOG_LEVEL": "INFO", "LOG_FORMAT": "json"}

    async def start() -> subprocess.Popen[bytes]:
        return spawn(["worker", "run"], env, log_path)

    worker, started, ready, first = await _first_event(bootstrap, topics, start, int(env["HTTP_PORT"]), seed=7)
    stop(worker)
    return StartFigures(ready - started, first - started, *start_breakdown(log_path))


async def measure_restart_after_crash(
    bootstrap: str, topics: dict[str, str], env: dict[str, str], logs: Path
) -> StartFigures:
    """kill -9 of a worker that holds the group's partitions, then a new worker of the same group: seconds from the
    kill (and spawn) to ready and to the event of a command published just before."""
    env = {**env, "LOG_LEVEL": "INFO", "LOG_FORMAT": "json"}
    first = spawn(["worker", "run"], env, logs / "worker-crashed.log")
    try:
        await wait_ready(int(env["HTTP_PORT"]), first, poll=0.05)
    except BaseException:
        stop(first)
        raise
    restart_log = logs / "worker-restarted.log"

    async def crash_then_start() -> subprocess.Popen[bytes]:
        first.kill()  # SIGKILL: no LeaveGroup, no offsets committed; the broker must expire the member
        await asyncio.to_thread(first.wait)
        return spawn(["worker", "run"], env, restart_log)

    worker, started, ready, arrived = await _first_event(
        bootstrap, topics, crash_then_start, int(env["HTTP_PORT"]), seed=8
    )
    stop(worker)
    return StartFigures(ready - started, arrived - started, *start_breakdown(restart_log))

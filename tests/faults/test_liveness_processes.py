"""Issue 18, case 9, in multi-process mode (`WORKER_PROCESSES=2`), on real processes:

* a supervisor killed with SIGKILL leaves its metrics folder behind; the next one removes it at start;
* the lag gauges of partitions revoked from a child vanish from the replica's `/metrics`;
* a stopped child (SIGSTOP) fails the replica's `/healthz` until it runs again; a killed child fails it at once.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from tests.harness.processes import Launcher, WorkerProcess, worker_env

PARTITIONS = 6


def _child_pids(replica: WorkerProcess) -> list[int]:
    started = [record for record in replica.log_records() if record.get("event") == "processes_started"]
    assert started, replica.tail()
    return [int(pid) for pid in started[-1]["pids"]]


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


async def _lag_partitions(replica: WorkerProcess) -> set[int]:
    answer = await replica.http_get("/metrics")
    assert answer is not None and answer[0] == 200
    partitions = set()
    for line in answer[1].splitlines():
        if line.startswith("customer_worker_consumer_lag{"):
            labels = line.partition("{")[2].partition("}")[0]
            fields = dict(item.split("=", 1) for item in labels.split(","))
            partitions.add(int(fields["partition"].strip('"')))
    return partitions


async def _wait_for(condition: Callable[[], bool | Awaitable[bool]], what: str, timeout: float) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while True:
        met = condition()
        if inspect.isawaitable(met):
            met = await met
        if met:
            return
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.1)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("unique_topics", [PARTITIONS], indirect=True)
async def test_processes_liveness_lag_of_revoked_partitions_and_stale_metrics_folders(
    kafka_bootstrap: str, unique_topics: dict[str, str], migrated_database: str, launcher: Launcher, tmp_path: Path
) -> None:
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    group_id = f"faults-{uuid.uuid4().hex[:8]}"
    env = worker_env(
        database_url=migrated_database,
        bootstrap=kafka_bootstrap,
        topics=unique_topics,
        group_id=group_id,
        WORKER_PROCESSES="2",
        LIVENESS_EVENT_LOOP_STALL="2",
        CONSUMER_LAG_INTERVAL="0.5",
        TMPDIR=str(temporary),
    )

    # A supervisor killed with SIGKILL: its children stop (PR_SET_PDEATHSIG), its metrics folder stays behind.
    first = launcher.start(env, name="first")
    await first.wait_http("/readyz", 200, timeout=90)
    (left_behind,) = temporary.glob("customer-worker-metrics-*")
    first_children = _child_pids(first)
    first.kill()
    await _wait_for(lambda: not any(map(_running, first_children)), "first children gone", 30)
    assert left_behind.exists()

    replica = launcher.start(env, name="replica")
    await replica.wait_http("/readyz", 200, timeout=90)
    assert not left_behind.exists(), "the folder of the killed supervisor is removed at start"
    assert len(list(temporary.glob("customer-worker-metrics-*"))) == 1
    assert any(record.get("event") == "stale_metrics_folder_removed" for record in replica.log_records())

    # Another member joins the group: the partitions it takes are revoked from the children, lag series and all.
    everything = set(range(PARTITIONS))

    async def every_partition() -> bool:
        return await _lag_partitions(replica) == everything

    await _wait_for(every_partition, "lag of every partition", 30)
    intruder = AIOKafkaConsumer(
        unique_topics["commands"], bootstrap_servers=kafka_bootstrap, group_id=group_id, enable_auto_commit=False,
        session_timeout_ms=6000, heartbeat_interval_ms=1000,
    )  # fmt: skip
    await intruder.start()
    try:
        taken: set[int] = set()

        async def rebalanced() -> bool:
            nonlocal taken
            await intruder.getmany(timeout_ms=100)
            taken = {tp.partition for tp in intruder.assignment()}
            return bool(taken) and await _lag_partitions(replica) == everything - taken

        await _wait_for(rebalanced, "revoked partitions' lag gone from /metrics", 60)
    finally:
        await intruder.stop()
    assert await replica.http_status("/healthz") == 200

    # A stopped child: the replica is not alive until it runs again.
    children = _child_pids(replica)
    os.kill(children[1], signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        await replica.wait_http("/healthz", 503, timeout=20)
        answer = await replica.http_get("/healthz")
        assert answer is not None and '"process_1"' in answer[1], answer
        # Counted from the child's last answer (polled twice a second), not from the signal.
        assert time.monotonic() - stopped >= 1.4, "not before LIVENESS_EVENT_LOOP_STALL"
    finally:
        os.kill(children[1], signal.SIGCONT)
    await replica.wait_http("/healthz", 200, timeout=30)

    # A child killed: /healthz fails at once, until the replica exits for the orchestrator to restart it.
    os.kill(children[0], signal.SIGKILL)
    await replica.wait_http("/healthz", 503, timeout=5)
    answer = await replica.http_get("/healthz")
    assert answer is not None and '"process_0"' in answer[1], answer
    assert await replica.wait_exit(30) != 0

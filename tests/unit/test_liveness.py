"""Issue 18, case 9: the parts of liveness that need no server: the event-loop watchdog, the consumer progress
check, the per-process lag files of multi-process mode and the removal of stale metrics folders."""

from __future__ import annotations

import asyncio
import fcntl
import os
import tempfile
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from structlog.testing import capture_logs

from worker.observability import ConsumerProgress, EventLoopWatchdog, Health, Metrics, Position
from worker.observability.partition_lag import LiveProcessesLag, PartitionLag, lag_file
from worker.processes import claim_metrics_folder

pytestmark = pytest.mark.timeout(20)


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def _block_the_loop_for(seconds: float) -> None:
    time.sleep(seconds)


async def test_the_watchdog_sees_a_blocked_loop_says_where_and_fails_until_the_loop_ran_again() -> None:
    stalls: list[int] = []
    watchdog = EventLoopWatchdog(0.3, on_stall=lambda: stalls.append(1))
    watchdog.start()
    try:
        await asyncio.sleep(0.5)
        assert not watchdog.failing()
        with capture_logs() as logs:
            _block_the_loop_for(1.0)
            assert watchdog.failing()  # measured when the loop runs again, before any beat
            await asyncio.sleep(0.05)
            assert watchdog.failing(), "still failing right after the stall: the next probe must see it"
        stalled = [entry for entry in logs if entry["event"] == "event_loop_stalled"]
        assert len(stalled) == 1, logs
        assert stalled[0]["blocked_seconds"] >= 0.3
        assert any("_block_the_loop_for" in frame for frame in stalled[0]["where"]), stalled[0]["where"]
        assert stalls == [1]
        await asyncio.sleep(0.5)
        assert not watchdog.failing()
    finally:
        watchdog.stop()


def test_consumer_progress_counts_waiting_records_without_commits_outside_outages() -> None:
    clock = Clock()
    progress = ConsumerProgress(10, max_age=5, clock=clock)
    idle, backlog = Position(100, 100), Position(40, 43)
    progress.delivered({1: 40})  # the record at the committed offset was handed over: a batch in hand
    progress.observe({0: idle, 1: backlog}, outage=False)
    for _ in range(3):
        clock.now += 4
        progress.observe({0: idle, 1: backlog}, outage=False)
    assert progress.waiting_seconds() == 12
    assert progress.stalled()

    clock.now += 1
    progress.delivered({1: 41})
    progress.observe({0: idle, 1: Position(41, 43)}, outage=False)  # a commit: progress
    assert not progress.stalled()
    assert progress.waiting_seconds() == 0
    clock.now += 11
    progress.observe({0: idle, 1: Position(41, 43)}, outage=True)  # the database is down
    assert not progress.stalled()
    assert progress.waiting_seconds() == 11, "the operator's gauge counts whatever the cause"
    clock.now += 4
    progress.observe({0: idle, 1: Position(41, 43)}, outage=False)
    assert not progress.stalled(), "outage time does not count"
    clock.now += 11
    progress.observe({0: idle, 1: Position(41, 43)}, outage=False)
    assert progress.stalled()
    progress.outage()  # a retry between two observations, over before the next one
    clock.now += 1
    progress.observe({0: idle, 1: Position(41, 43)}, outage=False)
    assert not progress.stalled(), "an outage shorter than the interval still explains the wait"
    clock.now += 11
    progress.observe({0: idle, 1: Position(41, 43)}, outage=False)
    assert progress.stalled()
    clock.now += 6
    assert not progress.stalled(), "a reading older than max_age says nothing"
    assert progress.waiting_seconds() == 0
    progress.observe({0: idle}, outage=False)  # partition 1 revoked
    assert progress.waiting_seconds() == 0


def test_lag_of_transaction_markers_alone_is_no_stall_but_a_consumer_that_does_not_fetch_is() -> None:
    clock = Clock()
    progress = ConsumerProgress(10, max_age=100, clock=clock)
    # Everything delivered was committed (offset 99 answered, committed 100); the end is one past: a commit marker.
    progress.delivered({0: 99})
    for _ in range(5):
        progress.observe({0: Position(100, 101)}, outage=False)
        clock.now += 5
    assert progress.waiting_seconds() == 0
    assert not progress.stalled()
    # New records arrive and none is handed over: the consumer does not fetch.
    progress.observe({0: Position(100, 140)}, outage=False)
    clock.now += 11
    progress.observe({0: Position(100, 150)}, outage=False)
    assert progress.stalled()


def test_health_fails_liveness_on_a_stalled_consumer_only_without_a_known_outage() -> None:
    clock = Clock()
    progress = ConsumerProgress(1, max_age=100, clock=clock)
    health = Health(database_ok=True, broker_ok=True, partitions_assigned=True, consumer=progress)
    progress.delivered({0: 0})
    progress.observe({0: Position(0, 5)}, outage=False)
    clock.now += 2
    progress.observe({0: Position(0, 5)}, outage=False)
    assert health.not_live() == ["consumer"]
    assert health.ready, "a stall is not a readiness matter"
    health.database_ok = False
    assert health.not_live() == []


def test_lag_of_revoked_partitions_vanishes_in_multiprocess_files(tmp_path: Path) -> None:
    mine = PartitionLag("customer_worker_consumer_lag", folder=str(tmp_path))
    mine.replace({0: 5, 1: 7, 2: 0})
    mine.forget(1)
    gone = os.getpid() + 100_000  # a process that died: its file stays, nobody reads it
    lag_file(tmp_path, gone).write_text('{"3": 11}')
    registry = CollectorRegistry()
    registry.register(LiveProcessesLag("customer_worker_consumer_lag", str(tmp_path), lambda: [os.getpid()]))
    text = generate_latest(registry).decode()
    pid = os.getpid()
    assert f'customer_worker_consumer_lag{{partition="0",pid="{pid}"}} 5.0' in text
    assert f'customer_worker_consumer_lag{{partition="2",pid="{pid}"}} 0.0' in text
    assert 'partition="1"' not in text
    assert 'partition="3"' not in text
    single = Metrics(process_metrics=False)
    single.set_consumer_lags({4: 2, 5: 1})
    single.forget_partition(5)
    rendered = single.render().decode()
    assert 'customer_worker_consumer_lag{partition="4"} 2.0' in rendered
    assert 'partition="5"' not in rendered


def test_claim_metrics_folder_removes_folders_nobody_holds_and_keeps_held_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stale = tmp_path / "customer-worker-metrics-stale"
    stale.mkdir()
    (stale / "owner.lock").touch()
    (stale / "counter_123.db").write_bytes(b"x")
    old_format = tmp_path / "customer-worker-metrics-abc123"  # a version that took no lock
    old_format.mkdir()
    held = tmp_path / "customer-worker-metrics-held"
    held.mkdir()
    holder = os.open(held / "owner.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_SH)
    unrelated = tmp_path / "something-else"
    unrelated.mkdir()
    try:
        folder, lock = claim_metrics_folder()
        try:
            assert not stale.exists()
            assert not old_format.exists()
            assert held.exists()
            assert unrelated.exists()
            assert Path(folder).parent == tmp_path
            assert Path(folder).name.startswith("customer-worker-metrics-")
            second, second_lock = claim_metrics_folder()  # another replica on the same host
            os.close(second_lock)
            assert Path(folder).exists(), "a folder held by a running supervisor is kept"
            assert second != folder
        finally:
            os.close(lock)
    finally:
        os.close(holder)

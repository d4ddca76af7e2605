"""`customer-worker bench` end to end, small: every section prints its figures, and repeated start runs each see
their own event (a repeated message id would be answered as a duplicate, without one, and the run would time out)."""

from __future__ import annotations

import os
import re
import subprocess
import sys


def test_a_small_bench_prints_every_figure() -> None:
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS")  # its own embedded stack, like a new user's
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker",
            "bench",
            "--count",
            "3000",
            "--partitions",
            "2",
            "--rates",
            "200",
            "--latency-seconds",
            "2",
            "--skip-yardsticks",
            "--start-runs",
            "2",
            "--start-session-timeout-ms",
            "2000",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    drained = re.search(r"drain rate, worker: +([\d,]+) commands/s", out)
    assert drained is not None, out
    assert int(drained.group(1).replace(",", "")) > 0
    assert re.search(r"latency at +200/s offered: +p50 +[\d.]+ ms .*\((\d+)/\1 events\)", out), out
    assert re.search(r"worker peak RSS \(VmHWM\): +[\d.]+ MB", out), out
    assert "cold start (median of 2, KAFKA_SESSION_TIMEOUT_MS=2000)" in out, out
    assert "restart after kill -9 (median of 2, KAFKA_SESSION_TIMEOUT_MS=2000)" in out, out

"""Arguments of `customer-worker bench`, apart so that the CLI parser does not import the benchmark."""

from __future__ import annotations

import argparse


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=int, default=100_000, help="commands to drain")
    parser.add_argument("--partitions", type=int, default=6, help="partitions of the bench topics (default 6)")
    parser.add_argument("--rates", default="1000,2000,5000", help="offered loads for the latency runs, per second")
    parser.add_argument(
        "--latency-seconds", type=float, default=10.0, help="length of each latency run, seconds (default 10)"
    )
    parser.add_argument(
        "--processes", default="1", help="worker processes per drain run, comma-separated (e.g. 1,2: the scaling)"
    )
    parser.add_argument("--skip-yardsticks", action="store_true", help="skip the reference and naive pipelines")
    parser.add_argument("--naive-count", type=int, default=3_000, help="commands for the naive mode (default 3000)")
    parser.add_argument(
        "--start-runs",
        type=int,
        default=3,
        help="cold starts and restarts after kill -9 to take the median of (default 3)",
    )
    parser.add_argument(
        "--start-session-timeout-ms",
        type=int,
        default=4000,
        help="KAFKA_SESSION_TIMEOUT_MS of the start runs (default 4000): Tansu holds a join for half of it, and a"
        " dead member is expired after it",
    )
    parser.add_argument("--with-providers", action="store_true", help="configure provider connections")
    parser.add_argument(
        "--data-dir", default=None, help="folder for the temporary embedded stack (default: the system temp folder)"
    )

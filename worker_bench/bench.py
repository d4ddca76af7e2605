"""`customer-worker bench`: end-to-end throughput, latency and memory of the worker, with two yardsticks.

1. Fill a fresh commands topic with N commands (creates, then updates of the same customers; 5% invalid; full Lago
   bodies), start the worker as its own process and measure the drain rate: commands applied and their events
   published per second, between 10% and 90% of the run (steady state).
2. The lean reference pipeline and the naive mode (`bench_reference`) drain the same commands on the same servers.
3. Publish-to-event latency percentiles at fixed offered loads, against a fresh worker process.
4. The worker's peak RSS (VmHWM) over the whole run.

Runs on the embedded stack, or on the servers of DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS when both are set.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import orjson

from worker.dev import free_port
from worker.ops.topics import create_worker_topics
from worker.settings import KafkaSettings, Settings
from worker_bench.load import (
    ORGANIZATION,
    Servers,
    build_commands,
    fill,
    fresh_database,
    producer,
    progress,
    progress_done,
    servers,
)
from worker_bench.start import (
    StartFigures,
    event_probe,
    measure_cold_start,
    measure_restart_after_crash,
    spawn,
    stop,
    wait_ready,
)


async def _settle(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("VACUUM (ANALYZE) customers, processed_messages, outbox")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def measure_drain(dsn: str, total: int, label: str, process: subprocess.Popen[bytes]) -> float:
    """Commands answered with their events published, per second, between 10% and 90% of `total`."""
    conn = await asyncpg.connect(dsn)
    marks: dict[float, float] = {}
    started = time.monotonic()
    try:
        while True:
            # Cheap to ask (the worker's database shares the machine): events written, from the outbox sequence, less
            # those not yet published; the reference pipelines publish before they commit and keep their rows.
            row = await conn.fetchrow(
                "SELECT coalesce(pg_sequence_last_value('outbox_id_seq'), 0) AS written, "
                "(SELECT count(*) FROM outbox) AS backlog"
            )
            assert row is not None
            published = row["written"] - (row["backlog"] if label.startswith(("worker", "strong")) else 0)
            now = time.monotonic()
            for fraction in (0.1, 0.9):
                if fraction not in marks and published >= total * fraction:
                    marks[fraction] = now
            progress(f"{label}: {published}/{total} answered and published, {now - started:.0f} s")
            if published >= total:
                break
            if process.poll() is not None:
                raise RuntimeError(f"{label} exited with {process.returncode} before the drain ended")
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
        progress_done()
    if marks[0.9] <= marks[0.1]:
        raise RuntimeError(f"{label}: the drain ended within one progress poll, too short to measure; raise --count")
    return 0.8 * total / (marks[0.9] - marks[0.1])


def _worker_env(servers: Servers, dsn: str, topics: dict[str, str], group: str, port: int) -> dict[str, str]:
    return {
        "DATABASE_URL": dsn,
        "KAFKA_BOOTSTRAP_SERVERS": servers.bootstrap,
        "KAFKA_ENABLE_IDEMPOTENCE": os.environ.get("KAFKA_ENABLE_IDEMPOTENCE", "false"),
        "KAFKA_GROUP_ID": group,
        "COMMANDS_TOPIC": topics["commands"],
        "EVENTS_TOPIC": topics["events"],
        "DLQ_TOPIC": topics["dlq"],
        "HTTP_PORT": str(port),
        "LOG_LEVEL": "WARNING",
        "KAFKA_SESSION_TIMEOUT_MS": "6000",
    }


async def measure_latency(
    bootstrap: str, topics: dict[str, str], rate: int, seconds: float, *, seed: int, providers: bool
) -> dict[str, float]:
    """Publish at `rate` per second for `seconds`; percentiles of publish-to-event latency at the consumer (arrival),
    first second excluded. Each latency is split at the event's record timestamp (set by the worker's producer when
    the relay appends it): publish to event (the worker's part) and event to arrival (the broker and this consumer).

    The publisher does not linger (`linger_ms=0`): a batching delay of the measuring client is not the worker's."""
    commands = build_commands(int(rate * seconds), seed=seed, providers=providers, prefix=f"lat{rate}-{seed}")
    # Parsed before the timed loop: the send loop shares the event loop that timestamps arriving events.
    message_ids = [orjson.loads(value)["message_id"] for _, value in commands]
    sent: dict[str, float] = {}
    sent_wall: dict[str, float] = {}
    latencies: list[float] = []
    stages: list[tuple[float, float]] = []  # (publish to event, event to arrival), seconds
    consumer = event_probe(bootstrap, topics["events"])
    await consumer.start()
    done = asyncio.Event()

    async def collect() -> None:
        while not done.is_set() or len(latencies) < len(sent):
            batches = await consumer.getmany(timeout_ms=100)
            arrived, arrived_wall = time.monotonic(), time.time()
            for records in batches.values():
                for record in records:
                    message_id = orjson.loads(record.value).get("message_id")
                    if message_id in sent:
                        latencies.append(arrived - sent[message_id])
                        created = record.timestamp / 1000
                        stages.append((created - sent_wall[message_id], arrived_wall - created))
            if done.is_set() and time.monotonic() - finished > 15:
                return

    finished = 0.0
    collector = asyncio.create_task(collect())
    try:
        async with producer(bootstrap, linger_ms=0) as kafka:
            tick = 0.01
            per_tick = rate * tick
            start = time.monotonic()
            budget = 0.0
            index = 0
            while index < len(commands):
                budget += per_tick
                sends = []
                while budget >= 1 and index < len(commands):
                    key, value = commands[index]
                    sent[message_ids[index]] = time.monotonic()
                    sent_wall[message_ids[index]] = time.time()
                    sends.append(await kafka.send(topics["commands"], value=value, key=key))
                    index += 1
                    budget -= 1
                await asyncio.gather(*sends)
                next_tick = start + (index / rate)
                await asyncio.sleep(max(next_tick - time.monotonic(), 0))
            finished = time.monotonic()
            done.set()
            await asyncio.wait_for(collector, timeout=60)
    finally:
        done.set()
        collector.cancel()
        await consumer.stop()
    warm = latencies[rate:] if len(latencies) > rate * 2 else latencies
    warm_stages = stages[rate:] if len(stages) > rate * 2 else stages
    quantiles = _percentiles(warm)
    worker_part = _percentiles([worker for worker, _ in warm_stages])
    delivery_part = _percentiles([delivery for _, delivery in warm_stages])
    return {
        "received": len(latencies),
        "sent": len(sent),
        "p50_ms": quantiles[49] * 1000,
        "p95_ms": quantiles[94] * 1000,
        "p99_ms": quantiles[98] * 1000,
        "max_ms": max(warm) * 1000 if warm else float("nan"),
        "worker_p50_ms": worker_part[49] * 1000,
        "worker_p99_ms": worker_part[98] * 1000,
        "delivery_p50_ms": delivery_part[49] * 1000,
        "delivery_p99_ms": delivery_part[98] * 1000,
    }


def _percentiles(values: list[float]) -> list[float]:
    return statistics.quantiles(values, n=100) if len(values) >= 2 else [float("nan")] * 99


def _providers_file(folder: Path) -> dict[str, str]:
    path = folder / "providers.yaml"
    path.write_text(
        "connections:\n"
        f"  - {{organization_id: {ORGANIZATION}, code: stripe_main, provider: stripe, secret_env: BENCH_STRIPE_KEY,"
        " api_base: 'http://127.0.0.1:9'}\n"
    )
    return {"PROVIDERS_FILE": str(path), "BENCH_STRIPE_KEY": "sk_test_bench"}


async def run(args: argparse.Namespace) -> int:
    run_id = uuid.uuid4().hex[:8]
    rates = [int(rate) for rate in args.rates.split(",") if rate]
    with servers(args.data_dir) as stack, tempfile.TemporaryDirectory(prefix="cw-bench-logs-") as logs_dir:
        logs = Path(logs_dir)
        extra_env = _providers_file(logs) if args.with_providers else {}
        kafka = KafkaSettings(kafka_bootstrap_servers=stack.bootstrap)

        async def topics(name: str, partitions: int) -> dict[str, str]:
            names = {kind: f"bench-{run_id}-{name}-{kind}" for kind in ("commands", "events", "dlq")}
            settings = kafka.model_copy(
                update={
                    "commands_topic": names["commands"],
                    "events_topic": names["events"],
                    "dlq_topic": names["dlq"],
                }
            )
            await create_worker_topics(settings, partitions=partitions, replication=1)
            return names

        print(f"customer-worker bench: {args.count} commands, {args.partitions} partitions, run {run_id}")
        commands = build_commands(args.count, seed=1, providers=args.with_providers, prefix=f"b{run_id}")
        drain_topics = await topics("drain", args.partitions)
        await fill(stack.bootstrap, drain_topics["commands"], commands)

        results: dict[str, float] = {}
        scaling: dict[int, float] = {}
        rss_drain = rss_peak = 0.0
        worker_dsn = ""
        for processes in args.process_counts:
            dsn = await fresh_database(stack.admin_dsn, f"bench_{run_id}_worker{processes}")
            port = free_port()
            env = {**_worker_env(stack, dsn, drain_topics, f"bench-{run_id}-worker{processes}", port), **extra_env}
            env["WORKER_PROCESSES"] = str(processes)
            worker = spawn(["worker", "run"], env, logs / f"worker{processes}.log")
            try:
                scaling[processes] = await measure_drain(dsn, args.count, f"worker x{processes}", worker)
                if not worker_dsn:
                    rss_drain = rss_peak = peak_rss_mb(worker.pid)
                    worker_dsn = dsn
            finally:
                stop(worker)
        results["worker"] = scaling[args.process_counts[0]]

        # The drain leaves 100,000 fresh rows and as many deleted outbox rows: settle PostgreSQL's own maintenance
        # now, so that autovacuum does not run during the latency measurements and show in their tail.
        await _settle(worker_dsn)
        latency: dict[int, dict[str, float]] = {}
        for rate in rates:
            latency_topics = await topics(f"lat{rate}", args.partitions)
            port = free_port()
            env = {**_worker_env(stack, worker_dsn, latency_topics, f"bench-{run_id}-lat{rate}", port), **extra_env}
            env["WORKER_PROCESSES"] = "1"
            worker = spawn(["worker", "run"], env, logs / f"worker-{rate}.log")
            try:
                await wait_ready(port, worker)
                progress(f"latency at {rate}/s for {args.latency_seconds:.0f} s")
                latency[rate] = await measure_latency(
                    stack.bootstrap,
                    latency_topics,
                    rate,
                    args.latency_seconds,
                    seed=rate,
                    providers=args.with_providers,
                )
                progress_done()
                rss_peak = max(rss_peak, peak_rss_mb(worker.pid))
            finally:
                stop(worker)

        if not args.skip_yardsticks:
            yardsticks = (("strong", args.count), ("lean", args.count), ("naive", min(args.naive_count, args.count)))
            for mode, count in yardsticks:
                dsn = await fresh_database(stack.admin_dsn, f"bench_{run_id}_{mode}")
                env = _worker_env(stack, dsn, {**drain_topics, "events": f"bench-{run_id}-{mode}-events"}, "", 0)
                env["KAFKA_GROUP_ID"] = f"bench-{run_id}-{mode}"
                env["BATCH_SIZE"] = os.environ.get("BATCH_SIZE", str(Settings.model_fields["batch_size"].default))
                process = spawn(
                    ["worker_bench.reference", "--mode", mode, "--count", str(count)], env, logs / f"{mode}.log"
                )
                try:
                    results[mode] = await measure_drain(dsn, count, mode, process)
                finally:
                    process.kill()
                    process.wait()

        starts: dict[str, list[StartFigures]] = {"cold": [], "restart": []}
        for attempt in range(args.start_runs):
            for kind in ("cold", "restart"):
                start_topics = await topics(f"{kind}{attempt}", args.partitions)
                group = f"bench-{run_id}-{kind}{attempt}"
                env = {**_worker_env(stack, worker_dsn, start_topics, group, free_port()), **extra_env}
                env["WORKER_PROCESSES"] = "1"
                env["KAFKA_SESSION_TIMEOUT_MS"] = str(args.start_session_timeout_ms)
                progress(f"{kind} start {attempt + 1}/{args.start_runs}")
                if kind == "cold":
                    start = await measure_cold_start(stack.bootstrap, start_topics, env, logs / f"cold{attempt}.log")
                else:
                    start = await measure_restart_after_crash(stack.bootstrap, start_topics, env, logs)
                starts[kind].append(start)
        progress_done()

        print()
        print(f"load average at the end:     {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        worker_rate = results["worker"]
        print(f"drain rate, worker:          {worker_rate:10,.0f} commands/s (answered and published)")
        if "lean" in results:
            print(f"drain rate, strong lean:     {results['strong']:10,.0f} commands/s (batch 2,000, narrow + jsonb)")
            print(f"drain rate, full-width lean: {results['lean']:10,.0f} commands/s (worker's table and batch size)")
            print(f"drain rate, naive mode:      {results['naive']:10,.0f} commands/s")
            print(f"worker / strong lean:        {worker_rate / results['strong']:10.2f}")
            print(f"worker / full-width lean:    {worker_rate / results['lean']:10.2f}")
            print(f"worker / naive mode:         {worker_rate / results['naive']:10.1f}")
        for processes, drained in scaling.items():
            print(f"drain rate, {processes} process(es):   {drained:10,.0f} commands/s  ({drained / worker_rate:.2f}x)")
        for rate, figures in latency.items():
            print(
                f"latency at {rate:>5}/s offered:   p50 {figures['p50_ms']:7.1f} ms   p95 {figures['p95_ms']:7.1f} ms"
                f"   p99 {figures['p99_ms']:7.1f} ms   max {figures['max_ms']:7.1f} ms"
                f"   ({int(figures['received'])}/{int(figures['sent'])} events)"
            )
            print(
                f"  of which publish to event:   p50 {figures['worker_p50_ms']:7.1f} ms   p99"
                f" {figures['worker_p99_ms']:7.1f} ms;  event to arrival: p50 {figures['delivery_p50_ms']:7.1f} ms"
                f"   p99 {figures['delivery_p99_ms']:7.1f} ms"
            )
        print(f"worker peak RSS (VmHWM):     {rss_peak:10.1f} MB (one process; {rss_drain:.1f} MB in the drain)")
        session = args.start_session_timeout_ms
        for kind, label in (("cold", "cold start"), ("restart", "restart after kill -9")):
            if starts[kind]:
                median = _median_start(starts[kind])
                print(
                    f"{label} (median of {len(starts[kind])}, KAFKA_SESSION_TIMEOUT_MS={session}): {median.describe()}"
                )
    return 0


def _median_start(runs: list[StartFigures]) -> StartFigures:
    """Each figure's own median: a breakdown of medians, robust to one slow run."""
    return StartFigures(
        *(
            statistics.median(getattr(run, name) for run in runs)
            for name in ("ready", "first_event", "process", "prepare", "join")
        )
    )


def main(args: argparse.Namespace) -> int:
    args.process_counts = [int(n) for n in str(args.processes).split(",") if n.strip()]
    if not args.process_counts or min(args.process_counts) < 1:
        raise SystemExit("--processes: a comma-separated list of process counts, each at least 1")
    return asyncio.run(run(args))

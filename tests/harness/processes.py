"""Fault-test harness: real `python -m worker run` processes, bulk commands, and reading every event back.

Everything here talks to the worker only from the outside (environment, signals, Kafka, PostgreSQL, HTTP), the way
an operator or a crash would: the tests prove SPEC §5 on the real process, not on a model of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import aiohttp
import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from worker.dev import free_port
from worker.settings import Settings

RESULT_EVENT_TYPES: Final = frozenset({"customer.created", "customer.updated", "customer.rejected", "customer.skipped"})
# Settings of the parent's environment must not leak into a worker: each test sets what it means.
_WORKER_SETTINGS: Final = frozenset({name.upper() for name in Settings.model_fields} | {"CUSTOMER_WORKER_CRASH_AT"})
_BASE_TIME: Final = datetime(2026, 1, 1, tzinfo=UTC)
_BILLING_CHECKED: Final = ("invoice_grace_period", "document_locale")


# ----------------------------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    """One published upsert. `seq` is its global position: `occurred_at`, `name` and `net_payment_term` encode it,
    so a stored row or an event tells which command it came from."""

    message_id: str
    organization_id: str
    external_id: str
    seq: int
    billing: Mapping[str, Any] | None = None
    """`billing_configuration` of the command, when it has one."""

    @property
    def occurred_at(self) -> datetime:
        return _BASE_TIME + timedelta(seconds=self.seq)

    @property
    def name(self) -> str:
        return f"{self.external_id} v{self.seq}"

    @property
    def net_payment_term(self) -> int:
        return self.seq

    @property
    def key(self) -> bytes:
        return f"{self.organization_id}:{self.external_id}".encode()

    def value(self) -> bytes:
        customer: dict[str, Any] = {
            "external_id": self.external_id,
            "name": self.name,
            "net_payment_term": self.net_payment_term,
            "currency": "EUR",
            "email": f"{self.external_id}@example.com",
        }
        if self.billing is not None:
            customer["billing_configuration"] = dict(self.billing)
        return orjson.dumps(
            {
                "message_id": self.message_id,
                "organization_id": self.organization_id,
                "occurred_at": self.occurred_at.isoformat().replace("+00:00", "Z"),
                "customer": customer,
            }
        )


def billing_of(seq: int) -> dict[str, Any]:
    """A `billing_configuration` that needs no provider connection (no link, SPEC §11): grace period and locale
    change with `seq`, and the provider is stored without a lookup."""
    return {
        "invoice_grace_period": seq % 30,
        "document_locale": ("fr", "de", "en")[seq % 3],
        "payment_provider": "stripe",
        "provider_payment_methods": ["card", "sepa_debit"],
    }


def make_commands(
    count: int, customers: int, *, seed: int, organization_id: str | None = None, billing_every: int = 0
) -> list[Command]:
    """`count` distinct commands over `customers` customers: every customer at least once, a hot tenth of them
    many times (weight 20), in a shuffled order; `seq` (hence `occurred_at`) increases along the list. With
    `billing_every` = n, every n-th command also carries a `billing_configuration` (`billing_of`)."""
    assert count >= customers > 0
    rng = random.Random(seed)
    org = organization_id or f"org_{uuid.uuid4().hex[:8]}"
    hot = max(customers // 10, 1)
    weights = [20 if index < hot else 1 for index in range(customers)]
    picks = list(range(customers)) + rng.choices(range(customers), weights=weights, k=count - customers)
    rng.shuffle(picks)
    return [
        Command(
            message_id=str(uuid.uuid4()),
            organization_id=org,
            external_id=f"cus_{pick:05d}",
            seq=seq,
            billing=billing_of(seq) if billing_every and seq % billing_every == 0 else None,
        )
        for seq, pick in enumerate(picks)
    ]


@dataclass(frozen=True, slots=True)
class Placement:
    partition: int
    offset: int


async def publish_commands(
    bootstrap: str, topic: str, commands: Sequence[Command], *, check_spread: bool = True
) -> dict[str, Placement]:
    """Publish with pipelined sends (futures gathered); returns where each message id landed. Checks that each
    customer's commands sit in one partition in `seq` order, which the tests rely on."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=False, acks="all", linger_ms=5, max_batch_size=512 * 1024
    )
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic, value=command.value(), key=command.key, headers=[("content-type", b"application/json")]
            )
            for command in commands
        ]
        metadata = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    placements = {
        command.message_id: Placement(meta.partition, meta.offset)
        for command, meta in zip(commands, metadata, strict=True)
    }
    last: dict[str, Placement] = {}
    for command in commands:
        placed = placements[command.message_id]
        before = last.get(command.external_id)
        assert before is None or (before.partition == placed.partition and before.offset < placed.offset), (
            f"{command.external_id} not kept in order by the producer"
        )
        last[command.external_id] = placed
    if check_spread:
        assert len({p.partition for p in placements.values()}) > 1, "commands did not spread over partitions"
    return placements


# ----------------------------------------------------------------------------------------------------------------
# Events
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    partition: int
    offset: int
    key: bytes | None
    event_type_header: str | None
    body: dict[str, Any]

    @property
    def event_id(self) -> str:
        return str(self.body["event_id"])

    @property
    def event_type(self) -> str:
        return str(self.body["event_type"])

    @property
    def message_id(self) -> str:
        return str(self.body["message_id"])


async def read_records(
    bootstrap: str,
    topic: str,
    *,
    quiet: float = 2.0,
    timeout: float = 60.0,  # noqa: ASYNC109
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of `topic` from the beginning (no group), until none arrives for `quiet` seconds."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    found: list[ConsumerRecord[bytes, bytes]] = []
    try:
        await consumer.topics()  # fetches the metadata that partitions_for_topic reads
        partitions = consumer.partitions_for_topic(topic) or set()
        assignment = [TopicPartition(topic, partition) for partition in sorted(partitions)]
        consumer.assign(assignment)
        await consumer.seek_to_beginning(*assignment)
        deadline = time.monotonic() + timeout
        last_new = time.monotonic()
        while time.monotonic() - last_new < quiet:
            assert time.monotonic() < deadline, f"records still arriving on {topic} after {timeout} s"
            batches = await consumer.getmany(timeout_ms=250, max_records=20_000)
            for records in batches.values():
                found.extend(records)
                if records:
                    last_new = time.monotonic()
    finally:
        await consumer.stop()
    found.sort(key=lambda record: (record.partition, record.offset))
    return found


async def read_events(bootstrap: str, topic: str, *, quiet: float = 2.0) -> list[Event]:
    """Every event of the events topic, in (partition, offset) order."""
    events = []
    for record in await read_records(bootstrap, topic, quiet=quiet):
        event_type = dict(record.headers).get("event-type")
        events.append(
            Event(
                partition=record.partition,
                offset=record.offset,
                key=record.key,
                event_type_header=event_type.decode() if event_type is not None else None,
                body=orjson.loads(record.value),
            )
        )
    return events


# ----------------------------------------------------------------------------------------------------------------
# Worker processes
# ----------------------------------------------------------------------------------------------------------------


def worker_env(
    *, database_url: str, bootstrap: str, topics: Mapping[str, str], group_id: str, **overrides: str
) -> dict[str, str]:
    """Environment of one worker process; `overrides` are more settings (`BATCH_SIZE="50"`, ...)."""
    env = {name: value for name, value in os.environ.items() if name not in _WORKER_SETTINGS}
    env.update(
        {
            "DATABASE_URL": database_url,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_GROUP_ID": group_id,
            "COMMANDS_TOPIC": topics["commands"],
            "EVENTS_TOPIC": topics["events"],
            "DLQ_TOPIC": topics["dlq"],
            "KAFKA_ENABLE_IDEMPOTENCE": "false",
            "KAFKA_SESSION_TIMEOUT_MS": "6000",
            "SHUTDOWN_TIMEOUT": "10",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(overrides)
    return env


@dataclass(slots=True)
class WorkerProcess:
    """A `python -m worker run` child; stderr and stdout go to files under the test's tmp dir."""

    name: str
    proc: subprocess.Popen[bytes]
    http_port: int
    stderr_path: Path
    stdout_path: Path
    killed: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.alive:
            self.killed = True
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    async def stop(self, signum: int = signal.SIGTERM, *, wait: float) -> float:
        """Sends `signum`; asserts the process exits 0 within `wait` seconds; returns the seconds it took."""
        self.proc.send_signal(signum)
        signalled = time.monotonic()
        code = await self.wait_exit(wait)
        elapsed = time.monotonic() - signalled
        assert code == 0, f"{self.name} exited with {code}\n{self.tail()}"
        return elapsed

    async def wait_exit(self, timeout: float) -> int:  # noqa: ASYNC109 - a deadline on a child process
        deadline = time.monotonic() + timeout
        while (code := self.proc.poll()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} (pid {self.pid}) still running after {timeout} s")
            await asyncio.sleep(0.02)
        return code

    async def http_get(self, path: str) -> tuple[int, str] | None:
        """Status and body of GET `path` on the worker's HTTP port, None while nothing answers."""
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
                session.get(f"http://127.0.0.1:{self.http_port}{path}") as response,
            ):
                return response.status, await response.text()
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None

    async def http_status(self, path: str) -> int | None:
        answer = await self.http_get(path)
        return None if answer is None else answer[0]

    async def metric(self, name: str, **labels: str) -> float:
        """The value of one Prometheus sample from `/metrics` (0 when absent), e.g. `("commands_total",
        outcome="duplicate")`; `name` is matched as a suffix so the namespace prefix does not matter."""
        answer = await self.http_get("/metrics")
        assert answer is not None and answer[0] == 200, f"{self.name}: /metrics unavailable"
        wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
        for line in answer[1].splitlines():
            if line.startswith("#") or " " not in line:
                continue
            sample, _, value = line.rpartition(" ")
            metric, _, label_text = sample.partition("{")
            if metric.endswith(name) and ",".join(sorted(label_text.rstrip("}").split(","))) == wanted:
                return float(value)
        return 0.0

    async def wait_http(self, path: str, status: int, timeout: float) -> float:  # noqa: ASYNC109
        """Wait until GET `path` answers `status`; the seconds it took. Fails if the process exits meanwhile."""
        started = time.monotonic()
        while (got := await self.http_status(path)) != status:
            assert self.alive, f"{self.name} exited with {self.returncode} waiting for {path} {status}\n{self.tail()}"
            assert time.monotonic() - started < timeout, f"{path} answered {got}, not {status}, for {timeout} s"
            await asyncio.sleep(0.1)
        return time.monotonic() - started

    def stderr_text(self) -> str:
        return self.stderr_path.read_bytes().decode("utf-8", "replace")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.stderr_text().splitlines()[-lines:])

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log records on stderr. Asserts that every line is one JSON object (no raw traceback, no stray
        print); only a process killed with SIGKILL may leave a last line cut short."""
        text = self.stderr_text()
        lines = text.split("\n")
        trailing = lines.pop()  # "" when the output ends with a newline
        records = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise AssertionError(f"{self.name}: stderr line {number} is not JSON: {line[:300]!r}") from None
            assert isinstance(record, dict), f"{self.name}: stderr line {number} is not a JSON object"
            records.append(record)
        if trailing.strip():
            assert self.killed, f"{self.name}: stderr ends with an unterminated line: {trailing[:300]!r}"
        assert not self.stdout_path.read_bytes().strip(), f"{self.name} wrote to stdout"
        return records

    def events_logged(self) -> list[str]:
        return [str(record.get("event")) for record in self.log_records()]

    def dead_letter_lines(self) -> list[str]:
        """Log lines reporting a record sent to the DLQ: none of the fault tests' commands may end there."""
        return [line for line in self.stderr_text().splitlines() if '"dead_lettered"' in line]


class Launcher:
    """Starts worker processes for one test and kills whatever is left at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[WorkerProcess] = []

    def start(self, env: Mapping[str, str], *, crash_at: str | None = None, name: str | None = None) -> WorkerProcess:
        name = name or f"worker{len(self.started) + 1}"
        http_port = free_port()
        full_env = {**env, "HTTP_PORT": str(http_port)}
        if crash_at is not None:
            full_env["CUSTOMER_WORKER_CRASH_AT"] = crash_at
        stderr_path = self.log_dir / f"{name}.stderr"
        stdout_path = self.log_dir / f"{name}.stdout"
        with stderr_path.open("wb") as stderr, stdout_path.open("wb") as stdout:
            proc = subprocess.Popen(
                [sys.executable, "-m", "worker", "run"],
                env=full_env,
                cwd=self.log_dir,  # SPEC §11: works from any current directory
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
            )
        worker = WorkerProcess(
            name=name, proc=proc, http_port=http_port, stderr_path=stderr_path, stdout_path=stdout_path
        )
        self.started.append(worker)
        return worker

    def cleanup(self) -> None:
        for worker in self.started:
            if worker.alive:
                worker.kill()


# ----------------------------------------------------------------------------------------------------------------
# Database
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Progress:
    processed: int
    outbox: int


async def progress(dsn: str, organization_id: str) -> Progress | None:
    """Inbox rows of the organization and outbox backlog; None while PostgreSQL does not answer."""
    try:
        conn = await asyncpg.connect(dsn, timeout=2)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        return None
    try:
        processed = await conn.fetchval(
            "SELECT count(*) FROM processed_messages WHERE organization_id = $1", organization_id
        )
        outbox = await conn.fetchval("SELECT count(*) FROM outbox")
        return Progress(processed=processed, outbox=outbox)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        return None
    finally:
        with contextlib.suppress(Exception):
            await conn.close()


def assert_no_dead_letters(workers: Sequence[WorkerProcess]) -> None:
    """Fail fast: every command of these tests is valid, so a dead letter means a command was given up on."""
    for worker in workers:
        lines = worker.dead_letter_lines()
        assert not lines, f"{worker.name} dead-lettered {len(lines)} valid command(s), e.g. {lines[0]}"


async def wait_for_progress(
    dsn: str,
    organization_id: str,
    *,
    at_least: int,
    workers: Sequence[WorkerProcess],
    timeout: float,  # noqa: ASYNC109
) -> int:
    """Wait until at least `at_least` commands of the organization are processed; returns the count seen."""
    deadline = time.monotonic() + timeout
    while True:
        seen = await progress(dsn, organization_id)
        if seen is not None and seen.processed >= at_least:
            return seen.processed
        assert_no_dead_letters(workers)
        assert any(w.alive for w in workers), "every worker exited:\n" + "\n".join(w.tail() for w in workers)
        assert time.monotonic() < deadline, f"fewer than {at_least} commands processed after {timeout} s: {seen}"
        await asyncio.sleep(0.05)


async def wait_for_completion(
    dsn: str,
    organization_id: str,
    total: int,
    *,
    workers: Sequence[WorkerProcess],
    timeout: float,  # noqa: ASYNC109
) -> float:
    """Wait until all `total` commands are processed and the outbox is empty; the seconds it took."""
    started = time.monotonic()
    seen: Progress | None = None
    while True:
        seen = await progress(dsn, organization_id)
        if seen is not None and seen.processed >= total and seen.outbox == 0:
            return time.monotonic() - started
        assert_no_dead_letters(workers)
        alive = [w for w in workers if w.alive]
        assert alive, f"every worker exited before completion ({seen}):\n" + "\n".join(w.tail() for w in workers)
        assert time.monotonic() - started < timeout, f"not complete after {timeout} s: {seen}"
        await asyncio.sleep(0.2)


# ----------------------------------------------------------------------------------------------------------------
# The exactly-once-in-effect check
# ----------------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    commands: int
    events: int
    result_events: int
    republished: int  # result events seen more than once (same event_id), from a relay crash
    customers: int


async def check_exactly_once(dsn: str, commands: Sequence[Command], events: Iterable[Event]) -> Outcome:
    """SPEC §5 on the final state: no command lost, none applied twice, last writer (by occurred_at) wins,
    events in partition order per customer. Raises AssertionError with the first offenders."""
    by_message = {command.message_id: command for command in commands}
    org = commands[0].organization_id
    last_command: dict[str, Command] = {}
    last_billing: dict[str, Mapping[str, Any]] = {}
    for command in commands:
        last_command[command.external_id] = command  # commands are in seq order
        if command.billing is not None and any(name in command.billing for name in _BILLING_CHECKED):
            last_billing[command.external_id] = command.billing

    all_events = [event for event in events if event.body.get("organization_id") == org]
    results = [event for event in all_events if event.event_type in RESULT_EVENT_TYPES]
    event_ids: dict[str, set[str]] = defaultdict(set)
    bodies: dict[str, dict[str, Any]] = {}
    for event in results:
        assert event.event_type_header == event.event_type, f"event-type header differs for {event.event_id}"
        event_ids[event.message_id].add(event.event_id)
        if event.event_id in bodies:
            assert bodies[event.event_id] == event.body, f"event {event.event_id} republished with another body"
        bodies[event.event_id] = event.body

    unknown = set(event_ids) - set(by_message)
    assert not unknown, f"{len(unknown)} events answer message ids never published, e.g. {sorted(unknown)[:3]}"
    lost = [message_id for message_id in by_message if message_id not in event_ids]
    assert not lost, f"{len(lost)} of {len(by_message)} commands have no result event, e.g. {lost[:3]}"
    twice = {message_id: ids for message_id, ids in event_ids.items() if len(ids) != 1}
    assert not twice, f"{len(twice)} commands answered by several event ids, e.g. {list(twice.items())[:2]}"

    kinds: defaultdict[str, int] = defaultdict(int)
    for body in bodies.values():
        kinds[body["event_type"]] += 1
    assert kinds["customer.created"] == len(last_command), f"created events: {dict(kinds)}"
    assert kinds["customer.rejected"] == 0, f"rejections: {dict(kinds)}"
    assert kinds["customer.skipped"] == 0, f"stale skips (a command applied out of order?): {dict(kinds)}"

    # Each result event carries its own command's data; per customer, first sightings follow the command order.
    order: dict[str, list[int]] = defaultdict(list)
    first_seen: set[str] = set()
    for event in results:
        command = by_message[event.message_id]
        customer = event.body["customer"]
        assert event.key == command.key, f"event key {event.key!r} for {command.key!r}"
        assert (customer["name"], customer["net_payment_term"]) == (command.name, command.net_payment_term), (
            f"event {event.event_id} carries {customer['name']!r} for command seq {command.seq}"
        )
        if command.billing is not None:
            billing = customer["billing_configuration"]
            sent = {name: command.billing[name] for name in _BILLING_CHECKED if name in command.billing}
            assert {name: billing[name] for name in sent} == sent, (
                f"event {event.event_id} carries another billing configuration than command seq {command.seq}"
            )
        if event.event_id not in first_seen:
            first_seen.add(event.event_id)
            order[command.external_id].append(command.seq)
    disordered = {ext: seqs for ext, seqs in order.items() if seqs != sorted(seqs)}
    assert not disordered, f"events out of command order for {len(disordered)} customers: {list(disordered)[:3]}"

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT external_id, name, net_payment_term, high_water_mark, invoice_grace_period, document_locale "
            "FROM customers WHERE organization_id = $1",
            org,
        )
        inbox = {
            row["message_id"]
            for row in await conn.fetch("SELECT message_id FROM processed_messages WHERE organization_id = $1", org)
        }
        outbox = await conn.fetchval("SELECT count(*) FROM outbox")
    finally:
        await conn.close()
    stored = {row["external_id"]: row for row in rows}
    assert len(rows) == len(stored) == len(last_command), f"{len(rows)} rows for {len(last_command)} customers"
    wrong = []
    for external_id, command in last_command.items():
        row = stored[external_id]
        if (row["name"], row["net_payment_term"], row["high_water_mark"]) != (
            command.name,
            command.net_payment_term,
            command.occurred_at,
        ):
            wrong.append((external_id, row["name"], command.name))
    assert not wrong, f"{len(wrong)} rows differ from their last command, e.g. {wrong[:3]}"
    billing_wrong = [
        external_id
        for external_id, billing in last_billing.items()
        if any(stored[external_id][name] != billing[name] for name in _BILLING_CHECKED if name in billing)
    ]
    assert not billing_wrong, f"{len(billing_wrong)} rows lost their last billing_configuration: {billing_wrong[:3]}"
    missing = set(by_message) - inbox
    assert not missing, f"{len(missing)} message ids missing from processed_messages"
    assert outbox == 0, f"{outbox} outbox rows left"

    return Outcome(
        commands=len(commands),
        events=len(all_events),
        result_events=len(results),
        republished=len(results) - len(bodies),
        customers=len(last_command),
    )


async def committed_offsets(bootstrap: str, group_id: str, topic: str, partitions: int = 3) -> dict[int, int]:
    """The group's committed offset per partition (-1 when none), read without joining the group."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False)
    await consumer.start()
    try:
        found: dict[int, int] = {}
        for partition in range(partitions):
            committed = await consumer.committed(TopicPartition(topic, partition))
            found[partition] = -1 if committed is None else int(committed)
        return found
    finally:
        await consumer.stop()


async def processed_ids(dsn: str, organization_id: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT message_id FROM processed_messages WHERE organization_id = $1", organization_id)
    finally:
        await conn.close()
    return {row["message_id"] for row in rows}


async def check_commits_cover_only_applied(
    *, bootstrap: str, group_id: str, topic: str, dsn: str, placements: Mapping[str, Placement], organization_id: str
) -> int:
    """No offset committed past an unapplied command: every record below the group's committed offset of its
    partition is in the inbox. Call it while no worker of the group runs. Returns how many records were applied
    but are not yet committed (what the next consumer will read again and must answer as duplicates)."""
    committed = await committed_offsets(bootstrap, group_id, topic)
    applied = await processed_ids(dsn, organization_id)
    skipped = [
        (message_id, placed)
        for message_id, placed in placements.items()
        if placed.offset < committed[placed.partition] and message_id not in applied
    ]
    assert not skipped, f"offsets {committed} committed past {len(skipped)} unapplied commands, e.g. {skipped[:3]}"
    return sum(
        1
        for message_id, placed in placements.items()
        if message_id in applied and placed.offset >= committed[placed.partition]
    )

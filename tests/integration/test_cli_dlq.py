"""`customer-worker dlq replay` with the worker running (issue 14): it replays what the DLQ held at start and ends,
even when the worker dead-letters the replayed record again; dry run, limit, summary on SIGTERM.

The loop of the old replay: it read "until the DLQ has nothing more to give", so a record that the worker
dead-lettered again while the replay ran was read back and republished, forever. The first test sets up exactly
that (the worker re-dead-letters the replayed record; the test checks the copy does land past the start boundary,
where the old replay would have read it) and shows the replay end after one send.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from tests.harness.in_process import Stack, running_stack
from tests.harness.records import command, encode, header_dict, key_of, read_topic

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
async def stack(pg_dsn: str, kafka_bootstrap: str) -> AsyncIterator[Stack]:
    async with running_stack(pg_dsn, kafka_bootstrap, "clidlq") as running:
        yield running


async def _records(stack: Stack, role: str, wanted: Any, count: int) -> list[Any]:
    """The records of a topic for which `wanted(record)` holds, once there are at least `count`."""
    records = await read_topic(
        stack.bootstrap, stack.topics[role], until=lambda rs: sum(1 for r in rs if wanted(r)) >= count, timeout=30
    )
    return [r for r in records if wanted(r)]


async def _dead_letter_envelopes(stack: Stack, organization: str, count: int) -> None:
    """`count` commands without a message_id (invalid_envelope) for `organization`, dead-lettered by the worker."""
    for n in range(count):
        await stack.publish(orjson.dumps({"organization_id": organization, "customer": {"external_id": f"c{n}"}}))
    await _records(stack, "dlq", lambda r: organization.encode() in (r.value or b""), count)


def _org() -> str:
    return f"org_{uuid.uuid4().hex[:10]}"


async def test_replay_ends_when_the_worker_dead_letters_the_record_again(stack: Stack) -> None:
    bad = f"{{not json {uuid.uuid4().hex}".encode()
    await stack.publish(bad, key=b"org_loop:cus_1")
    [original] = await _records(stack, "dlq", lambda r: r.value == bad, 1)
    assert header_dict(original)["dlq-reason"] == b"invalid_json"

    # As a user types it, with the worker running: it must end (the old one ran until killed).
    result = await asyncio.to_thread(stack.cli, "dlq", "replay", "--reason", "invalid_json", "--watch", "60")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "read 1, replayed 1, skipped by filter 0" in out, out
    assert "came straight back to the DLQ, not replayed again: 1" in out, out

    # The worker did dead-letter the replayed record again, past the boundary taken at start: the old replay read
    # on to that copy and republished it, which is the loop. This one sent the record once.
    copies = await _records(stack, "dlq", lambda r: r.value == bad, 2)
    assert len(copies) == 2
    returned = max(copies, key=lambda r: r.offset) if copies[0].partition == copies[1].partition else copies[1]
    assert f"{returned.partition}:{returned.offset} (invalid_json)" in out
    sent = await _records(stack, "commands", lambda r: r.value == bad, 2)
    assert len(sent) == 2  # the original and the one replay; the replay's sends were acknowledged before it ended


async def test_dry_run_counts_by_reason_and_partition_and_sends_nothing(stack: Stack) -> None:
    org = _org()
    await _dead_letter_envelopes(stack, org, 3)

    result = await asyncio.to_thread(stack.cli, "dlq", "replay", "--dry-run", "--organization", org)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "dry run: nothing sent" in out
    assert "would replay 3" in out, out
    assert any(line.split() == ["invalid_envelope", "3", "0"] for line in out.splitlines()), out
    assert "would replay by DLQ partition:" in out
    # Nothing was sent: the commands topic holds the three originals only (the dry run has ended, nothing in flight).
    commands = await _records(stack, "commands", lambda r: org.encode() in (r.value or b""), 3)
    assert len(commands) == 3


async def test_limit_replays_at_most_n(stack: Stack) -> None:
    org = _org()
    await _dead_letter_envelopes(stack, org, 3)

    result = await asyncio.to_thread(stack.cli, "dlq", "replay", "--organization", org, "--limit", "2", "--watch", "0")
    assert result.returncode == 0, result.stderr
    assert "replayed 2" in result.stdout
    assert "stopped at --limit" in result.stdout
    commands = await _records(stack, "commands", lambda r: org.encode() in (r.value or b""), 5)
    assert len(commands) == 5  # three originals, two replays


async def test_sigterm_prints_the_summary_and_exits_130(stack: Stack) -> None:
    org = _org()
    document = command(org, {"external_id": "cus_parked"})
    # A valid command parked in the DLQ (as after a fixed bug): replayed, applied, so it never comes back and the
    # replay keeps watching until the signal.
    await stack.producer.send_and_wait(
        stack.topics["dlq"],
        value=encode(document),
        key=key_of(document),
        headers=[("dlq-reason", b"processing_error"), ("dlq-source-topic", stack.topics["commands"].encode())],
    )
    process = subprocess.Popen(  # noqa: ASYNC220 - started once, read from a thread below
        [sys.executable, "-m", "worker", "dlq", "replay", "--organization", org, "--watch", "120"],
        env=stack.cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        line = await asyncio.to_thread(process.stderr.readline)
        while line and "watching" not in line:
            line = await asyncio.to_thread(process.stderr.readline)
        assert "watching" in line
        process.send_signal(signal.SIGTERM)
        out, err = await asyncio.to_thread(process.communicate, timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert "replayed 1" in out
    assert "interrupted" in out
    assert "Traceback" not in err

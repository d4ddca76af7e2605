"""`customer-worker publish FILE`: commands from a JSON-lines file (or stdin), keyed and optionally signed.

Each non-empty line is published byte for byte, so a producer's exact bytes (and their signature) are what the
worker sees. The key is `{organization_id}:{external_id}` when the line is readable, the signature is made with the
organization's first key from `SIGNING_KEYS_FILE` when it has one (SPEC §8 and §11).

Every line must be one JSON object: the whole input is checked before anything is sent, bad lines are reported with
their line numbers, and nothing is sent unless `skip_invalid` (then only the valid lines are). The worker decides
what a valid command is; this only keeps out what can never be one (and would be sent as `application/json`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, cast

import orjson
from aiokafka.errors import KafkaError

from worker.domain.events import event_key
from worker.errors import ConfigurationError
from worker.ops.progress import ProgressReporter
from worker.security import SIGNATURE_HEADER, SigningKeys, sign
from worker.settings import KafkaSettings
from worker.transport.producers import KafkaProducer, Message

EXIT_INVALID = 1
EXIT_INTERRUPTED = 130
_CHUNK = 1000
_SHOWN_ERRORS = 20
_SPOOL_IN_MEMORY = 64 * 1024 * 1024
_JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def command_message(value: bytes, keys: SigningKeys) -> Message:
    headers: list[tuple[str, bytes]] = [("content-type", b"application/json")]
    key: bytes | None = None
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError:
        document = None
    if isinstance(document, dict):
        organization_id = document.get("organization_id")
        customer = document.get("customer")
        external_id = customer.get("external_id") if isinstance(customer, dict) else None
        if isinstance(organization_id, str):
            key = event_key(organization_id, external_id if isinstance(external_id, str) else None).encode()
            secret = keys.first_key(organization_id)
            if secret is not None:
                headers.append((SIGNATURE_HEADER, sign(secret, value)))
    return key, value, headers


def read_lines(source: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of every non-blank line, numbered from 1 as an editor does."""
    for number, line in enumerate(source, 1):
        stripped = line.rstrip(b"\r\n")
        if stripped.strip():
            yield number, stripped


def line_error(value: bytes) -> str | None:
    """Why `value` cannot be a command (not JSON, not an object), or None."""
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return f"not JSON ({str(exc).split(':')[0]})"
    if not isinstance(document, dict):
        return f"JSON {_JSON_KINDS.get(type(document), 'value')}, not an object"
    return None


@dataclass(slots=True)
class PublishReport:
    valid: int = 0
    sent: int = 0
    invalid: list[tuple[int, str]] = field(default_factory=list)
    interrupted: bool = False


async def publish_values(
    settings: KafkaSettings, values: Iterable[bytes], keys: SigningKeys, *, chunk: int = _CHUNK
) -> int:
    """Send `values` as commands, in order; returns how many were acknowledged (no checks: callers check)."""
    producer = KafkaProducer(settings)
    await _start(producer, settings)
    count = 0
    try:
        pending: list[Message] = []
        for value in values:
            pending.append(command_message(value, keys))
            if len(pending) >= chunk:
                await producer.send_all(settings.commands_topic, pending)
                count += len(pending)
                pending = []
        if pending:
            await producer.send_all(settings.commands_topic, pending)
            count += len(pending)
    finally:
        await producer.stop()
    return count


async def _start(producer: KafkaProducer, settings: KafkaSettings) -> None:
    try:
        await producer.start()
    except KafkaError as exc:
        hint = (
            " The broker may not support idempotent producers (Tansu, the `dev` broker, does not): set "
            "KAFKA_ENABLE_IDEMPOTENCE=false, as `customer-worker dev` prints."
            if settings.kafka_enable_idempotence
            else ""
        )
        msg = f"cannot start a producer on KAFKA_BOOTSTRAP_SERVERS ({type(exc).__name__}).{hint}"
        raise ConfigurationError(msg) from None


def check(source: IO[bytes]) -> PublishReport:
    """Read and check every line; the report counts the valid ones and lists the bad ones (nothing is kept)."""
    report = PublishReport()
    for number, value in read_lines(source):
        error = line_error(value)
        if error is None:
            report.valid += 1
        else:
            report.invalid.append((number, error))
    return report


def _valid_lines(source: IO[bytes]) -> Iterator[bytes]:
    for _, value in read_lines(source):
        if line_error(value) is None:
            yield value


async def publish_file(
    settings: KafkaSettings | None,
    path: str,
    keys: SigningKeys,
    *,
    dry_run: bool = False,
    skip_invalid: bool = False,
    stop: asyncio.Event | None = None,
    out: IO[str] | None = None,
) -> int:
    """Check, then (unless `dry_run`, or bad lines without `skip_invalid`) send; prints a summary; exit status.
    `settings` may be None for a dry run, which talks to no broker.

    Two passes over the input, so memory stays flat however long the file: stdin is spooled to a temporary file
    (in memory while small) to be read twice."""
    out = out or sys.stdout
    stop = stop or asyncio.Event()
    with _open_input(path) as source:
        report = check(source)
        for number, error in report.invalid[:_SHOWN_ERRORS]:
            print(f"line {number}: {error}", file=sys.stderr)
        if len(report.invalid) > _SHOWN_ERRORS:
            print(f"... and {len(report.invalid) - _SHOWN_ERRORS} more invalid line(s)", file=sys.stderr)
        blocked = bool(report.invalid) and not skip_invalid
        if not dry_run and not blocked and report.valid:
            if settings is None:
                raise ConfigurationError("publish: KAFKA_BOOTSTRAP_SERVERS is needed to send (or pass --dry-run)")
            source.seek(0)
            await _send(settings, _valid_lines(source), keys, report, stop)
    topic = settings.commands_topic if settings is not None else commands_topic_of_environment()
    print(summary(report, topic, dry_run=dry_run, blocked=blocked), file=out, flush=True)
    if report.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_INVALID if blocked else 0


@contextlib.contextmanager
def _open_input(path: str) -> Iterator[IO[bytes]]:
    if path == "-":
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY) as spool:
            shutil.copyfileobj(sys.stdin.buffer, spool)
            spool.seek(0)
            yield cast("IO[bytes]", spool)
        return
    try:
        source = Path(path).open("rb")  # noqa: SIM115 - closed below, after both passes
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror}") from None
    with source:
        yield source


async def _send(
    settings: KafkaSettings, values: Iterator[bytes], keys: SigningKeys, report: PublishReport, stop: asyncio.Event
) -> None:
    producer = KafkaProducer(settings)
    await _start(producer, settings)
    try:
        with ProgressReporter("publish", report.valid) as progress:
            while chunk := list(itertools.islice(values, _CHUNK)):
                if stop.is_set():
                    report.interrupted = True
                    return
                await producer.send_all(settings.commands_topic, [command_message(value, keys) for value in chunk])
                report.sent += len(chunk)
                progress.advance(len(chunk))
    finally:
        await producer.stop()


def commands_topic_of_environment() -> str:
    """COMMANDS_TOPIC as the worker reads it, without the broker settings a dry run does not need."""
    default: str = KafkaSettings.model_fields["commands_topic"].default
    return os.environ.get("COMMANDS_TOPIC") or default


def summary(report: PublishReport, topic: str, *, dry_run: bool, blocked: bool) -> str:
    invalid = len(report.invalid)
    if dry_run:
        verdict = "would send nothing (fix them or pass --skip-invalid)" if blocked else f"would send {report.valid}"
        return f"dry run: {report.valid} valid line(s), {invalid} invalid; {verdict} to {topic}"
    if blocked:
        return f"sent nothing: {invalid} invalid line(s) of {invalid + report.valid} (fix them or pass --skip-invalid)"
    text = f"published {report.sent} command(s) to {topic}"
    if invalid:
        text += f", skipped {invalid} invalid line(s)"
    if report.interrupted:
        text += f"; interrupted, {report.valid - report.sent} not sent"
    return text

"""The CLI's pure parts (issue 14): publish's line check, the replay summary, progress output, `dev --print-env`
without a running stack, and the readable event line."""

from __future__ import annotations

import io
import os
from collections import Counter
from pathlib import Path

import pytest

from worker.dev import command as dev
from worker.ops import progress
from worker.ops.dlq import ReplayStats, Returned, format_summary
from worker.ops.events import EventFilter, readable
from worker.ops.publish import check, line_error
from worker.settings import KafkaSettings


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b'{"message_id": "m"}', None),
        (b"{}", None),
        (b"{not json", "not JSON"),
        (b"[1]", "JSON array, not an object"),
        (b'"text"', "JSON string, not an object"),
        (b"null", "JSON null, not an object"),
        (b"12", "JSON number, not an object"),
    ],
)
def test_line_error(line: bytes, error: str | None) -> None:
    found = line_error(line)
    assert found == error if error is None else (found is not None and found.startswith(error))


def test_check_numbers_lines_as_an_editor_does() -> None:
    report = check(io.BytesIO(b'{"a": 1}\n\n   \nnope\r\n{"b": 2}\n[]'))
    assert report.valid == 2
    assert [number for number, _ in report.invalid] == [4, 6]


def _settings() -> KafkaSettings:
    return KafkaSettings(kafka_bootstrap_servers="127.0.0.1:9")


def test_replay_summary_by_reason_partition_and_returns() -> None:
    stats = ReplayStats(
        read=5,
        replayed_by_reason=Counter({"invalid_json": 2}),
        replayed_by_partition=Counter({0: 1, 2: 1}),
        skipped_by_reason=Counter({"invalid_json": 1, "processing_error": 2}),
        skipped_by_filter=Counter({"reason": 2, "organization": 1}),
        returned=[Returned(1, 17, "invalid_json")],
        boundary={0: 3, 1: 10, 2: 4},
        interrupted=True,
    )
    text = format_summary(stats, _settings())
    assert "read 5, replayed 2, skipped by filter 3" in text
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.startswith("  invalid_json")}
    assert rows == {"invalid_json": ["2", "1"]}
    assert "processing_error" in text
    assert "replayed by DLQ partition: 0: 1, 2: 1" in text
    assert "skipped by: organization 1, reason 2" in text
    assert "came straight back to the DLQ, not replayed again: 1 at 1:17 (invalid_json)" in text
    assert "DLQ end at start: partition 0: 3, partition 1: 10, partition 2: 4" in text
    assert "interrupted" in text
    dry = format_summary(ReplayStats(dry_run=True, read=1, replayed_by_reason=Counter({"x": 1})), _settings())
    assert "dry run: nothing sent" in dry and "would replay 1" in dry
    stuck = format_summary(ReplayStats(stuck="nothing returned for 60 s"), _settings())
    assert "stopped early: nothing returned for 60 s" in stuck


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_plain_lines_off_a_terminal_and_a_bar_on_one() -> None:
    plain = io.StringIO()
    with progress.ProgressReporter("dlq replay", 3, stream=plain) as reporter:
        reporter.advance(2)
        reporter.note("a note")
    assert plain.getvalue().splitlines() == ["dlq replay: 2/3", "a note"]  # at most one line per interval

    terminal = _Terminal()
    with progress.ProgressReporter("dlq replay", 3, stream=terminal) as reporter:
        reporter.advance(3)
    assert "\x1b[" in terminal.getvalue()  # drawn with terminal control sequences, then cleared
    assert reporter.done == 3


def test_print_env_without_a_running_dev_stack_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert dev.print_env(tmp_path) == 1
    assert "start `customer-worker dev` first" in capsys.readouterr().err
    # A file left by a dev that died is not taken for a running one.
    dead = 2**22 + 12345
    while True:
        try:
            os.kill(dead, 0)
        except ProcessLookupError:
            break
        dead += 1
    dev.env_file(tmp_path).write_text(f"# pid {dead}\nexport DATABASE_URL=x\n")
    assert dev.print_env(tmp_path) == 1
    dev.env_file(tmp_path).write_text(f"# pid {os.getpid()}\nexport DATABASE_URL=x\n")
    assert dev.print_env(tmp_path) == 0
    assert capsys.readouterr().out == f"# pid {os.getpid()}\nexport DATABASE_URL=x\n"


def test_readable_event_line_and_filter() -> None:
    event = {
        "event_type": "customer.rejected",
        "organization_id": "org_a",
        "external_id": "cus_1",
        "message_id": "m1",
        "occurred_at": "2026-11-30T10:00:00.000Z",
        "errors": {"currency": ["value_is_invalid"], "country": ["not_a_valid_country_code"]},
    }
    line = readable(event)
    assert "customer.rejected" in line and "org_a/cus_1" in line and "message m1" in line
    assert "currency: value_is_invalid; country: not_a_valid_country_code" in line
    assert EventFilter("org_a", frozenset({"customer.rejected"})).matches(event)
    assert not EventFilter("org_b").matches(event)
    assert not EventFilter(event_types=frozenset({"customer.created"})).matches(event)


def test_progress_off_a_terminal_ends_with_the_final_count() -> None:
    stream = io.StringIO()
    with progress.ProgressReporter("dlq replay", 9, stream=stream) as reporter:
        for _ in range(9):
            reporter.advance()
    assert stream.getvalue().splitlines() == ["dlq replay: 1/9", "dlq replay: 9/9"]

"""Errors a person can act on (issue 14): help text on every option, `run --help` naming the settings and exit
statuses, `--version`, and a port in use answered with exit 2 naming HTTP_PORT."""

from __future__ import annotations

import argparse
import socket
import subprocess
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from tests.harness.records import environ_without, run_cli
from worker.cli import build_parser
from worker.settings import Settings

pytestmark = pytest.mark.timeout(60)

_OURS = ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "HTTP_PORT", "PROVIDERS_FILE", "SIGNING_KEYS_FILE")


def _cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd, env=environ_without(_OURS, **env))


def _parsers(parser: argparse.ArgumentParser, path: str = "customer-worker") -> Iterator[tuple[str, Any]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def test_every_option_and_argument_has_help_text() -> None:
    missing = [
        f"{path}: {action.dest}"
        for path, parser in _parsers(build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction) and (not action.help or action.help == argparse.SUPPRESS)
    ]
    assert missing == []


def test_run_help_names_the_settings_and_the_exit_statuses(tmp_path: Path) -> None:
    result = _cli("run", "--help", cwd=tmp_path)
    assert result.returncode == 0
    for name in Settings.model_fields:
        assert name.upper() in result.stdout, name
    assert "README.md" in result.stdout
    for status in ("0  clean shutdown", "2  bad configuration", "HTTP_PORT already in use", "3  migrations pending"):
        assert status in result.stdout


def test_version(tmp_path: Path) -> None:
    result = _cli("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"customer-worker {version('customer-worker')}"


@pytest.mark.parametrize("command", [["run"], ["dev", "--data-dir", "data"]])
def test_a_port_in_use_exits_2_naming_http_port(tmp_path: Path, command: list[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _cli(
            *command,
            cwd=tmp_path,
            HTTP_PORT=str(port),
            DATABASE_URL="postgresql://postgres@127.0.0.1:9/none",
            KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9",
        )
    assert result.returncode == 2, result.stderr
    assert "HTTP_PORT" in result.stderr and str(port) in result.stderr
    assert "Traceback" not in result.stderr
    assert "export" not in result.stdout  # `dev` does not announce a port it cannot serve


@pytest.mark.parametrize("command", [["dlq", "replay", "--dry-run"], ["events", "tail"]])
def test_an_unreachable_broker_is_one_line_naming_the_setting(tmp_path: Path, command: list[str]) -> None:
    result = _cli(*command, cwd=tmp_path, KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9")
    assert result.returncode == 1, result.stderr
    assert "check KAFKA_BOOTSTRAP_SERVERS" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Unclosed" not in result.stderr

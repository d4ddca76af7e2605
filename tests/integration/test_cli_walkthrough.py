"""The README's walkthrough, followed as a user would (issue 14): `customer-worker dev` in one terminal, the lines
of the README's walkthrough block in another, each run by bash exactly as written, from a fresh clone of this
checkout's HEAD, and their output checked.

The clone gets the already installed virtualenv as its `.venv` (a symlink: installing one takes minutes), with
PYTHONPATH pointing at the clone so that the clone's code runs, not the checkout the venv was installed from; the
test checks that. `dev` gets a free HTTP_PORT (8080 may be taken on a shared machine); nothing else is added.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from worker.dev import free_port

pytestmark = [pytest.mark.timeout(300)]

CHECKOUT = Path(__file__).resolve().parents[2]
_OURS = re.compile(
    r"^(DATABASE_URL|KAFKA_\w+|\w+_TOPIC|HTTP_PORT|PROVIDERS_FILE|SIGNING_KEYS_FILE|REQUIRE_SIGNATURES)$"
)


def walkthrough_lines(readme: str) -> list[str]:
    block = readme.split("<!-- walkthrough:start -->", 1)[1].split("<!-- walkthrough:end -->", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("```")]


@pytest.fixture(scope="module")
def clone() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="cw-walkthrough-"))
    target = folder / "customer-worker"
    try:
        if (CHECKOUT / ".git").exists():
            subprocess.run(["git", "clone", "--quiet", str(CHECKOUT), str(target)], check=True, timeout=60)
        else:  # a source tree without git: follow the walkthrough in a copy of it
            shutil.copytree(CHECKOUT, target, ignore=shutil.ignore_patterns(".venv", ".devstack", "__pycache__"))
        (target / ".venv").symlink_to(Path(sys.prefix))
        yield target
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _user_env(clone: Path) -> dict[str, str]:
    """A user's shell: no worker settings of the test run, the clone's code first on the path."""
    env = {k: v for k, v in os.environ.items() if not _OURS.match(k)}
    env["PYTHONPATH"] = str(clone)
    return env


def _bash(line: str, clone: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", line], cwd=clone, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_the_readme_walkthrough_works_as_written(clone: Path) -> None:
    lines = walkthrough_lines((clone / "README.md").read_text(encoding="utf-8"))
    assert lines[:2] == ["source .venv/bin/activate", 'eval "$(customer-worker dev --print-env)"']
    user = _user_env(clone)
    which = _bash('source .venv/bin/activate && python -c "import worker; print(worker.__file__)"', clone, user)
    assert which.stdout.strip() == str(clone / "worker" / "__init__.py"), which

    dev_log = clone / "dev.stderr"
    with dev_log.open("w") as dev_err:
        dev = subprocess.Popen(
            [str(clone / ".venv" / "bin" / "customer-worker"), "dev"],
            cwd=clone,
            env={**user, "HTTP_PORT": str(free_port())},
            stdout=subprocess.PIPE,
            stderr=dev_err,
            text=True,
            start_new_session=True,
        )
    try:
        assert dev.stdout is not None
        announced = []
        for line in dev.stdout:
            announced.append(line)
            if "Ctrl-C stops everything" in line:
                break
        text = "".join(announced)
        for name in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "HTTP_PORT", "COMMANDS_TOPIC", "EVENTS_TOPIC"):
            assert f"export {name}=" in text, text
        assert "export KAFKA_ENABLE_IDEMPOTENCE=false" in text

        # The second terminal: activate, then eval the settings; every later line runs in that environment.
        setup = " && ".join(lines[:2])
        shell = _bash(f"{setup} && env -0", clone, user)
        assert shell.returncode == 0, shell.stderr
        env = dict(item.split("=", 1) for item in shell.stdout.split("\0") if "=" in item)
        assert env["KAFKA_ENABLE_IDEMPOTENCE"] == "false"
        assert env["DATABASE_URL"] in text

        outputs: dict[str, subprocess.CompletedProcess[str]] = {}
        for line in lines[2:]:
            if " events tail " in f"{line} ":
                outputs[line] = _follow(line, clone, env, events=2)
                _wait_for_dev_line(dev_log, "dlq_invalid_envelope=1")  # what the first terminal shows
                continue
            result = _bash(line, clone, env)
            assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"
            assert "Traceback" not in result.stderr, result.stderr
            outputs[line] = result

        by_command = {line.split("customer-worker ", 1)[1]: result.stdout for line, result in outputs.items()}
        assert (
            "dry run: 3 valid line(s), 0 invalid; would send 3"
            in by_command["publish --dry-run examples/commands.jsonl"]
        )
        assert "published 3 command(s) to customers.upsert.v1" in by_command["publish examples/commands.jsonl"]
        events = [orjson.loads(line) for line in by_command[_one(by_command, "events tail")].splitlines()]
        assert sorted(e["event_type"] for e in events) == ["customer.created", "customer.rejected"]
        rejected = next(e for e in events if e["event_type"] == "customer.rejected")
        assert rejected["errors"] == {"country": ["not_a_valid_country_code"], "currency": ["value_is_invalid"]}
        dry = by_command["dlq replay --dry-run"]
        assert "would replay 1" in dry and "invalid_envelope" in dry, dry
        replayed = by_command["dlq replay --reason invalid_envelope"]
        assert "replayed 1" in replayed, replayed
        assert "came straight back to the DLQ, not replayed again: 1" in replayed, replayed
    finally:
        os.killpg(dev.pid, signal.SIGINT)
        code = dev.wait(60)
    assert code == 0
    log = dev_log.read_text()
    assert "pg_ctl" not in log and "Running commandline" not in log
    assert "batch_applied" in log
    assert "command_rejected" not in log  # one line per batch, not per record
    assert "Traceback" not in log


def _one(by_command: dict[str, str], prefix: str) -> str:
    [key] = [key for key in by_command if key.startswith(prefix)]
    return key


def _follow(line: str, clone: Path, env: dict[str, str], *, events: int) -> subprocess.CompletedProcess[str]:
    """Run a following command until it printed `events` lines, then Ctrl-C it, as a user would."""
    process = subprocess.Popen(
        ["bash", "-c", line],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    printed = [process.stdout.readline() for _ in range(events)]
    os.killpg(process.pid, signal.SIGINT)
    rest, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    return subprocess.CompletedProcess(line, 0, "".join(printed) + rest, err)


def _wait_for_dev_line(log: Path, needle: str, timeout: float = 60) -> None:
    import time

    deadline = time.monotonic() + timeout
    while needle not in log.read_text():
        assert time.monotonic() < deadline, f"{needle!r} not in the dev log:\n{log.read_text()[-3000:]}"
        time.sleep(0.1)

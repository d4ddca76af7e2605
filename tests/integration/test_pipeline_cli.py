"""`customer-worker run` refuses bad configuration with exit code 2 and a message naming the setting (SPEC §10)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.harness.records import environ_without, run_cli
from worker.dev import free_port

pytestmark = pytest.mark.timeout(60)

EXIT_CONFIG = 2
_OURS = (
    "DATABASE_URL",
    "KAFKA_BOOTSTRAP_SERVERS",
    "HTTP_PORT",
    "PROVIDERS_FILE",
    "SIGNING_KEYS_FILE",
    "REQUIRE_SIGNATURES",
    "STRIPE_PIPELINE_TEST_KEY",
)


def run_worker(cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m worker run` from `cwd`, with only the given worker settings in its environment, and a free
    HTTP_PORT unless given: the default 8080 may be taken by another worker on the machine, and a run that got past
    its configuration would exit 2 on the port instead."""
    return run_cli("run", cwd=cwd, env=environ_without(_OURS, **{"HTTP_PORT": str(free_port()), **env}))


# Nothing listens there: a run that got past its configuration would wait for it instead of exiting.
UNREACHABLE = {"DATABASE_URL": "postgresql://postgres@127.0.0.1:9/none", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"}


def test_missing_database_url_exits_2_naming_it(tmp_path: Path) -> None:
    result = run_worker(tmp_path, KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9")
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert "DATABASE_URL" in result.stderr
    assert "KAFKA_BOOTSTRAP_SERVERS" not in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("value", ["eighty", "70000", "-1"])
def test_malformed_http_port_exits_2_naming_it(tmp_path: Path, value: str) -> None:
    result = run_worker(tmp_path, **UNREACHABLE, HTTP_PORT=value)
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert "HTTP_PORT" in result.stderr
    assert "DATABASE_URL" not in result.stderr
    assert value not in result.stderr  # the offending value is not echoed
    assert "Traceback" not in result.stderr


def test_providers_file_naming_an_unset_secret_env_exits_2_naming_the_variable(tmp_path: Path) -> None:
    providers = tmp_path / "providers.yaml"
    providers.write_text(
        "connections:\n"
        "  - organization_id: org_acme\n"
        "    code: stripe_main\n"
        "    provider: stripe\n"
        "    secret_env: STRIPE_PIPELINE_TEST_KEY\n",
        encoding="utf-8",
    )
    result = run_worker(tmp_path, **UNREACHABLE, PROVIDERS_FILE=str(providers))
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert "STRIPE_PIPELINE_TEST_KEY" in result.stderr
    assert "Traceback" not in result.stderr

    # Control: with the variable set, the same file passes the configuration check: the run then waits for
    # PostgreSQL, not ready, which its health endpoint and its log show.
    environment = {name: value for name, value in os.environ.items() if name not in _OURS}
    port = free_port()
    environment.update(
        UNREACHABLE, PROVIDERS_FILE=str(providers), STRIPE_PIPELINE_TEST_KEY="sk_test_x", HTTP_PORT=str(port)
    )
    waiting = waiting_for_postgres(tmp_path, environment, port)
    assert "STRIPE_PIPELINE_TEST_KEY" not in waiting


def waiting_for_postgres(cwd: Path, environment: dict[str, str], port: int) -> str:
    """Start `run`, wait until `/readyz` says the database is not ready and the log shows a retry of PostgreSQL,
    stop it with SIGTERM (exit 0) and return its stderr."""
    process = subprocess.Popen(
        [sys.executable, "-m", "worker", "run"],
        cwd=cwd,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        readiness: dict[str, Any] | None = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
            except urllib.error.HTTPError as error:
                readiness = json.loads(error.read())
                break
            except OSError:
                time.sleep(0.05)
        assert process.poll() is None, f"exited with {process.returncode}"
        assert readiness == {"status": "not_ready", "not_ready": ["database", "broker", "partitions"]}
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    retries = [line for line in map(_json_line, stderr.splitlines()) if line.get("event") == "dependency_retry"]
    # PostgreSQL and Kafka are readied side by side (issue 12): the unreachable broker is retried meanwhile as well.
    waited_for = {line["dependency"] for line in retries}
    assert "postgres" in waited_for and waited_for <= {"postgres", "kafka"}, stderr
    return stderr


def _json_line(line: str) -> dict[str, Any]:
    try:
        parsed = json.loads(line)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("garbage", id="garbage"),
        pytest.param("mysql://user:hunter2secret@db.example/app", id="mysql"),
        pytest.param("postgresql://user:hunter2secret@db.example:notaport/app", id="port-not-a-number"),
        pytest.param("postgresql://db.example:70000/app", id="port-out-of-range"),
        pytest.param("postgresql://user:hunter2secret@db.example:5432/app?sslmode=bogus", id="client-option"),
    ],
)
def test_outcome8_malformed_database_url_exits_2_without_echoing_it(tmp_path: Path, value: str) -> None:
    result = run_worker(tmp_path, DATABASE_URL=value, KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9")
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert "DATABASE_URL" in result.stderr
    assert "hunter2secret" not in result.stderr and "db.example" not in result.stderr and "garbage" not in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("value", ["127.0.0.1:notaport", "broker:70000", "broker:9092,", "host/path:9092"])
def test_outcome8_malformed_bootstrap_servers_exit_2_without_echoing_them(tmp_path: Path, value: str) -> None:
    result = run_worker(tmp_path, DATABASE_URL=UNREACHABLE["DATABASE_URL"], KAFKA_BOOTSTRAP_SERVERS=value)
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert "KAFKA_BOOTSTRAP_SERVERS" in result.stderr
    assert value not in result.stderr
    assert "Traceback" not in result.stderr


def test_outcome8_rejected_database_credentials_exit_2(tmp_path: Path, pg_dsn: str) -> None:
    """The server is up and refuses the role: waiting would never end."""
    parts = urlsplit(pg_dsn)
    host = parts.netloc.rpartition("@")[2]
    dsn = urlunsplit(parts._replace(netloc=f"no_such_role_x:wrong-password-x@{host}"))
    result = run_worker(tmp_path, DATABASE_URL=dsn, KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9", HTTP_PORT="0")
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert "DATABASE_URL" in result.stderr
    assert "wrong-password-x" not in result.stderr and "no_such_role_x" not in result.stderr
    assert "Traceback" not in result.stderr


def test_outcome8_an_unreachable_database_is_waited_for(tmp_path: Path) -> None:
    environment = {name: value for name, value in os.environ.items() if name not in _OURS}
    port = free_port()
    environment.update(UNREACHABLE, HTTP_PORT=str(port))
    waiting_for_postgres(tmp_path, environment, port)

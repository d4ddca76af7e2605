"""`customer-worker run` refuses bad configuration with exit code 2 and a message naming the setting (SPEC §10)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    """`python -m worker run` from `cwd`, with only the given worker settings in its environment."""
    environment = {name: value for name, value in os.environ.items() if name not in _OURS}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-m", "worker", "run"],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


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

    # Control: with the variable set, the same file passes the configuration check (the run then waits for
    # PostgreSQL, so it is stopped by the timeout rather than exiting 2).
    environment = {name: value for name, value in os.environ.items() if name not in _OURS}
    environment.update(UNREACHABLE, PROVIDERS_FILE=str(providers), STRIPE_PIPELINE_TEST_KEY="sk_test_x", HTTP_PORT="0")
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run(
            [sys.executable, "-m", "worker", "run"],
            cwd=tmp_path,
            env=environment,
            capture_output=True,
            timeout=2,
            check=False,
        )

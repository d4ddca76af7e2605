"""`customer-worker dev --console`, the one command docs/console.md gives to try the console: the dev stack, its
worker and the console, with a dev operator token printed once; Ctrl-C stops everything."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from worker.dev import free_port

pytestmark = pytest.mark.timeout(120)


def test_dev_console_serves_the_console_with_a_printed_dev_token(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "HTTP_PORT": str(free_port()), "CONSOLE_PORT": str(port)}
    for name in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "CONSOLE_TOKENS_FILE", "PROVIDERS_FILE"):
        env.pop(name, None)
    errors = (tmp_path / "stderr.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "worker", "dev", "--console", "--data-dir", str(tmp_path / "devstack")],
        stdout=subprocess.PIPE,
        stderr=errors,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        line, deadline = "", time.monotonic() + 60
        while "Console:" not in line and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                raise AssertionError((tmp_path / "stderr.log").read_text()[-3000:])
        found = re.search(r"Console: (http://\S+/)\s+\(sign in with the dev token (\S+)\)", line)
        assert found, line
        base, token = found.group(1).rstrip("/"), found.group(2)
        assert base == f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, follow_redirects=True) as client:
            for _ in range(100):  # the console listens a moment after the line is printed
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.ConnectError:
                    time.sleep(0.1)
            response = client.post("/sign-in", data={"token": token}, headers={"Origin": base})
            assert response.status_code == 200 and "Overview" in response.text and "dev-operator" in response.text
        assert token not in (tmp_path / "devstack" / "console-tokens.yaml").read_text()  # only its hash is kept
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(30)
        errors.close()
    assert code == 0

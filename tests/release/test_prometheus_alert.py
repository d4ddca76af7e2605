"""A real Prometheus (Debian's `prometheus`, on loopback) scrapes a running worker, answers its series through the
query API and moves an alert to pending when its condition becomes true."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.harness.in_process import live_worker
from worker.dev import EmbeddedPostgres, free_port

ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yaml"

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        pytest.skip("prometheus is not installed (apt-get install prometheus; CI installs it)")
    return found


@pytest.fixture
def private_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of this test's own: the test stops it to make the worker not ready."""
    folder = Path(tempfile.mkdtemp(prefix="cw-test-prom-pg-"))
    server = EmbeddedPostgres(folder / "data", fast=True)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


async def _query(session: aiohttp.ClientSession, base: str, path: str, **params: str) -> Any:
    async with session.get(f"{base}{path}", params=params) as response:
        body = await response.json()
        assert body["status"] == "success", body
        return body["data"]


async def _until(check: Any, timeout: float, what: str) -> Any:  # noqa: ASYNC109
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not seen after {timeout} s")
        await asyncio.sleep(0.5)


async def test_prometheus_scrapes_the_worker_and_the_not_ready_alert_goes_pending(
    prometheus_binary: str, private_postgres: EmbeddedPostgres, kafka_bootstrap: str, tmp_path: Path
) -> None:
    async with live_worker(private_postgres.dsn, kafka_bootstrap) as live:
        port = free_port()
        (tmp_path / "alerts.yaml").write_text(ALERTS.read_text())
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp_path / "alerts.yaml")],
            "scrape_configs": [
                {"job_name": "customer-worker", "static_configs": [{"targets": [f"127.0.0.1:{live.http_port}"]}]}
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        server = await asyncio.create_subprocess_exec(
            prometheus_binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as session:

                async def ready_series() -> Any:
                    try:
                        result = await _query(session, base, "/api/v1/query", query="customer_worker_ready")
                    except aiohttp.ClientConnectionError:
                        return None
                    return result["result"]

                series = await _until(ready_series, 60, "customer_worker_ready in Prometheus")
                assert series[0]["value"][1] == "1"
                assert series[0]["metric"]["job"] == "customer-worker"
                commands = await _query(session, base, "/api/v1/query", query="customer_worker_commands_total")
                assert {s["metric"]["outcome"] for s in commands["result"]} >= {"created", "rejected"}

                async def not_ready_alert() -> Any:
                    alerts = (await _query(session, base, "/api/v1/alerts"))["alerts"]
                    return [a for a in alerts if a["labels"]["alertname"] == "CustomerWorkerNotReady"]

                assert await not_ready_alert() == []
                await asyncio.to_thread(private_postgres.stop)  # the condition: the database is gone
                (alert,) = await _until(not_ready_alert, 60, "CustomerWorkerNotReady pending")
                assert alert["state"] == "pending"  # `for: 5m` holds it there
                assert alert["labels"]["instance"] == f"127.0.0.1:{live.http_port}"
        finally:
            await asyncio.to_thread(private_postgres.start)  # so the worker stops cleanly
            server.terminate()
            await asyncio.wait_for(server.wait(), timeout=30)

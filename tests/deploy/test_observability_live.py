"""The dashboard and the alert rules against a running worker: every metric they reference is exported on a live
/metrics, and a real Prometheus (Debian's `prometheus`, on loopback) scrapes the worker, answers its series through
the query API and moves an alert to pending when its condition becomes true."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import new_database
from tests.deploy.live import live_worker
from worker.dev import EmbeddedPostgres, free_port

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "customer-worker.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
_METRIC = re.compile(r"\bcustomer_worker_[a-z_]+\b")

pytestmark = pytest.mark.timeout(180)


def _dashboard_metrics() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return {name for panel in dashboard["panels"] for t in panel["targets"] for name in _METRIC.findall(t["expr"])}


def _alert_metrics() -> set[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return {name for group in rules["groups"] for rule in group["rules"] for name in _METRIC.findall(rule["expr"])}


def _exported(exposition: str) -> set[str]:
    """Names a Prometheus text exposition offers: its samples, and the series of every declared family (a labelled
    gauge such as the lag has no sample before its first value, but is declared from the start)."""
    names = {line.split("{")[0].split(" ")[0] for line in exposition.splitlines() if line and line[0] != "#"}
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            suffixes = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",)}.get(kind, ())
            names |= {family, *(family + suffix for suffix in suffixes)}
    return names


def test_the_dashboard_covers_what_operators_watch() -> None:
    used = _dashboard_metrics()
    for needed in (
        "customer_worker_commands_total",
        "customer_worker_consumer_lag",
        "customer_worker_processing_seconds_bucket",
        "customer_worker_outbox_backlog",
        "customer_worker_outbox_oldest_age_seconds",
        "customer_worker_events_parked_total",
        "customer_worker_dlq_total",
        "customer_worker_provider_calls_total",
        "customer_worker_ready",
    ):
        assert needed in used, needed


async def test_the_dashboard_and_alerts_reference_only_metrics_a_live_worker_exports(
    pg_dsn: str, kafka_bootstrap: str
) -> None:
    async with new_database(pg_dsn, "test_dashboard") as dsn, live_worker(dsn, kafka_bootstrap) as live:
        exported = _exported(await live.metrics())
    missing = (_dashboard_metrics() | _alert_metrics()) - exported
    assert missing == set(), f"referenced but not exported: {sorted(missing)}"


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


@pytest.mark.slow
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

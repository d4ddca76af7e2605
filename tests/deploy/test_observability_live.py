"""The dashboard and the alert rules against a running worker: every metric they reference is exported on a live
/metrics (a real Prometheus scraping it: tests/release/test_prometheus_alert.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.harness.database import new_database
from tests.harness.in_process import live_worker

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

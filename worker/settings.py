"""Runtime settings, read from the environment under the names of SPEC §10."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Final, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

_HOST_PORT: Final = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[^\s/:@\[\],]+)(?::(\d{1,5}))?")


def _port_ok(port: str | None) -> bool:
    return port is None or 1 <= int(port) <= 65535


def _check_bootstrap_servers(value: str) -> str:
    """`host[:port]` entries, comma-separated, as every Kafka client takes them. The messages never quote the
    value: a misplaced secret must not end up in a log."""
    entries = [entry.strip() for entry in value.split(",")]
    if not any(entries):
        raise ValueError("must list at least one host[:port]")
    for entry in entries:
        match = _HOST_PORT.fullmatch(entry)
        if match is None or not _port_ok(match.group(1)):
            raise ValueError("each entry must be host[:port] with a port from 1 to 65535")
    return value


def _check_database_url(value: SecretStr) -> SecretStr:
    """A `postgresql://` (or `postgres://`) URL whose hosts and ports are well formed; one or several hosts (failover
    lists), or none with `?host=/socket/dir`. The server checks the rest when the worker connects."""
    url = value.get_secret_value()
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValueError("must be a postgresql:// URL") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError("must be a postgresql:// URL")
    hosts = parts.netloc.rpartition("@")[2]
    for entry in filter(None, hosts.split(",")):
        if entry.startswith("%2F"):
            continue  # a percent-encoded unix socket directory
        match = _HOST_PORT.fullmatch(entry)
        if match is None or not _port_ok(match.group(1)):
            raise ValueError("each host must be host[:port] with a port from 1 to 65535")
    return value


def revealed(value: SecretStr | str) -> str:
    """The plain value, at the one place a connection is opened (a DSN given as text by tests passes through)."""
    return value.get_secret_value() if isinstance(value, SecretStr) else value


BootstrapServers = Annotated[str, AfterValidator(_check_bootstrap_servers)]
DatabaseUrl = Annotated[SecretStr, AfterValidator(_check_database_url)]


class KafkaSettings(BaseSettings):
    """Broker connection, shared by the worker, the relay and every CLI command that talks to Kafka."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)

    kafka_bootstrap_servers: BootstrapServers
    kafka_group_id: str = "customer-worker"
    commands_topic: str = "customers.upsert.v1"
    events_topic: str = "customers.events.v1"
    dlq_topic: str = "customers.upsert.v1.dlq"
    kafka_enable_idempotence: bool = True
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_session_timeout_ms: int = Field(default=10_000, ge=1_000)
    kafka_fetch_max_wait_ms: int = Field(default=20, ge=0)
    kafka_max_request_size: int = Field(default=1024 * 1024, ge=64 * 1024)


class DatabaseSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)

    # A secret: it usually carries the password. `.get_secret_value()` only where a connection is opened.
    database_url: DatabaseUrl


class SigningSettings(BaseSettings):
    """Producer signing keys: verified by the worker, used by `customer-worker publish` to sign."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)

    signing_keys_file: Path | None = None


class Settings(KafkaSettings, DatabaseSettings, SigningSettings):
    """Everything `customer-worker run` needs; every one is documented in docs/configuration.md."""

    providers_file: Path | None = None
    require_signatures: bool = False
    shutdown_timeout: float = Field(default=30.0, gt=0)
    http_port: int = Field(default=8080, ge=0, le=65535)
    # Where /healthz, /readyz and /metrics listen; the processes of `WORKER_PROCESSES` > 1 listen on 127.0.0.1.
    http_host: str = "0.0.0.0"
    # Worker processes in this replica (one core each), under one HTTP endpoint: see docs/operations.md "Processes".
    worker_processes: int = Field(default=1, ge=1, le=64)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "debug", "info", "warning", "error"] = "INFO"
    log_format: Literal["json", "console"] = "json"

    batch_size: int = Field(default=1_000, ge=1, le=10_000)
    batch_timeout_ms: int = Field(default=50, ge=0)
    inbox_retention_days: float = Field(default=7.0, gt=0)
    poison_max_attempts: int = Field(default=3, ge=1)
    db_pool_size: int = Field(default=4, ge=1)
    relay_batch_size: int = Field(default=1_000, ge=1)
    relay_idle_interval: float = Field(default=0.05, gt=0)
    provider_max_attempts: int = Field(
        default=6,
        ge=1,
        description="attempts of a provider job that may end through a fault of the worker (a crash, a lost lease, "
        "an internal error); waiting on the provider is not bounded (contract §9)",
    )
    provider_concurrency: int = Field(default=8, ge=1)
    provider_sync_budget: float = Field(default=5.0, gt=0)
    # Provider jobs wait out everything that says nothing about the customer (SPEC §9, settled 2026-12-06).
    provider_backoff_max: float = Field(
        default=300.0,
        gt=0,
        le=3600,
        description="seconds: cap of the backoff between two attempts of a waiting provider job (minutes, not hours)",
    )
    provider_connection_concurrency: int | None = Field(
        default=None,
        ge=1,
        description="provider jobs of one connection in hand at once per worker; unset: PROVIDER_CONCURRENCY less a "
        "quarter (at least 1), so other connections always find a free slot",
    )
    provider_credential_check_interval: float = Field(
        default=60.0,
        gt=0,
        description="seconds between test calls of a connection whose credentials were refused (401/403); the first "
        "that succeeds resumes its jobs on every replica",
    )
    provider_search_window: float = Field(
        default=3600.0,
        ge=0,
        description="seconds search must keep missing after a dead end (stored 5xx, key mismatch) before a create "
        "under a derived key: Stripe's search can lag writes by up to an hour during incidents",
    )
    # Seconds an `occurred_at` may be ahead of the worker's clock before it is `value_is_invalid` (SPEC §12).
    max_clock_skew: float = Field(default=3600.0, ge=0)
    liveness_event_loop_stall: float = Field(
        default=10.0,
        gt=0,
        description="seconds the event loop may go without running before /healthz fails (`event_loop`); it "
        "fails as long again after the loop ran",
    )
    liveness_consumer_stall: float = Field(
        default=300.0,
        gt=0,
        description="seconds records may wait on an assigned partition with no offset committed, and no database "
        "or broker outage known, before /healthz fails (`consumer`)",
    )
    liveness_loop_failing: float = Field(
        default=300.0,
        gt=0,
        description="seconds a background loop may keep failing (restarted with backoff) before /healthz fails",
    )
    consumer_lag_interval: float = Field(
        default=5.0,
        gt=0,
        description="seconds between two readings of the consumer lag and committed offsets (`consumer_lag`, "
        "the consumer stall check)",
    )


def describe_errors(exc: ValidationError) -> str:
    """One line per bad setting, named as its environment variable; the offending value is never echoed."""
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        name = str(error["loc"][0]).upper() if error["loc"] else "(settings)"
        lines.append(f"{name}: {error['msg']}")
    return "; ".join(lines)

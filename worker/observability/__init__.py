"""Logs, metrics and the health endpoints: `logs` (with `redaction`), `metrics`, `health`.

Logging: one structured line per entry, JSON in production (``LOG_FORMAT=json``) or a console rendering for people.
Both structlog loggers and stdlib loggers of libraries (aiokafka, asyncpg, ...) go through the same
processors, so a library's exception is one structured line with ``error`` / ``error_type`` / ``traceback`` fields,
never a raw traceback on stderr. Personal data and secrets never belong in a log line: log ids and counts, not
customer values. The ``redact`` processor is a safety net for mistakes, not a licence: it drops known personal-data
and secret keys (also inside nested mappings) and masks e-mail addresses and URL credentials in strings.

Metrics: a `Metrics` object owns its own ``CollectorRegistry``. Label values are closed sets (outcomes, reasons,
dependencies, providers, partition numbers); organization ids, external ids and personal data are never labels.

Health: `Health` holds the readiness and liveness checks (`liveness`: the event-loop watchdog and the consumer
progress), `HealthServer` serves ``/healthz``, ``/readyz`` and ``/metrics``.
"""

from worker.contract.codes import DlqReason, ProviderCallOutcome
from worker.contract.connections import PROVIDERS
from worker.observability.health import Health, HealthServer
from worker.observability.liveness import ConsumerProgress, EventLoopWatchdog, Position
from worker.observability.logs import (
    NOISY_LIBRARIES,
    LogFormat,
    Logger,
    adopt_library_loggers,
    configure_logging,
    get_logger,
    record_context,
)
from worker.observability.metrics import (
    BACKGROUND_LOOPS,
    COMMAND_OUTCOMES,
    DEPENDENCIES,
    DLQ_REASONS,
    DROP_REASONS,
    PARK_REASONS,
    PROVIDER_CALL_OUTCOMES,
    PROVIDER_JOB_STATUSES,
    BackgroundLoop,
    CommandOutcome,
    Metrics,
    export_readiness,
)
from worker.observability.pipeline import BatchObserver, DependencyWatch
from worker.observability.redaction import REDACTED_KEYS, redact, safe_message
from worker.outages import Dependency

__all__ = [
    "BACKGROUND_LOOPS",
    "COMMAND_OUTCOMES",
    "DEPENDENCIES",
    "DLQ_REASONS",
    "DROP_REASONS",
    "NOISY_LIBRARIES",
    "PARK_REASONS",
    "PROVIDERS",
    "PROVIDER_CALL_OUTCOMES",
    "PROVIDER_JOB_STATUSES",
    "REDACTED_KEYS",
    "BackgroundLoop",
    "BatchObserver",
    "CommandOutcome",
    "ConsumerProgress",
    "Dependency",
    "DependencyWatch",
    "DlqReason",
    "EventLoopWatchdog",
    "Health",
    "HealthServer",
    "LogFormat",
    "Logger",
    "Metrics",
    "Position",
    "ProviderCallOutcome",
    "adopt_library_loggers",
    "configure_logging",
    "export_readiness",
    "get_logger",
    "record_context",
    "redact",
    "safe_message",
]

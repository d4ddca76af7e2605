"""The configuration reference of docs/configuration.md, generated from the settings model (`worker.settings.Settings`).

    python -m worker.dev.config_reference           # prints the table
    python -m worker.dev.config_reference --write   # rewrites it in docs/configuration.md, between the markers

A test checks that the document holds exactly what this generates, so a new setting cannot go undocumented: a field
without a `description=` and without an entry below fails the generation.
"""

from __future__ import annotations

import sys
import types
import typing
from pathlib import Path
from typing import Any, Final

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from worker.settings import Settings

START: Final = "<!-- config-reference:start (generated: python -m worker.dev.config_reference --write) -->"
END: Final = "<!-- config-reference:end -->"
DOCUMENT: Final = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"

# Meanings of the settings that carry no `description=` in the model.
_DESCRIPTIONS: Final = {
    "kafka_bootstrap_servers": "Kafka bootstrap servers, `host:port[,host:port...]`",
    "kafka_group_id": "consumer group of the workers",
    "commands_topic": "topic of the commands (contract §1)",
    "events_topic": "topic of the result events",
    "dlq_topic": "dead-letter topic",
    "kafka_enable_idempotence": "idempotent producer (false only for brokers without it, e.g. Tansu)",
    "kafka_security_protocol": "Kafka security protocol",
    "kafka_sasl_mechanism": "SASL mechanism",
    "kafka_sasl_username": "SASL user",
    "kafka_sasl_password": "SASL password (secret: pass it from a secret store)",
    "kafka_ssl_cafile": "CA bundle to verify the brokers",
    "kafka_session_timeout_ms": "consumer group session timeout (failover time after a crash)",
    "kafka_fetch_max_wait_ms": "broker-side wait of an empty fetch; bounds idle latency",
    "kafka_max_request_size": "largest record the producers send (events, DLQ copies)",
    "database_url": "PostgreSQL DSN (secret: it holds the password)",
    "signing_keys_file": "YAML/JSON file `{organization_id: [secret, ...]}` (contract §8)",
    "providers_file": "YAML/JSON file of payment provider connections (contract §9)",
    "require_signatures": "reject commands of organizations without signing keys",
    "shutdown_timeout": "seconds from SIGTERM to exit: in-flight batch, then outbox drain",
    "http_port": "port of /healthz, /readyz and /metrics",
    "http_host": "address /healthz, /readyz and /metrics listen on",
    "worker_processes": "worker processes in the replica, one core each, under one HTTP endpoint (`run --processes`)",
    "log_level": "log level",
    "log_format": "`json` (one object per line) or `console`",
    "batch_size": "records per consumed batch at most (one transaction each)",
    "batch_timeout_ms": "how long a batch waits to fill",
    "inbox_retention_days": "days processed message ids are kept (contract §5: at least 7)",
    "poison_max_attempts": "attempts of a failure that is not an outage before the record goes to the DLQ",
    "db_pool_size": "PostgreSQL connections per worker",
    "relay_batch_size": "outbox rows published per relay round",
    "relay_idle_interval": "relay poll interval when idle, seconds",
    "provider_max_attempts": "provider call attempts (contract §9)",
    "provider_concurrency": "provider calls in flight per worker",
    "provider_sync_budget": "seconds of inline provider calls for `sync: true`",
    "max_clock_skew": "seconds an `occurred_at` may lie ahead of the worker's clock before it is `value_is_invalid`",
}


def _type(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{value}`" for value in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type(arg) for arg in typing.get_args(annotation) if arg is not type(None))
    if annotation is SecretStr:
        return "secret string"
    if annotation is Path:
        return "file path"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    if field.default is PydanticUndefined or field.default is None:
        return "unset"
    if isinstance(field.default, bool):
        return f"`{str(field.default).lower()}`"
    return f"`{field.default}`"


def _bounds(field: FieldInfo) -> str:
    parts = []
    for item in field.metadata:
        for name, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(item, name, None)
            if value is not None:
                parts.append(f"{sign} {value}")
    return f" ({', '.join(parts)})" if parts else ""


def reference() -> str:
    lines = ["| variable | type | default | meaning |", "|---|---|---|---|"]
    for name, field in sorted(Settings.model_fields.items()):
        description = field.description or _DESCRIPTIONS.get(name)
        if description is None:
            raise KeyError(f"setting {name.upper()} has no description: add one to worker/dev/config_reference.py")
        kind = _type(field.annotation) + _bounds(field)
        lines.append(f"| `{name.upper()}` | {kind} | {_default(field)} | {description} |")
    return "\n".join(lines) + "\n"


def render(document: str) -> str:
    head, _, rest = document.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{reference()}{END}{tail}"


def main(argv: list[str]) -> int:
    if "--write" in argv:
        DOCUMENT.write_text(render(DOCUMENT.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        sys.stdout.write(reference())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

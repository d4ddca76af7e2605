"""aiokafka client options from settings (SPEC §10 `KAFKA_*`), shared by every producer and admin client."""

from __future__ import annotations

import ssl
from typing import Any

from worker.settings import KafkaSettings


def ssl_context(settings: KafkaSettings) -> ssl.SSLContext | None:
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    context = ssl.create_default_context(
        cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile is not None else None
    )
    return context


def client_options(settings: KafkaSettings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
        "client_id": "customer-worker",
    }
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism or "PLAIN"
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = (
            settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None
        )
    return options


def producer_options(settings: KafkaSettings) -> dict[str, Any]:
    return {
        **client_options(settings),
        "acks": "all",
        "enable_idempotence": settings.kafka_enable_idempotence,
        # The DLQ must be able to copy the largest record the commands topic holds (too_large included).
        "max_request_size": settings.kafka_max_request_size,
        "linger_ms": 2,
        "max_batch_size": min(256 * 1024, settings.kafka_max_request_size),
        "request_timeout_ms": 30_000,
    }

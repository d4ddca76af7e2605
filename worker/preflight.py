"""Start-up check that tells a wrong broker credential from an unreachable broker (SPEC §12 Settings).

aiokafka's bootstrap logs a refused SASL authentication and moves on to the next host, then reports only that it
could not bootstrap: a retriable connection error, which the worker would wait out forever. One connection made
here, the way the clients will make theirs, surfaces the broker's refusal itself, which `outages.rejected_setting`
turns into exit 2. Without SASL there is nothing to refuse, and nothing is checked.
"""

from __future__ import annotations

from typing import Final

from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import KafkaError

from worker.outages import DependencyUnavailableError, rejected_setting
from worker.settings import KafkaSettings
from worker.transport.options import client_options

_TIMEOUT_MS: Final = 10_000


async def check_kafka_credentials(settings: KafkaSettings) -> None:
    """Returns once a bootstrap server accepted the credentials; raises the broker's refusal; raises
    `DependencyUnavailableError` (an outage, retried) when no server could be reached."""
    if not settings.kafka_security_protocol.startswith("SASL"):
        return
    options = client_options(settings)
    for host, port, _ in collect_hosts(settings.kafka_bootstrap_servers):
        try:
            conn = await create_conn(
                host,
                port,
                client_id=options["client_id"],
                request_timeout_ms=_TIMEOUT_MS,
                ssl_context=options.get("ssl_context"),
                security_protocol=options["security_protocol"],
                sasl_mechanism=options["sasl_mechanism"],
                sasl_plain_username=options["sasl_plain_username"],
                sasl_plain_password=options["sasl_plain_password"],
            )
        except KafkaError as exc:
            if rejected_setting(exc) is not None:
                raise
            continue
        except (OSError, TimeoutError):
            continue
        conn.close()
        return
    raise DependencyUnavailableError("kafka: no bootstrap server could be reached")

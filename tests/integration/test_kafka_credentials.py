"""Issue 9, outcome 8: a broker that refuses the SASL credentials stops `run` with exit 2, naming the settings and
not showing them; an unreachable broker is waited for.

Tansu cannot refuse SASL credentials cleanly (it closes the connection), so the broker here is a minimal one that
speaks the three requests of a SASL login with aiokafka's own protocol classes, and refuses the login the way
Apache Kafka does (SaslAuthenticate error 58, SASL_AUTHENTICATION_FAILED)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka.errors import SaslAuthenticationFailed
from aiokafka.protocol.admin import (
    ApiVersionResponse_v0,
    SaslAuthenticateResponse_v0,
    SaslHandShakeResponse_v0,
    SaslHandShakeResponse_v1,
)

from tests.harness.database import migrate_database
from worker.dev import free_port
from worker.outages import DependencyUnavailableError, rejected_setting
from worker.preflight import check_kafka_credentials
from worker.settings import KafkaSettings

pytestmark = pytest.mark.timeout(60)

_API_VERSIONS, _SASL_HANDSHAKE, _SASL_AUTHENTICATE = 18, 17, 36
_SASL_AUTHENTICATION_FAILED = 58


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            (size,) = struct.unpack(">i", await reader.readexactly(4))
            request = await reader.readexactly(size)
            api_key, api_version, correlation_id = struct.unpack(">hhi", request[:8])
            if api_key == _API_VERSIONS:
                body = ApiVersionResponse_v0(
                    error_code=0,
                    api_versions=[(_API_VERSIONS, 0, 0), (_SASL_HANDSHAKE, 0, 1), (_SASL_AUTHENTICATE, 0, 0)],
                ).encode()
            elif api_key == _SASL_HANDSHAKE:
                handshake = SaslHandShakeResponse_v1 if api_version else SaslHandShakeResponse_v0
                body = handshake(error_code=0, enabled_mechanisms=["PLAIN"]).encode()
            elif api_key == _SASL_AUTHENTICATE:
                body = SaslAuthenticateResponse_v0(
                    error_code=_SASL_AUTHENTICATION_FAILED,
                    error_message="Authentication failed: Invalid username or password",
                    sasl_auth_bytes=b"",
                ).encode()
            else:
                return
            writer.write(struct.pack(">ii", 4 + len(body), correlation_id) + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        return
    finally:
        writer.close()


@pytest.fixture
async def refusing_broker() -> AsyncIterator[str]:
    server = await asyncio.start_server(_serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()


def _sasl(bootstrap: str) -> KafkaSettings:
    return KafkaSettings(
        kafka_bootstrap_servers=bootstrap,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="worker",
        kafka_sasl_password="wrong-password-x",  # type: ignore[arg-type]
    )


async def test_outcome8_refused_sasl_credentials_are_a_setting_error(refusing_broker: str) -> None:
    with pytest.raises(SaslAuthenticationFailed) as caught:
        await check_kafka_credentials(_sasl(refusing_broker))
    message = rejected_setting(caught.value)
    assert message is not None and "KAFKA_SASL_PASSWORD" in message and "wrong-password-x" not in message


async def test_outcome8_unreachable_sasl_broker_is_an_outage() -> None:
    with pytest.raises(DependencyUnavailableError):
        await check_kafka_credentials(_sasl(f"127.0.0.1:{free_port()}"))


async def test_outcome8_run_exits_2_when_the_broker_refuses_the_credentials(
    tmp_path: Path, fresh_database: str, refusing_broker: str
) -> None:
    await migrate_database(fresh_database)
    environment = {name: value for name, value in os.environ.items() if not name.startswith(("KAFKA_", "DATABASE_"))}
    environment.update(
        DATABASE_URL=fresh_database,
        KAFKA_BOOTSTRAP_SERVERS=refusing_broker,
        KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        KAFKA_SASL_MECHANISM="PLAIN",
        KAFKA_SASL_USERNAME="worker",
        KAFKA_SASL_PASSWORD="wrong-password-x",
        HTTP_PORT="0",
    )
    for name in ("PROVIDERS_FILE", "SIGNING_KEYS_FILE", "REQUIRE_SIGNATURES"):
        environment.pop(name, None)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "run",
        cwd=tmp_path,
        env=environment,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, stderr_bytes = await asyncio.wait_for(process.communicate(), timeout=40)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    stderr = stderr_bytes.decode()
    assert process.returncode == 2, stderr
    assert "KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD" in stderr
    assert "wrong-password-x" not in stderr
    assert "Traceback" not in stderr

"""Container backends of the integration suite, through testcontainers (TEST_POSTGRES=container)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

POSTGRES_IMAGE = "localhost/customer-worker-test-postgres:latest"
_HERE = Path(__file__).resolve().parent


def engine_problem() -> str | None:
    """Why no Docker-API engine can be used, in one line; None when DOCKER_HOST answers."""
    host = os.environ.get("DOCKER_HOST", "")
    if not host:
        return "DOCKER_HOST is not set (e.g. podman system service unix:///run/cw-podman.sock)"
    if host.startswith("unix://"):
        path = urlsplit(host).path
        try:
            with socket.socket(socket.AF_UNIX) as probe:
                probe.connect(path)
        except OSError as exc:
            return f"no engine answers at {host} ({exc.strerror or type(exc).__name__})"
    return None


def postgres_container() -> Iterator[str]:
    """A PostgreSQL in a container built from Debian's package; yields its DSN and removes the container (Ryuk, the
    usual reaper, cannot be pulled without a registry)."""
    problem = engine_problem()
    if problem is not None:
        pytest.skip(f"PostgreSQL container backend skipped: {problem}")
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    if os.environ["DOCKER_HOST"].startswith("unix://"):
        # A local engine publishes ports on this host; without this, testcontainers asks for the bridge address
        # when it believes it runs in a container itself, which podman does not report the Docker way.
        os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")
        os.environ.setdefault("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.image import DockerImage

    with DockerImage(
        path=_HERE / "postgres", dockerfile_path="Containerfile", tag=POSTGRES_IMAGE, clean_up=False
    ) as image:
        container = DockerContainer(str(image)).with_exposed_ports(5432)
        container.start()
        try:
            dsn = (
                f"postgresql://postgres@{container.get_container_host_ip()}:{container.get_exposed_port(5432)}/postgres"
            )
            _wait_accepting(dsn)
            yield dsn
        finally:
            container.stop()


def _wait_accepting(dsn: str, timeout: float = 60) -> None:
    import asyncio

    import asyncpg

    async def probe() -> None:
        connection = await asyncpg.connect(dsn, timeout=2)
        await connection.close()

    deadline = time.monotonic() + timeout
    while True:
        try:
            asyncio.run(probe())
            return
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)

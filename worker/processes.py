"""`customer-worker run` with WORKER_PROCESSES > 1: N worker processes of one replica, one HTTP endpoint.

Python runs one core per process, so a replica that should use several cores runs several workers. Each child is a
whole worker (`customer-worker run` with WORKER_PROCESSES=1): its own consumer in the group, pool and producer, the
same delivery guarantees. The parent only supervises:

* `/metrics` adds up the children's metrics (prometheus-client multiprocess mode: each child writes its values to
  files in a private folder; gauges carry a `pid` label);
* `/readyz` answers 200 when every child is ready (each child's own endpoint, on a loopback port, is asked twice a
  second); `/healthz` 200 while every child runs;
* SIGTERM and SIGINT are passed on to every child, each of which drains as a single worker does; a child that ends
  by itself stops the others and the parent exits with its status, so that the orchestrator restarts the replica
  (a crashed child's partitions are reassigned to the other consumers of the group meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import sys
import tempfile
from typing import Final

import aiohttp
import structlog
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, Gauge, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from worker import shutdown
from worker.errors import ConfigurationError
from worker.observability import HealthServer
from worker.settings import Settings

log = structlog.get_logger("worker.processes")

_READY_POLL: Final = 0.5


def _stop_with_parent() -> None:
    """In the child, before it runs: SIGTERM when the supervisor dies, even by SIGKILL (Linux), so that no worker
    outlives its replica; the child then stops as it does on any SIGTERM."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ChildrenHealth:
    """Readiness of the children, as last asked; the shape `HealthServer` expects of `Health`."""

    def __init__(self, count: int) -> None:
        self.ready_children = [False] * count
        self.running = True

    @property
    def ready(self) -> bool:
        return not self.not_ready()

    def not_ready(self) -> list[str]:
        return [f"process_{index}" for index, ready in enumerate(self.ready_children) if not ready]


class CombinedMetrics:
    """The children's metrics added up (multiprocess mode), plus the replica's readiness."""

    def __init__(self, folder: str, health: ChildrenHealth) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        MultiProcessCollector(self.registry, path=folder)  # type: ignore[no-untyped-call]
        Gauge("customer_worker_ready", "1 when every process is ready, else 0.", registry=self.registry).set_function(
            lambda: 1.0 if health.ready else 0.0
        )

    @property
    def content_type(self) -> str:
        return CONTENT_TYPE_PLAIN_0_0_4

    def render(self) -> bytes:
        return generate_latest(self.registry)


class Supervisor:
    def __init__(self, settings: Settings, count: int) -> None:
        self._settings = settings
        self._count = count
        self._stop = asyncio.Event()
        self._health = ChildrenHealth(count)
        self._folder = ""

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        folder = self._folder = tempfile.mkdtemp(prefix="customer-worker-metrics-")
        http = HealthServer(
            self._health,
            CombinedMetrics(folder, self._health),
            host="0.0.0.0",
            port=self._settings.http_port,
        )
        try:
            await http.start()
        except OSError:
            shutil.rmtree(folder, ignore_errors=True)
            raise ConfigurationError(
                f"HTTP_PORT: port {self._settings.http_port} is already in use; set HTTP_PORT to a free port"
            ) from None
        ports = [_loopback_port() for _ in range(self._count)]
        children: list[asyncio.subprocess.Process] = []
        try:
            for index, port in enumerate(ports):
                env = {
                    **os.environ,
                    "WORKER_PROCESSES": "1",
                    "HTTP_PORT": str(port),
                    "HTTP_HOST": "127.0.0.1",
                    "PROMETHEUS_MULTIPROC_DIR": folder,
                    "WORKER_PROCESS_INDEX": str(index),
                }
                children.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "worker", "run", env=env, preexec_fn=_stop_with_parent
                    )
                )
            log.info("processes_started", processes=self._count, pids=[child.pid for child in children])
            return await self._supervise(children, ports)
        finally:
            for child in children:
                if child.returncode is None:
                    child.kill()
                    await child.wait()
            await http.stop()
            shutil.rmtree(folder, ignore_errors=True)

    async def _supervise(self, children: list[asyncio.subprocess.Process], ports: list[int]) -> int:
        waits = {asyncio.ensure_future(child.wait()): child for child in children}
        stop = asyncio.ensure_future(self._stop.wait())
        poller = asyncio.create_task(self._poll_readiness(ports))
        try:
            done, _ = await asyncio.wait({*waits, stop}, return_when=asyncio.FIRST_COMPLETED)
            status = 0
            if stop not in done:
                ended = next(waits[task] for task in done if task in waits)
                status = ended.returncode or 1
                log.error("process_ended", pid=ended.pid, status=ended.returncode, hint="stopping the other processes")
            self._health.running = False
            for child in children:
                if child.returncode is None:
                    child.send_signal(signal.SIGTERM)
            timeout = self._settings.shutdown_timeout + shutdown.KILL_MARGIN_SECONDS
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), timeout=timeout)
            for child in children:
                if child.returncode is None:
                    log.error("process_killed", pid=child.pid, hint="still running past SHUTDOWN_TIMEOUT")
                    child.kill()
                    await child.wait()
                mark_process_dead(child.pid, path=self._folder)  # type: ignore[no-untyped-call]
                if status == 0 and child.returncode not in (0, -signal.SIGTERM):
                    status = child.returncode or 0
            return status
        finally:
            poller.cancel()
            stop.cancel()

    async def _poll_readiness(self, ports: list[int]) -> None:
        timeout = aiohttp.ClientTimeout(total=1.0)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                for index, port in enumerate(ports):
                    try:
                        async with session.get(f"http://127.0.0.1:{port}/readyz") as answer:
                            self._health.ready_children[index] = answer.status == 200
                    except (aiohttp.ClientError, TimeoutError):
                        self._health.ready_children[index] = False
                await asyncio.sleep(_READY_POLL)


def run_processes(settings: Settings, count: int) -> int:
    return asyncio.run(Supervisor(settings, count).run())

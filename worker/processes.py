"""`customer-worker run` with WORKER_PROCESSES > 1: N worker processes of one replica, one HTTP endpoint.

Python runs one core per process, so a replica that should use several cores runs several workers. Each child is a
whole worker (`customer-worker run` with WORKER_PROCESSES=1): its own consumer in the group, pool and producer, the
same delivery guarantees. The parent only supervises:

* `/metrics` adds up the children's metrics (prometheus-client multiprocess mode: each child writes its values to
  files in a private folder; gauges carry a `pid` label);
* `/readyz` answers 200 when every child is ready (each child's own endpoint, on a loopback port, is asked twice a
  second); `/healthz` fails (503, `process_N`) when a child is gone, has not answered for LIVENESS_EVENT_LOOP_STALL
  seconds (stopped, hung, its event loop blocked), or its own `/healthz` fails (`process_N:<check>`);
* `consumer_lag` shows the partitions the running children hold now (`worker.observability.partition_lag`), not
  those revoked from them; the metrics folder is held by a lock the children inherit, and the folders that no
  running replica holds (one whose supervisor was killed) are removed when a supervisor starts;
* SIGTERM and SIGINT are passed on to every child, each of which drains as a single worker does; a child that ends
  by itself stops the others and the parent exits with its status, so that the orchestrator restarts the replica
  (a crashed child's partitions are reassigned to the other consumers of the group meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

import aiohttp
import structlog
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, Gauge, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from worker.errors import ConfigurationError
from worker.observability import HealthServer
from worker.observability.partition_lag import LiveProcessesLag
from worker.settings import Settings

log = structlog.get_logger("worker.processes")

_READY_POLL: Final = 0.5
# A child that has not answered yet is starting (imports, its HTTP server): not counted as stalled before this.
_START_GRACE: Final = 60.0
_FOLDER_PREFIX: Final = "customer-worker-metrics-"
_LOCK_NAME: Final = "owner.lock"
# After the children's own SHUTDOWN_TIMEOUT: what a child still running then is given before it is killed.
_KILL_MARGIN: Final = 5.0


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
    """Readiness and liveness of the children, as last asked; the shape `HealthServer` expects of `Health`."""

    def __init__(self, count: int, *, stall_after: float) -> None:
        self.ready_children = [False] * count
        self.failing_children: list[list[str]] = [[] for _ in range(count)]
        """What each child's own /healthz named, at its last answer."""
        self.answered_at = [time.monotonic() + _START_GRACE] * count
        self.processes: list[asyncio.subprocess.Process] = []
        self.stall_after = stall_after
        self.running = True
        self.stopping = False
        """Set on SIGTERM: the children are told to stop, and exit as they should."""

    @property
    def ready(self) -> bool:
        return not self.not_ready()

    def not_ready(self) -> list[str]:
        return [f"process_{index}" for index, ready in enumerate(self.ready_children) if not ready]

    @property
    def live(self) -> bool:
        return not self.not_live()

    def not_live(self) -> list[str]:
        now = time.monotonic()
        failing = []
        for index, answered_at in enumerate(self.answered_at):
            gone = index < len(self.processes) and self.processes[index].returncode is not None
            if gone and self.stopping:
                continue
            if gone or now - answered_at > self.stall_after:
                failing.append(f"process_{index}")
            else:
                failing.extend(f"process_{index}:{check}" for check in self.failing_children[index])
        return failing

    def running_pids(self) -> list[int]:
        return [process.pid for process in self.processes if process.returncode is None]


class CombinedMetrics:
    """The children's metrics added up (multiprocess mode), plus the replica's readiness."""

    def __init__(self, folder: str, health: ChildrenHealth) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        MultiProcessCollector(self.registry, path=folder)  # type: ignore[no-untyped-call]
        self.registry.register(LiveProcessesLag("customer_worker_consumer_lag", folder, health.running_pids))
        Gauge("customer_worker_ready", "1 when every process is ready, else 0.", registry=self.registry).set_function(
            lambda: 1.0 if health.ready else 0.0
        )
        Gauge("customer_worker_live", "1 while /healthz answers 200, else 0.", registry=self.registry).set_function(
            lambda: 1.0 if health.live else 0.0
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
        self._health = ChildrenHealth(count, stall_after=settings.liveness_event_loop_stall)
        self._folder = ""

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        folder, lock = claim_metrics_folder()
        self._folder = folder
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
            os.close(lock)
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
                        sys.executable,
                        "-m",
                        "worker",
                        "run",
                        env=env,
                        preexec_fn=_stop_with_parent,
                        pass_fds=(lock,),  # the folder stays held while a child runs, even if the parent is killed
                    )
                )
            self._health.processes = children
            log.info("processes_started", processes=self._count, pids=[child.pid for child in children])
            return await self._supervise(children, ports)
        finally:
            for child in children:
                if child.returncode is None:
                    child.kill()
                    await child.wait()
            await http.stop()
            shutil.rmtree(folder, ignore_errors=True)
            os.close(lock)

    async def _supervise(self, children: list[asyncio.subprocess.Process], ports: list[int]) -> int:
        waits = {asyncio.ensure_future(child.wait()): child for child in children}
        stop = asyncio.ensure_future(self._stop.wait())
        poller = asyncio.create_task(self._poll_children(ports))
        try:
            done, _ = await asyncio.wait({*waits, stop}, return_when=asyncio.FIRST_COMPLETED)
            status = 0
            self._health.stopping = stop in done
            if stop not in done:
                ended = next(waits[task] for task in done if task in waits)
                status = ended.returncode or 1
                log.error("process_ended", pid=ended.pid, status=ended.returncode, hint="stopping the other processes")
            self._health.running = False
            for child in children:
                if child.returncode is None:
                    child.send_signal(signal.SIGTERM)
            timeout = self._settings.shutdown_timeout + _KILL_MARGIN
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

    async def _poll_children(self, ports: list[int]) -> None:
        timeout = aiohttp.ClientTimeout(total=1.0)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                # Side by side: a child that does not answer must not delay the others' answers.
                await asyncio.gather(*(self._ask(session, index, port) for index, port in enumerate(ports)))
                await asyncio.sleep(_READY_POLL)

    async def _ask(self, session: aiohttp.ClientSession, index: int, port: int) -> None:
        health = self._health
        try:
            async with session.get(f"http://127.0.0.1:{port}/readyz") as answer:
                health.ready_children[index] = answer.status == 200
            async with session.get(f"http://127.0.0.1:{port}/healthz") as answer:
                failing: list[str] = []
                if answer.status != 200:
                    body = await answer.json(content_type=None)
                    failing = [str(check) for check in body.get("failing", ["healthz"])]
                health.failing_children[index] = failing
                health.answered_at[index] = time.monotonic()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            health.ready_children[index] = False


def claim_metrics_folder() -> tuple[str, int]:
    """A new metrics folder and the descriptor of its lock. The lock is shared: the children inherit the descriptor,
    so the folder counts as held until the last of them exits, even after the parent was killed. Folders of the
    same prefix that nobody holds are removed first: a supervisor killed with SIGKILL leaves its folder behind."""
    root = Path(tempfile.gettempdir())
    for path in root.glob(f"{_FOLDER_PREFIX}*"):
        if path.is_dir() and not path.is_symlink() and not _held(path):
            shutil.rmtree(path, ignore_errors=True)
            log.info("stale_metrics_folder_removed", folder=str(path))
    # Built under a hidden name and renamed once locked: a supervisor starting meanwhile never sees it unheld.
    building = Path(tempfile.mkdtemp(prefix=f".{_FOLDER_PREFIX}", dir=root))
    lock = os.open(building / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_SH)
    folder = root / building.name.removeprefix(".")
    building.rename(folder)
    return str(folder), lock


def _held(folder: Path) -> bool:
    try:
        probe = os.open(folder / _LOCK_NAME, os.O_RDWR)
    except FileNotFoundError:
        return False  # a folder of a version that took no lock
    except OSError:
        return True  # not ours to judge (another user's, say)
    try:
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(probe)
    return False


def run_processes(settings: Settings, count: int) -> int:
    return asyncio.run(Supervisor(settings, count).run())

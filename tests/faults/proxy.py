"""A broker outage without stopping the broker: Tansu advertises a TCP proxy's port, and the proxy cuts every
connection and refuses new ones until it is restored. Clients see what a network partition or a broker restart shows
them (connections reset, then refused), while the broker keeps its topics and committed offsets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from pathlib import Path

from worker.tools.devstack import EmbeddedTansu, free_port

_CHUNK = 256 * 1024


class TcpProxy:
    """127.0.0.1:`port` → 127.0.0.1:`target`. While cut, new connections are accepted and closed at once (counted in
    `refused`), which proves a client tried to reach the broker during the outage."""

    def __init__(self, target: int, port: int | None = None) -> None:
        self.target = target
        self.port = port or free_port()
        self.cut_off = False
        self.refused = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._abort_all()
            await self._server.wait_closed()

    def cut(self) -> None:
        """Reset every open connection; from now on, close new ones at once."""
        self.cut_off = True
        self._abort_all()

    def restore(self) -> None:
        self.cut_off = False

    def _abort_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, upstream_writer}
        await asyncio.gather(
            self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer), return_exceptions=True
        )
        for end in (writer, upstream_writer):
            self._writers.discard(end)
            end.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(_CHUNK):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()


class ProxiedTansu(EmbeddedTansu):
    """An in-memory Tansu listening on its own port but advertising `advertised_port` (the proxy's) to clients."""

    def __init__(self, advertised_port: int, *, log_path: Path | None = None) -> None:
        super().__init__(log_path=log_path)
        self.advertised_port = advertised_port

    def _spawn(self, binary: Path, log_path: Path) -> None:
        self._log_file = log_path.open("ab")
        self._proc = subprocess.Popen(
            [
                str(binary),
                "broker",
                "--listener-url",
                f"tcp://127.0.0.1:{self.port}",
                "--advertised-listener-url",
                f"tcp://127.0.0.1:{self.advertised_port}",
                "--storage-engine",
                "memory://tansu/",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NO_COLOR": "1"},
            start_new_session=True,
        )

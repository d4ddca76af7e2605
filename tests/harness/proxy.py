"""A broker outage without stopping the broker: Tansu advertises a TCP proxy's port, and the proxy cuts every
connection and refuses new ones until it is restored. Clients see what a network partition or a broker restart shows
them (connections reset, then refused), while the broker keeps its topics and committed offsets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import subprocess
from pathlib import Path

from aiokafka.protocol.produce import (
    ProduceRequest,
    ProduceRequest_v5,
    ProduceRequest_v6,
    ProduceRequest_v7,
    ProduceResponse_v5,
    ProduceResponse_v6,
    ProduceResponse_v7,
)

from worker.dev import EmbeddedTansu, free_port

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


class RefusingProxy(TcpProxy):
    """A Kafka-protocol proxy that plays a broker refusing records for good: a Produce request whose bytes contain
    `marker` is answered here with `error_code` for every partition it carries (nothing reaches the broker); every
    other request goes to the broker. Requests are passed one at a time per connection, so answers keep their order.

    Records must be sent uncompressed (the worker's producers do not compress) for the marker to be seen."""

    def __init__(self, target: int, port: int | None = None, *, marker: bytes, error_code: int) -> None:
        super().__init__(target, port)
        self.marker = marker
        self.error_code = error_code
        self.produce_refused = 0  # Produce requests answered with `error_code`
        self.produce_forwarded = 0

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, upstream_writer}
        with contextlib.suppress(OSError, ConnectionError, asyncio.IncompleteReadError):
            while True:
                request = await _read_frame(reader)
                api_key, api_version, correlation_id = struct.unpack(">hhi", request[:8])
                if api_key == ProduceRequest.API_KEY and self.marker in request:
                    self.produce_refused += 1
                    writer.write(_frame(struct.pack(">i", correlation_id) + self._refusal(request, api_version)))
                    await writer.drain()
                    continue
                if api_key == ProduceRequest.API_KEY:
                    self.produce_forwarded += 1
                upstream_writer.write(_frame(request))
                await upstream_writer.drain()
                writer.write(_frame(await _read_frame(upstream_reader)))
                await writer.drain()
        for end in (writer, upstream_writer):
            self._writers.discard(end)
            end.transport.abort()

    def _refusal(self, request: bytes, api_version: int) -> bytes:
        if not 5 <= api_version <= 7:
            raise NotImplementedError(f"Produce v{api_version}: only v5 to v7 are answered here")
        (client_id_length,) = struct.unpack(">h", request[8:10])
        body = request[10 + max(client_id_length, 0) :]
        produce = _PRODUCE_REQUESTS[api_version].decode(body)
        topics = [
            (topic, [(partition, self.error_code, -1, -1, -1) for partition, _ in partitions])
            for topic, partitions in produce.topics
        ]
        response: bytes = _PRODUCE_RESPONSES[api_version](topics, 0).encode()
        return response


_PRODUCE_REQUESTS = {5: ProduceRequest_v5, 6: ProduceRequest_v6, 7: ProduceRequest_v7}
_PRODUCE_RESPONSES = {5: ProduceResponse_v5, 6: ProduceResponse_v6, 7: ProduceResponse_v7}


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    return await reader.readexactly(size)


def _frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload

"""A Kafka-protocol proxy that rewrites what the broker fetches, built from aiokafka's protocol classes: each Fetch
response's record bytes pass through `rewrite(topic, partition, fetch_offset, records)` before they reach the client,
so a test can hand a real consumer what a damaged log, an old producer or a broken broker would (v0/v1 message sets,
corrupt lengths, truncated batches, odd control batches) while Tansu stores only ordinary records. It also records
the isolation level of every Fetch request, which is how a consumer's `isolation_level` shows on the wire."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable
from typing import Any

from aiokafka.protocol import fetch

from tests.harness.proxy import TcpProxy, _frame, _read_frame

Rewrite = Callable[[str, int, int, bytes], bytes]
"""(topic, partition, fetch offset, record bytes as fetched) -> the record bytes to hand the client."""

FETCH_KEY = 1
_REQUESTS: dict[int, Any] = {version: getattr(fetch, f"FetchRequest_v{version}") for version in range(4, 12)}
_RESPONSES: dict[int, Any] = {version: getattr(fetch, f"FetchResponse_v{version}") for version in range(4, 12)}


def _unchanged(topic: str, partition: int, offset: int, records: bytes) -> bytes:
    return records


class FetchRewritingProxy(TcpProxy):
    def __init__(self, target: int, port: int | None = None, *, rewrite: Rewrite = _unchanged) -> None:
        super().__init__(target, port)
        self.rewrite = rewrite
        self.isolation_levels: list[int] = []  # of every Fetch request, in arrival order
        self.rewritten = 0  # partitions whose records `rewrite` changed

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
                api_key, api_version = struct.unpack(">hh", request[:4])
                upstream_writer.write(_frame(request))
                await upstream_writer.drain()
                response = await _read_frame(upstream_reader)
                if api_key == FETCH_KEY:
                    response = self._rewritten(request, api_version, response)
                writer.write(_frame(response))
                await writer.drain()
        for end in (writer, upstream_writer):
            self._writers.discard(end)
            end.transport.abort()

    def _rewritten(self, request: bytes, api_version: int, response: bytes) -> bytes:
        if api_version not in _REQUESTS:
            raise NotImplementedError(f"Fetch v{api_version}: only v4 to v11 are read here")
        (client_id_length,) = struct.unpack(">h", request[8:10])
        asked = _REQUESTS[api_version].decode(request[10 + max(client_id_length, 0) :])
        self.isolation_levels.append(asked.isolation_level)
        at = 2 if api_version >= 9 else 1  # v9 puts the current leader epoch before the fetch offset
        offsets = {
            (topic, partition[0]): partition[at] for topic, partitions in asked.topics for partition in partitions
        }
        answer = _RESPONSES[api_version].decode(response[4:])
        topics = []
        for topic, partitions in answer.topics:
            rewritten = []
            for partition in partitions:
                *head, records = partition
                new = self.rewrite(topic, head[0], offsets.get((topic, head[0]), -1), records or b"")
                if new != (records or b""):
                    self.rewritten += 1
                rewritten.append((*head, new))
            topics.append((topic, rewritten))
        values = [getattr(answer, name) for name in answer.SCHEMA.names]
        values[answer.SCHEMA.names.index("topics")] = topics
        body: bytes = _RESPONSES[api_version](*values).encode()
        return response[:4] + body

"""Issue 18, cases 9 to 11, on a real `Worker` in-process (PostgreSQL, Tansu, its HTTP endpoint):

* a blocked event loop: a probe gets no answer while it lasts, then `/healthz` 503 `event_loop`, then 200;
* a consumer with records waiting and no commit (a row lock held by another session) fails `/healthz` with
  `consumer`, while `/readyz` stays 200; during a PostgreSQL outage with records waiting, `/healthz` stays 200 and
  `/readyz` says `database`;
* a background loop that raises is restarted, and `/readyz` names it meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from tests.harness.in_process import RunningWorker, running_worker
from tests.harness.proxy import TcpProxy
from tests.harness.records import command, encode, key_of, payload, read_topic
from worker.relay import OutboxRelay

pytestmark = pytest.mark.timeout(90)

Sample = tuple[float, int | None, dict[str, Any] | None]


def _get(port: int, path: str, timeout: float) -> tuple[int | None, dict[str, Any] | None]:
    """What a kubelet's httpGet probe sees: a status, or None when nothing answered within `timeout`."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except (TimeoutError, urllib.error.URLError, ConnectionError):
        return None, None


class Prober:
    """Probes `path` from a thread of its own (the worker's event loop is the test's), as a kubelet would."""

    def __init__(self, port: int, path: str, *, every: float = 0.1, timeout: float = 0.5) -> None:
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(port, path, every, timeout), daemon=True)

    def _run(self, port: int, path: str, every: float, timeout: float) -> None:
        while not self._stop.wait(every):
            status, body = _get(port, path, timeout)
            self.samples.append((time.monotonic(), status, body))

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


async def _aget(port: int, path: str) -> tuple[int | None, dict[str, Any] | None]:
    """From a thread: the worker runs on this very event loop, which a blocking call here would stall."""
    return await asyncio.to_thread(_get, port, path, 2)


async def _metric(port: int, name: str) -> float:
    def read() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            return str(answer.read().decode())

    for line in (await asyncio.to_thread(read)).splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not exported")


async def _until(check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while True:
        result = await asyncio.to_thread(check)
        if result:
            return result
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.1)


async def test_a_blocked_event_loop_fails_healthz_then_recovers(pg_dsn: str, kafka_bootstrap: str) -> None:
    async with running_worker(
        pg_dsn, kafka_bootstrap, "liveloop", kind=RunningWorker, partitions=1,
        extra_env={"LIVENESS_EVENT_LOOP_STALL": "1"},
    ) as running:  # fmt: skip
        port = running.http_port
        assert await _aget(port, "/healthz") == (200, {"status": "ok"})
        with Prober(port, "/healthz") as prober:
            await asyncio.sleep(0.5)
            blocked_at = time.monotonic()
            time.sleep(3.0)  # noqa: ASYNC251 - the point: something blocks the worker's event loop
            resumed_at = time.monotonic()
            await asyncio.sleep(3.0)
        before = [status for at, status, _ in prober.samples if at < blocked_at]
        during = [status for at, status, _ in prober.samples if blocked_at + 0.6 < at < resumed_at]
        after = [(status, body) for at, status, body in prober.samples if at > resumed_at + 0.1]
        assert before and set(before) == {200}
        assert during and set(during) == {None}, "while the loop is blocked, a probe gets no answer in time"
        assert after[0] == (503, {"status": "failing", "failing": ["event_loop"]}), after[:3]
        assert after[-1] == (200, {"status": "ok"}), "healthy again once the loop has run for the stall time"
        answered = [status or 0 for status, _ in after]
        assert answered == sorted(answered, reverse=True), f"503 then 200, no flapping: {answered}"
        assert await _metric(port, "customer_worker_event_loop_stalls_total") == 1.0


@contextlib.asynccontextmanager
async def _proxied_database(fresh_database: str) -> AsyncIterator[tuple[str, TcpProxy]]:
    parts = urlsplit(fresh_database)
    assert parts.port is not None, "the session's PostgreSQL listens on TCP"
    proxy = TcpProxy(parts.port)
    await proxy.start()
    netloc = parts.netloc.rpartition("@")
    user = f"{netloc[0]}@" if netloc[0] else ""
    try:
        yield urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}")), proxy
    finally:
        await proxy.stop()


async def _customer_version(dsn: str, org: str, external_id: str) -> int | None:
    conn = await asyncpg.connect(dsn)
    try:
        value: int | None = await conn.fetchval(
            "SELECT net_payment_term FROM customers WHERE organization_id = $1 AND external_id = $2", org, external_id
        )
        return value
    finally:
        await conn.close()


async def test_a_stalled_consumer_fails_healthz_and_an_outage_does_not(
    fresh_database: str, kafka_bootstrap: str
) -> None:
    org = f"org_{uuid.uuid4().hex[:8]}"

    def upsert(external_id: str, version: int) -> dict[str, Any]:
        return command(org, {"external_id": external_id, "name": f"v{version}", "net_payment_term": version})

    async with (
        _proxied_database(fresh_database) as (dsn, proxy),
        running_worker(
            dsn, kafka_bootstrap, "livestall", kind=RunningWorker, fresh_database=False, partitions=1,
            extra_env={"LIVENESS_CONSUMER_STALL": "2", "CONSUMER_LAG_INTERVAL": "0.25", "BATCH_SIZE": "10"},
        ) as running,
    ):  # fmt: skip
        port = running.http_port
        first = upsert("cus_locked", 1)
        await running.publish(encode(first), key=key_of(first))
        await _until(lambda: asyncio.run(_customer_version(fresh_database, org, "cus_locked")) == 1, "applied")

        # Another session holds the customer's row lock: the next batch waits on it, nothing is committed.
        holder = await asyncpg.connect(fresh_database)
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute(
            "SELECT 1 FROM customers WHERE organization_id = $1 AND external_id = $2 FOR UPDATE", org, "cus_locked"
        )
        waiting = upsert("cus_locked", 2)
        await running.publish(encode(waiting), key=key_of(waiting))
        locked_at = time.monotonic()
        with Prober(port, "/readyz", every=0.2, timeout=2) as readiness:
            _, body = await _until(
                lambda: (answer := _get(port, "/healthz", 2))[0] == 503 and answer, "healthz 503 while stalled"
            )
            stalled_after = time.monotonic() - locked_at
        assert body == {"status": "failing", "failing": ["consumer"]}
        assert {status for _, status, _ in readiness.samples} == {200}, "a stall is not a readiness matter"
        # Set at each reading (CONSUMER_LAG_INTERVAL), so up to one interval behind what /healthz judged.
        assert await _metric(port, "customer_worker_consumer_stalled_seconds") > 1.5
        assert 2 < stalled_after < 10, stalled_after

        await transaction.rollback()
        await holder.close()
        await _until(lambda: _get(port, "/healthz", 2)[0] == 200, "healthy once the lock is released")
        assert await _customer_version(fresh_database, org, "cus_locked") == 2

        # PostgreSQL unreachable with records waiting: not ready, but alive (a restart would not help).
        proxy.cut()
        during = upsert("cus_outage", 3)
        await running.publish(encode(during), key=key_of(during))
        with (
            Prober(port, "/healthz", every=0.2, timeout=2) as liveness,
            Prober(port, "/readyz", every=0.2, timeout=2) as readiness,
        ):
            await asyncio.sleep(6.0)  # three times the stall limit: the outage is being waited out
        assert liveness.samples and {status for _, status, _ in liveness.samples} == {200}, liveness.samples[-3:]
        assert any(status == 503 and body and "database" in body["not_ready"] for _, status, body in readiness.samples)
        assert proxy.refused > 0, "the worker kept trying PostgreSQL"
        proxy.restore()
        await _until(
            lambda: asyncio.run(_customer_version(fresh_database, org, "cus_outage")) == 3, "applied after the outage"
        )
        await _until(lambda: _get(port, "/readyz", 2)[0] == 200, "ready again")
        # The batch that met the outage may still sit in its retry backoff (up to 5 s), longer than this test's
        # 2 s stall limit: waited for, as readiness is, rather than read at one instant.
        await _until(lambda: _get(port, "/healthz", 2)[0] == 200, "alive after the outage")


async def test_a_background_loop_that_raises_is_restarted_and_named_by_readyz_meanwhile(
    pg_dsn: str, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = OutboxRelay.run
    fail = asyncio.Event()
    calls = 0

    async def relay_with_a_bug(self: OutboxRelay) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await fail.wait()
            raise RuntimeError("a bug in the relay")
        await original(self)

    monkeypatch.setattr(OutboxRelay, "run", relay_with_a_bug)
    async with running_worker(pg_dsn, kafka_bootstrap, "liverelay", kind=RunningWorker, partitions=1) as running:
        port = running.http_port
        with Prober(port, "/readyz", every=0.05, timeout=2) as readiness:
            fail.set()
            await _until(lambda: calls >= 2, "relay restarted")
            await _until(lambda: _get(port, "/readyz", 2)[0] == 200, "ready again")
        down = [body for _, status, body in readiness.samples if status == 503]
        assert down and all(body == {"status": "not_ready", "not_ready": ["relay"]} for body in down), down
        assert await _metric(port, 'customer_worker_background_loop_restarts_total{loop="relay"}') == 1.0
        assert await _aget(port, "/healthz") == (200, {"status": "ok"}), "restarted, not dead"

        document = command(f"org_{uuid.uuid4().hex[:8]}", {"external_id": "cus_after"})
        await running.publish(encode(document), key=key_of(document))
        records = await read_topic(
            running.bootstrap,
            running.topics["events"],
            until=lambda rs: any(payload(r)["message_id"] == document["message_id"] for r in rs if r.value),
        )
        assert records, "the restarted relay publishes"

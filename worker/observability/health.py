"""Health: `Health` holds the readiness and liveness checks, `HealthServer` serves ``/healthz``, ``/readyz`` and
``/metrics``."""

from __future__ import annotations

import dataclasses
from typing import Protocol

from aiohttp import web


class Supervised(Protocol):
    """The background loops (`worker.supervision.LoopSupervisor`)."""

    def down(self) -> list[str]: ...

    def failed(self) -> list[str]: ...


class Watchdog(Protocol):
    def failing(self) -> bool: ...


class Progress(Protocol):
    def stalled(self) -> bool: ...


@dataclasses.dataclass(slots=True)
class Health:
    """Readiness: the database reachable, the broker connected, partitions assigned, no background loop down.
    Liveness (`/healthz`): the event loop runs, the consumer progresses unless an outage explains why not, no
    background loop dead or failing past LIVENESS_LOOP_FAILING."""

    database_ok: bool = False
    broker_ok: bool = False
    partitions_assigned: bool = False
    loops: Supervised | None = None
    event_loop: Watchdog | None = None
    consumer: Progress | None = None

    @property
    def ready(self) -> bool:
        return not self.not_ready()

    def not_ready(self) -> list[str]:
        """Names of the failing checks (``database``, ``broker``, ``partitions``, then the background loops down:
        ``relay``, ``provider_runner``, ``maintenance``, ``lag_collector``), empty when ready."""
        checks = (
            ("database", self.database_ok),
            ("broker", self.broker_ok),
            ("partitions", self.partitions_assigned),
        )
        failing = [name for name, ok in checks if not ok]
        return failing + (self.loops.down() if self.loops is not None else [])

    @property
    def live(self) -> bool:
        return not self.not_live()

    def not_live(self) -> list[str]:
        """Names of the failing liveness checks (``event_loop``, ``consumer``, then the dead background loops),
        empty when alive. A consumer stalled during a known outage is not one: a restart would not help."""
        failing = []
        if self.event_loop is not None and self.event_loop.failing():
            failing.append("event_loop")
        outage = not (self.database_ok and self.broker_ok)
        if self.consumer is not None and not outage and self.consumer.stalled():
            failing.append("consumer")
        return failing + (self.loops.failed() if self.loops is not None else [])


class Readiness(Protocol):
    def not_ready(self) -> list[str]: ...

    def not_live(self) -> list[str]: ...


class Exposition(Protocol):
    @property
    def content_type(self) -> str: ...

    def render(self) -> bytes: ...


class HealthServer:
    """``GET /healthz``, ``/readyz`` and ``/metrics`` on `host`:`port` (port 0 picks a free port); no access log.
    Serves a worker's `Health` and `Metrics`, or those of a replica's processes (`worker.processes`)."""

    def __init__(self, health: Readiness, metrics: Exposition, host: str = "0.0.0.0", port: int = 8080) -> None:
        self._health = health
        self._metrics = metrics
        self._host = host
        self._requested_port = port
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_view)
        return app

    async def _healthz(self, _request: web.Request) -> web.Response:
        failing = self._health.not_live()
        if not failing:
            return web.json_response({"status": "ok"}, headers={"Cache-Control": "no-store"})
        return web.json_response(
            {"status": "failing", "failing": failing}, status=503, headers={"Cache-Control": "no-store"}
        )

    async def _readyz(self, _request: web.Request) -> web.Response:
        failing = self._health.not_ready()
        if not failing:
            return web.json_response({"status": "ready"}, headers={"Cache-Control": "no-store"})
        return web.json_response(
            {"status": "not_ready", "not_ready": failing}, status=503, headers={"Cache-Control": "no-store"}
        )

    async def _metrics_view(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=self._metrics.render(),
            headers={"Content-Type": self._metrics.content_type, "Cache-Control": "no-store"},
        )

    async def start(self) -> None:
        if self._runner is not None:
            return
        runner = web.AppRunner(self._app(), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._requested_port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        addresses = runner.addresses
        self._port = int(addresses[0][1]) if addresses else self._requested_port

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        self._port = None
        if runner is not None:
            await runner.cleanup()

    @property
    def port(self) -> int:
        """The bound port (the one chosen when 0 was asked); only while started."""
        if self._port is None:
            raise RuntimeError("HealthServer is not started")
        return self._port

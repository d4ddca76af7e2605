"""`customer-worker console`: the web application, its sign-in, and the process that serves it with the operator
job runner (jobs started here run here, and resume after a restart) and the lag reader beside it."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
from pathlib import Path
from typing import Final

import asyncpg
import structlog
from aiohttp import web

from worker.console import actions, pages
from worker.console.audit import audit
from worker.console.auth import ProxyTrust, SessionStore, TokenStore, parse_networks
from worker.console.guard import (
    COOKIE,
    SESSION,
    SESSION_KEY,
    Handler,
    authenticate,
    security_headers,
    set_session_cookie,
)
from worker.console.lag import LagMonitor
from worker.console.render import render, setup
from worker.console.state import CONSOLE, KAFKA, LAG, POOL, PROXY, SESSIONS, TOKENS
from worker.errors import ConfigurationError
from worker.ops.jobs import JobRunner
from worker.outages import is_outage
from worker.settings import ConsoleSettings, KafkaSettings, revealed

log = structlog.get_logger(__name__)
STATIC: Final = Path(__file__).parent / "static"


async def sign_in_form(request: web.Request) -> web.Response:
    return render(request, "sign_in.html", {"failed": False})


async def sign_in(request: web.Request) -> web.Response:
    form = await request.post()
    identity = request.app[TOKENS].identify(str(form.get("token", "")))
    if identity is None:
        await audit(request, None, "sign_in", outcome="refused", detail={"via": "token"})
        return render(request, "sign_in.html", {"failed": True}, status=401)
    sessions = request.app[SESSIONS]
    key, _ = sessions.open(identity)
    await audit(request, identity, "sign_in", outcome="done", detail={"via": "token"})
    response = web.HTTPSeeOther("/")
    set_session_cookie(request, response, key, int(sessions.ttl_seconds))
    raise response


async def sign_out(request: web.Request) -> web.Response:
    request.app[SESSIONS].close(request[SESSION_KEY])
    await audit(request, request[SESSION].identity, "sign_out", outcome="done")
    response = web.HTTPSeeOther("/sign-in")
    response.del_cookie(COOKIE, path="/")
    raise response


async def healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok\n")


@web.middleware
async def error_pages(request: web.Request, handler: Handler) -> web.StreamResponse:
    """4xx/5xx as a page (or the plain reason for htmx); never a traceback or an exception's text."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or request.path.startswith("/static/"):
            raise
        return render(request, "error.html", {"title": exc.reason, "message": exc.text or exc.reason}, exc.status)
    except Exception as exc:
        if not is_outage(exc):
            raise
        # PostgreSQL down or busy: say so, and the page works again once it is back (nothing to restart).
        log.warning("console_database_unavailable", error=type(exc).__name__)
        message = "PostgreSQL cannot be reached at the moment; reload when it is back."
        return render(request, "error.html", {"title": "Database unavailable", "message": message}, 503)


def build_app(
    pool: asyncpg.Pool,
    console: ConsoleSettings,
    kafka: KafkaSettings,
    *,
    tokens: TokenStore | None = None,
    lag: LagMonitor | None = None,
) -> web.Application:
    app = web.Application(middlewares=[security_headers, error_pages, authenticate], client_max_size=256 * 1024)
    app[POOL] = pool
    app[CONSOLE] = console
    app[KAFKA] = kafka
    app[TOKENS] = tokens if tokens is not None else TokenStore.load(console.console_tokens_file)
    app[SESSIONS] = SessionStore(console.console_session_hours * 3600)
    app[PROXY] = ProxyTrust(
        parse_networks(console.console_trusted_proxies),
        console.console_proxy_user_header,
        console.console_proxy_groups_header,
        console.console_operator_group,
    )
    app[LAG] = lag if lag is not None else LagMonitor(kafka)
    setup(app)
    app.router.add_get("/sign-in", sign_in_form)
    app.router.add_post("/sign-in", sign_in)
    app.router.add_post("/sign-out", sign_out)
    app.router.add_get("/healthz", healthz)
    app.router.add_static("/static/", STATIC, append_version=False)
    app.router.add_get("/", pages.overview)
    app.router.add_get("/dead-letters", pages.dead_letters)
    app.router.add_get("/dead-letters/{id}", pages.dead_letter)
    app.router.add_get("/parked", pages.parked)
    app.router.add_get("/provider-jobs", pages.provider_jobs)
    app.router.add_get("/rejections", pages.rejections)
    app.router.add_get("/audit", pages.audit_log)
    app.router.add_get("/jobs", pages.operator_jobs)
    app.router.add_get("/jobs/{id}", pages.operator_job)
    app.router.add_get("/jobs/{id}/progress", pages.operator_job_progress)
    app.router.add_post("/jobs/{id}/cancel", actions.cancel)
    app.router.add_post("/actions/{kind}/preview", actions.preview)
    app.router.add_post("/actions/{kind}/start", actions.start)
    return app


async def serve(
    database_url: object,
    console: ConsoleSettings,
    kafka: KafkaSettings,
    stop: asyncio.Event | None = None,
    *,
    install_signal_handlers: bool = True,
) -> int:
    """Serve until `stop` is set (or SIGINT/SIGTERM): the pages, the operator jobs and the lag reader."""
    tokens = TokenStore.load(console.console_tokens_file)
    # No connection at start (min_size=0): the console starts while PostgreSQL is down and serves a 503 page until
    # it is back; the job runner waits it out too.
    pool = await asyncpg.create_pool(revealed(database_url), min_size=0, max_size=8)  # type: ignore[arg-type]
    runner = JobRunner(pool, kafka)
    lag = LagMonitor(kafka)
    app = build_app(pool, console, kafka, tokens=tokens, lag=lag)
    web_runner = web.AppRunner(app, access_log=None)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if install_signal_handlers:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
    await web_runner.setup()
    jobs_task = asyncio.create_task(runner.run(), name="console-jobs")
    try:
        site = web.TCPSite(web_runner, console.console_host, console.console_port)
        try:
            await site.start()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise ConfigurationError(f"CONSOLE_PORT: port {console.console_port} is already in use") from None
        lag.start()
        if not len(tokens) and not console.console_trusted_proxies:
            log.warning("console_nobody_can_sign_in", hint="set CONSOLE_TOKENS_FILE or CONSOLE_TRUSTED_PROXIES")
        log.info("console_listening", host=console.console_host, port=console.console_port)
        await stop.wait()
    finally:
        await runner.stop()
        await lag.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await jobs_task
        await web_runner.cleanup()
        await pool.close()
    return 0

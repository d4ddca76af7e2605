"""The console's middlewares: security headers on every answer, a signed-in session for every page but sign-in and
static files, and for every POST an Origin check and the session's CSRF token. Refusals are audited."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

from worker.console.audit import audit
from worker.console.auth import Identity, ProxyTrust, Session, SessionStore, TokenStore
from worker.console.state import PROXY, SESSIONS, TOKENS

COOKIE: Final = "cw_console"
SESSION: Final = web.RequestKey("session", Session)
SESSION_KEY: Final = web.RequestKey("session_key", str)
_PUBLIC: Final = ("/sign-in", "/static/", "/healthz")
_HEADERS: Final = {
    # default-src 'self' as the issue asks, plus what it implies for framing, forms and <base>.
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
        _decorate(response)
        raise
    _decorate(response)
    return response


def _decorate(response: web.StreamResponse) -> None:
    response.headers.update(_HEADERS)
    if "Cache-Control" not in response.headers:
        response.headers["Cache-Control"] = "no-store"


def is_https(request: web.Request) -> bool:
    if request.secure:
        return True
    proxy: ProxyTrust = request.app[PROXY]
    return proxy.trusts(request.remote) and request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def set_session_cookie(request: web.Request, response: web.StreamResponse, key: str, max_age: int) -> None:
    response.set_cookie(
        COOKIE, key, httponly=True, samesite="Strict", secure=is_https(request), path="/", max_age=max_age
    )


def _is_public(path: str) -> bool:
    return any(path == prefix.rstrip("/") or path.startswith(prefix) for prefix in _PUBLIC)


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if _is_public(request.path):
        if request.method == "POST":
            await _check_origin(request, None)
        return await handler(request)
    sessions: SessionStore = request.app[SESSIONS]
    key = request.cookies.get(COOKIE)
    session = sessions.get(key)
    opened = False
    proxied = request.app[PROXY].identify(request.remote, dict(request.headers))
    if session is not None and session.identity.via == "proxy" and session.identity != proxied:
        sessions.close(key)  # the proxy now names someone else (or no one): that session is over
        session = None
    if session is None and proxied is not None:
        key, session = sessions.open(proxied)
        opened = True
    if session is None or key is None:
        if request.method != "GET":
            await audit(request, None, "request", outcome="refused", detail={"why": "not_signed_in"})
            raise web.HTTPUnauthorized(text="sign in first")
        raise web.HTTPSeeOther("/sign-in")
    request[SESSION] = session
    request[SESSION_KEY] = key
    if request.method == "POST":
        await _check_origin(request, session.identity)
        await _check_csrf(request, session)
    response = await handler(request)
    if opened:
        set_session_cookie(request, response, key, int(sessions.ttl_seconds))
    return response


def expected_origin(request: web.Request) -> str:
    return f"{'https' if is_https(request) else 'http'}://{request.host}"


def same_origin(request: web.Request) -> bool:
    """The Origin header names this console. Under `Referrer-Policy: no-referrer` a browser sends `Origin: null` on
    a form's POST (Fetch standard); then its `Sec-Fetch-Site`, which no page can set, must say `same-origin`."""
    origin = request.headers.get("Origin")
    if origin is not None and origin != "null":
        return origin == expected_origin(request)
    return request.headers.get("Sec-Fetch-Site") == "same-origin"


async def _check_origin(request: web.Request, identity: Identity | None) -> None:
    if not same_origin(request):
        await audit(request, identity, "request", outcome="refused", detail={"why": "origin"})
        raise web.HTTPForbidden(text="cross-origin request refused")


async def _check_csrf(request: web.Request, session: Session) -> None:
    offered = request.headers.get("X-CSRF-Token")
    if offered is None and request.content_type == "application/x-www-form-urlencoded":
        offered = str((await request.post()).get("csrf", ""))
    if not offered or not hmac.compare_digest(offered.encode(), session.csrf.encode()):
        await audit(request, session.identity, "request", outcome="refused", detail={"why": "csrf"})
        raise web.HTTPForbidden(text="missing or wrong CSRF token")


async def require_operator(request: web.Request, action: str) -> Identity:
    """The signed-in operator; a viewer gets 403, audited (the buttons are hidden too, this is the real check)."""
    identity = request[SESSION].identity
    if not identity.can_act:
        await audit(request, identity, action, outcome="refused", detail={"why": "role"})
        raise web.HTTPForbidden(text="viewers cannot act")
    return identity


def sign_in(request: web.Request, token: str) -> Identity | None:
    store: TokenStore = request.app[TOKENS]
    return store.identify(token)

"""A reusable fake HTTP API server for driving real provider SDKs in tests.

`FakeServer` runs an aiohttp application on 127.0.0.1 (free port) in a background thread with its own event loop,
so it serves synchronous SDK calls (requests) and async tests (httpx/aiohttp on the test's loop) alike.

Every request goes through one pipeline, in this order:

1. logged (`requests`: method, path, query, headers, parsed body);
2. queued faults that act *before* the provider: `fail_next` answers with a canned error, `drop_next` closes the
   connection without an answer. Nothing is processed or stored (`fail_next(..., after_processing=True)` instead
   processes the request, then answers with the error: "executed, then failed");
3. the token bucket (`rate_limit`): 429 with `Retry-After` when empty (counted in `rate_limited_count`);
4. authentication (provider-specific, `api_keys`);
5. idempotency (POST with an `Idempotency-Key` header, scoped by API key): a completed key is answered by the
   provider's repeat rule (replay, or an error); a key whose first request is still being processed is answered by
   the provider's "in progress" rule. What is stored is the provider's rule (`stores_response`): by default 2xx
   answers only, so a failed request can be retried with its key; Stripe also stores a 5xx once execution began;
6. `delay_next(..., after_processing=False)` sleeps here: the request is already "in progress" for its key;
7. the route handler (provider behaviour);
8. `delay_next(..., after_processing=True)` / `drop_next(..., after_processing=True)`: the work is done and stored,
   but the answer is late or lost (the classic "created, but the client never heard").

Faults are consumed first-in first-out among those whose optional `method` / `path` filter matches the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import parse_qsl

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

BODY_KEY: web.RequestKey[Any] = web.RequestKey("fake_body")
PRINCIPAL_KEY = web.RequestKey("fake_principal", str)
#: A handler sets this to the id of what it created: GoCardless's idempotency conflict answers with it.
RESOURCE_ID_KEY = web.RequestKey("fake_resource_id", str)

_FORM_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_FORM_PART = re.compile(r"\[([^\[\]]*)\]")


def new_id(prefix: str, length: int = 14) -> str:
    """A random identifier such as `cus_3f9a...` (hex, `length` characters after the prefix)."""
    return prefix + secrets.token_hex((length + 1) // 2)[:length]


def parse_nested_form(pairs: Iterable[tuple[str, str]], *, keep_dict_keys: frozenset[str] = frozenset()) -> Any:
    """Decode Rack/Stripe-style form pairs (`address[line1]=x`, `items[0]=a`, `items[]=b`) into dicts and lists.

    A dict whose keys are all decimal integers becomes a list, except under a key in `keep_dict_keys` (e.g.
    `metadata`, whose keys are free text).
    """
    root: dict[str, Any] = {}
    for key, value in pairs:
        match = _FORM_KEY.match(key)
        parts = [match.group(1), *_FORM_PART.findall(match.group(2))] if match else [key]
        node = root
        for part in parts[:-1]:
            name = part if part != "" else str(len(node))
            child = node.get(name)
            if not isinstance(child, dict):
                child = {}
                node[name] = child
            node = child
        last = parts[-1] if parts[-1] != "" else str(len(node))
        node[last] = value
    return _listify(root, None, keep_dict_keys)


def _listify(obj: Any, key: str | None, keep: frozenset[str]) -> Any:
    if not isinstance(obj, dict):
        return obj
    converted = {k: _listify(v, k, keep) for k, v in obj.items()}
    if converted and key not in keep and all(k.isdigit() for k in converted):
        return [converted[k] for k in sorted(converted, key=int)]
    return converted


def canonical(value: Any) -> str:
    """A stable text form of a parsed body, for comparing two requests' parameters."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


@dataclass
class RecordedRequest:
    """One request as the fake saw it. `status` / `outcome` are filled in when it is answered."""

    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDictProxy[str]
    body: Any
    raw_body: bytes
    received_at: float
    status: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    outcome: str = "pending"
    """`handled`, `replayed`, `fault`, `dropped`, `rate_limited`, `unauthorized`, `in_progress`, `error`, or a
    provider's repeat outcome (`idempotency_error` for Stripe, `idempotency_conflict` for GoCardless)."""

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("Idempotency-Key")


@dataclass
class StoredResponse:
    status: int
    body: bytes
    headers: dict[str, str]

    def to_response(self, extra_headers: Mapping[str, str] | None = None) -> web.Response:
        headers = dict(self.headers)
        headers.update(extra_headers or {})
        return web.Response(status=self.status, body=self.body, headers=headers)

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class IdempotencyEntry:
    """What the fake remembers for one (API key, idempotency key)."""

    method: str
    path: str
    fingerprint: str
    response: StoredResponse | None = None  # None while the first request is in progress
    resource_id: str | None = None


@dataclass
class _Fault:
    kind: Literal["fail", "delay", "drop"]
    remaining: int
    method: str | None
    path: str | None
    after_processing: bool = False
    status: int = 500
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        return request_matches(self.method, self.path, method, path)


def request_matches(method_filter: str | None, path_filter: str | None, method: str, path: str) -> bool:
    """True when `method` / `path` pass the filters (None: any; a path filter is exact or a full-match regex)."""
    if method_filter is not None and method_filter.upper() != method:
        return False
    return path_filter is None or path_filter == path or bool(re.fullmatch(path_filter, path))


class TokenBucket:
    """`rate` tokens per second, at most `burst` stored; starts full."""

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._updated = time.monotonic()

    def take(self) -> float:
        """Take a token: 0.0 when one was available, else the seconds until one will be."""
        now = time.monotonic()
        self._tokens = min(float(self.burst), self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate


class FakeServer:
    """Base fake: threading, pipeline, faults, rate limiting, idempotency store. Subclasses add routes and the
    provider's auth, error shapes and idempotency rules."""

    #: Short provider name (informational); subclasses override the hooks below.
    name = "fake"

    def __init__(self, *, api_keys: Iterable[str] = (), host: str = "127.0.0.1", shutdown_timeout: float = 0.5) -> None:
        self.api_keys: set[str] = set(api_keys)
        self.host = host
        self.shutdown_timeout = shutdown_timeout
        self.idempotency: dict[tuple[str, str], IdempotencyEntry] = {}
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._requests: list[RecordedRequest] = []
        self._faults: list[_Fault] = []
        self._bucket: TokenBucket | None = None
        self._rate_limited = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._stopping: asyncio.Event | None = None
        self._site: web.SockSite | None = None
        self._refusing = False

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT` (no trailing slash)."""
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"http://{self.host}:{self._port}"

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._port

    def start(self) -> Self:
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve_start())
            except Exception as exc:  # noqa: BLE001 - handed to start(), which raises it
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._serve_stop())
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        thread = threading.Thread(target=run, name=f"{type(self).__name__}-{id(self):x}", daemon=True)
        self._loop = loop
        self._thread = thread
        thread.start()
        ready.wait(10)
        if failure:
            self._thread = None
            self._loop = None
            raise RuntimeError(f"{type(self).__name__} failed to start") from failure[0]
        return self

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return

        def begin_stop() -> None:
            if self._stopping is not None:
                self._stopping.set()
            loop.stop()

        loop.call_soon_threadsafe(begin_stop)
        thread.join(10 + self.shutdown_timeout)
        self._thread = None
        self._loop = None
        self._port = None
        with self._changed:
            self._changed.notify_all()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)

    async def _serve_start(self) -> None:
        self._stopping = asyncio.Event()

        @web.middleware
        async def pipeline(request: web.Request, handler: Handler) -> web.StreamResponse:
            return await self._pipeline(request, handler)

        app = web.Application(middlewares=[pipeline], client_max_size=8 * 1024 * 1024)
        self.setup_routes(app)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=self.shutdown_timeout)
        await runner.setup()
        self._runner = runner
        await self._listen(0)

    async def _listen(self, port: int) -> None:
        assert self._runner is not None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, port))
        site = web.SockSite(self._runner, sock)
        await site.start()
        self._site = site
        self._port = sock.getsockname()[1]

    async def _unlisten(self) -> None:
        if self._site is not None:
            await self._site.stop()
            self._site = None

    def refuse_connections(self) -> None:
        """Stop listening, as a host that is down: new connections are refused (ECONNREFUSED), and a request on a
        connection kept alive from before is cut without an answer. `accept_connections()` ends it."""
        with self._lock:
            self._refusing = True
        self._on_loop(self._unlisten())

    def accept_connections(self) -> None:
        """Listen again, on the same port."""
        self._on_loop(self._listen(self.port))
        with self._lock:
            self._refusing = False

    def _on_loop(self, work: Awaitable[None]) -> None:
        loop = self._loop
        if loop is None:
            raise RuntimeError(f"{type(self).__name__} is not started")

        async def run() -> None:
            await work

        asyncio.run_coroutine_threadsafe(run(), loop).result(10)

    async def _serve_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ assertions

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def requests_to(self, method: str | None = None, path: str | None = None) -> list[RecordedRequest]:
        """Requests filtered by method and by path (exact, or a full-match regex)."""
        with self._lock:
            return [r for r in self._requests if request_matches(method, path, r.method, r.path)]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def wait_for_requests(
        self, count: int, *, method: str | None = None, path: str | None = None, timeout: float = 5.0
    ) -> list[RecordedRequest]:
        """Block until at least `count` matching requests were *answered* (or dropped); raises TimeoutError."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                done = [r for r in self.requests_to(method, path) if r.outcome != "pending"]
                if len(done) >= count:
                    return done
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(done)} of {count} requests to {method} {path} after {timeout}s")
                self._changed.wait(left)

    @property
    def rate_limited_count(self) -> int:
        """How many requests the token bucket answered with 429."""
        with self._lock:
            return self._rate_limited

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return sum(f.remaining for f in self._faults)

    def reset(self) -> None:
        """Forget requests, faults, rate limiting and idempotency keys (subclasses also clear their resources); a
        server refusing connections listens again."""
        if self._refusing and self._loop is not None:
            self.accept_connections()
        with self._lock:
            self._requests.clear()
            self._faults.clear()
            self._bucket = None
            self._rate_limited = 0
            self.idempotency.clear()

    # ------------------------------------------------------------------ fault injection

    def fail_next(
        self,
        status: int,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        times: int = 1,
        *,
        method: str | None = None,
        path: str | None = None,
        after_processing: bool = False,
    ) -> None:
        """Answer the next `times` matching requests with `status` and `body`, without processing them (with
        `after_processing`: after processing them; the provider's rule decides whether the failure is stored for the
        idempotency key, see `stores_response`).

        `body`: a dict/list (sent as JSON), str/bytes (sent as is), or None for the provider's own error body for
        that status (`default_error_body`).
        """
        if body is None:
            payload = json.dumps(self.default_error_body(status)).encode()
            content_type = "application/json"
        elif isinstance(body, bytes):
            payload, content_type = body, "application/octet-stream"
        elif isinstance(body, str):
            payload, content_type = body.encode(), "text/plain; charset=utf-8"
        else:
            payload, content_type = json.dumps(body).encode(), "application/json"
        hdrs = {"Content-Type": content_type}
        hdrs.update(headers or {})
        self._add_fault(
            _Fault(
                "fail",
                times,
                method,
                path,
                status=status,
                body=payload,
                headers=hdrs,
                after_processing=after_processing,
            )
        )

    def delay_next(
        self,
        seconds: float,
        times: int = 1,
        *,
        after_processing: bool = False,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        """Hold the next `times` matching requests for `seconds`.

        `after_processing=False`: wait, then process (the request counts as in progress for its idempotency key
        meanwhile, and is processed even if the client gave up). `True`: process and store first, then hold the
        answer.
        """
        self._add_fault(_Fault("delay", times, method, path, after_processing=after_processing, seconds=seconds))

    def drop_next(
        self,
        times: int = 1,
        *,
        after_processing: bool = False,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        """Close the connection of the next `times` matching requests without answering.

        `after_processing=False`: nothing is processed. `True`: the request is processed (and its idempotency key
        stored) but the answer is lost.
        """
        self._add_fault(_Fault("drop", times, method, path, after_processing=after_processing))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def rate_limit(self, rate_per_second: float | None, burst: int = 1) -> None:
        """Enable a token bucket for all requests (`None` disables it). Starts full (`burst` tokens)."""
        with self._lock:
            self._bucket = None if rate_per_second is None else TokenBucket(rate_per_second, burst)

    def _add_fault(self, fault: _Fault) -> None:
        if fault.remaining < 1:
            raise ValueError("times must be >= 1")
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # ------------------------------------------------------------------ provider hooks

    def setup_routes(self, app: web.Application) -> None:
        """Register the provider's routes."""

    def parse_body(self, request: web.Request, raw: bytes) -> Any:
        """Parse a request body: JSON or form data by Content-Type; None when empty or unparseable."""
        if not raw:
            return None
        ctype = request.content_type
        text = raw.decode("utf-8", errors="replace")
        if ctype == "application/x-www-form-urlencoded":
            return parse_nested_form(parse_qsl(text, keep_blank_values=True))
        try:
            return json.loads(text)
        except ValueError:
            return None

    def extract_credential(self, request: web.Request) -> str | None:
        """The API key / token the request presents (default: `Authorization: Bearer <token>`)."""
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    def authenticate(self, request: web.Request) -> str | None:
        credential = self.extract_credential(request)
        return credential if credential is not None and credential in self.api_keys else None

    def default_error_body(self, status: int) -> Any:
        """The provider's error body for `status` (used by `fail_next` without a body)."""
        return {"error": {"status": status, "message": "error"}}

    def error_response(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> web.Response:
        return self.json_response(body, status=status, headers=headers)

    def unauthorized_response(self, request: web.Request) -> web.Response:
        return self.error_response(401, self.default_error_body(401))

    def rate_limited_response(self, request: web.Request, retry_after: int) -> web.Response:
        return self.error_response(429, self.default_error_body(429), {"Retry-After": str(retry_after)})

    def not_found_response(self, request: web.Request) -> web.Response:
        return self.error_response(404, self.default_error_body(404))

    def idempotency_applies(self, request: web.Request) -> bool:
        return request.method == "POST"

    def idempotency_fingerprint(self, request: web.Request) -> str:
        return canonical(request.get(BODY_KEY))

    def idempotency_repeat_response(
        self, request: web.Request, key: str, entry: IdempotencyEntry, same_request: bool
    ) -> tuple[web.Response, str]:
        """Answer a repeated key whose first request completed: (response, outcome). Default: replay."""
        assert entry.response is not None
        return entry.response.to_response(), "replayed"

    def idempotency_in_progress_response(self, request: web.Request, key: str) -> web.Response:
        return self.error_response(409, self.default_error_body(409))

    def stores_response(self, status: int, resource_id: str | None) -> bool:
        """Whether the answer to a request with an idempotency key is kept for that key (replayed or referred to on
        a repeat). Default: only a 2xx; anything else may be retried with the same key."""
        return 200 <= status < 300

    def executed_failure_headers(self) -> dict[str, str]:
        """Headers of an error answered after the request was processed (`fail_next(after_processing=True)`)."""
        return {}

    def response_headers(self, request: web.Request) -> dict[str, str]:
        """Headers added to every answer that went past authentication (request ids and the like)."""
        return {}

    # ------------------------------------------------------------------ helpers for subclasses

    @staticmethod
    def json_response(body: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        return web.Response(status=status, body=json.dumps(body).encode(), headers=hdrs)

    @staticmethod
    def body_of(request: web.Request) -> Any:
        return request.get(BODY_KEY)

    @staticmethod
    def principal_of(request: web.Request) -> str:
        principal: str = request.get(PRINCIPAL_KEY, "")
        return principal

    # ------------------------------------------------------------------ the pipeline

    def _record(self, request: web.Request, raw: bytes, body: Any) -> RecordedRequest:
        rec = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=CIMultiDictProxy(CIMultiDict(request.headers)),
            body=body,
            raw_body=raw,
            received_at=time.time(),
        )
        with self._lock:
            self._requests.append(rec)
        return rec

    def _finish(self, rec: RecordedRequest, response: web.StreamResponse | None, outcome: str) -> None:
        with self._changed:
            rec.status = response.status if response is not None else None
            rec.response_headers = dict(response.headers) if response is not None else {}
            rec.outcome = outcome
            self._changed.notify_all()

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up early when the server stops."""
        stopping = self._stopping
        if stopping is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=seconds)

    @staticmethod
    def _drop(request: web.Request) -> web.Response:
        transport = request.transport
        if transport is not None:
            transport.abort()
        return web.Response(status=204)

    async def _pipeline(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        raw = await request.read()
        body = self.parse_body(request, raw)
        request[BODY_KEY] = body
        rec = self._record(request, raw, body)
        with self._lock:
            refusing = self._refusing
        if refusing:
            self._finish(rec, None, "dropped")
            return self._drop(request)
        fault = self._take_fault(request.method, request.path)

        if fault is not None and fault.kind == "fail" and not fault.after_processing:
            response = web.Response(status=fault.status, body=fault.body, headers=fault.headers)
            self._finish(rec, response, "fault")
            return response
        if fault is not None and fault.kind == "drop" and not fault.after_processing:
            self._finish(rec, None, "dropped")
            return self._drop(request)

        with self._lock:
            wait = self._bucket.take() if self._bucket is not None else 0.0
            if wait > 0:
                self._rate_limited += 1
        if wait > 0:
            response = self.rate_limited_response(request, max(1, math.ceil(wait)))
            self._finish(rec, response, "rate_limited")
            return response

        principal = self.authenticate(request)
        if principal is None:
            response = self.unauthorized_response(request)
            self._finish(rec, response, "unauthorized")
            return response
        request[PRINCIPAL_KEY] = principal
        extra = self.response_headers(request)

        store_key: tuple[str, str] | None = None
        key = request.headers.get("Idempotency-Key")
        replay: tuple[web.Response, str] | None = None
        if key and self.idempotency_applies(request):
            fingerprint = self.idempotency_fingerprint(request)
            with self._lock:
                entry = self.idempotency.get((principal, key))
                if entry is None:
                    store_key = (principal, key)
                    self.idempotency[store_key] = IdempotencyEntry(request.method, request.path, fingerprint)
            if entry is not None and entry.response is None:
                response = self.idempotency_in_progress_response(request, key)
                response.headers.update(extra)
                self._finish(rec, response, "in_progress")
                return response
            if entry is not None:
                same = (entry.method, entry.path, entry.fingerprint) == (request.method, request.path, fingerprint)
                replay = self.idempotency_repeat_response(request, key, entry, same)

        try:
            if fault is not None and fault.kind == "delay" and not fault.after_processing:
                await self._sleep(fault.seconds)
            if replay is not None:
                response, outcome = replay
            else:
                answered = await self._dispatch(request, handler)
                if not isinstance(answered, web.Response):
                    raise TypeError("fake handlers must return web.Response")
                response, outcome = answered, "handled"
                if fault is not None and fault.kind == "fail" and fault.after_processing:
                    headers = {**fault.headers, **self.executed_failure_headers()}
                    response, outcome = web.Response(status=fault.status, body=fault.body, headers=headers), "fault"
                for name, value in extra.items():
                    response.headers.setdefault(name, value)
                if store_key is not None:
                    self._store(store_key, request, response)
                    store_key = None
        except BaseException:
            self._finish(rec, None, "error")
            raise
        finally:
            if store_key is not None:  # not stored: the key may be retried
                with self._lock:
                    self.idempotency.pop(store_key, None)
        for name, value in extra.items():
            response.headers.setdefault(name, value)

        if fault is not None and fault.kind == "delay" and fault.after_processing:
            await self._sleep(fault.seconds)
        if fault is not None and fault.kind == "drop" and fault.after_processing:
            self._finish(rec, None, "dropped")
            return self._drop(request)
        self._finish(rec, response, outcome)
        return response

    def _store(self, store_key: tuple[str, str], request: web.Request, response: web.Response) -> None:
        with self._lock:
            if not self.stores_response(response.status, request.get(RESOURCE_ID_KEY)):
                self.idempotency.pop(store_key, None)
                return
            entry = self.idempotency[store_key]
            body = response.body if isinstance(response.body, bytes) else b""
            headers = {k: v for k, v in response.headers.items() if k.lower() not in {"content-length", "date"}}
            entry.response = StoredResponse(response.status, body, headers)
            entry.resource_id = request.get(RESOURCE_ID_KEY)

    async def _dispatch(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return self.not_found_response(request)
        except web.HTTPMethodNotAllowed:
            return self.not_found_response(request)

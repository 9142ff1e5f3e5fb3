"""Streamable HTTP at `/mcp`: the SDK's own transport, driven from the WSGI app.

The SDK's HTTP transport is ASGI (asyncio); this app is WSGI (Flask's dev
server; gunicorn's gevent worker in production). Under gevent an asyncio loop
cannot run inside a request's greenlet: every greenlet shares one OS thread,
and asyncio allows one running loop per OS thread (the session namer's loop
already is one). So each process has one asyncio loop of its own, in a real
OS thread started on first use (`McpLoop`). A request is handed to it as an
ASGI request (body already read) and served by the SDK's
`StreamableHTTPSessionManager` in stateless mode. The request's own thread (or
greenlet) streams the response out as the SDK writes it, progress
notifications included, and runs the tools' synchronous service calls beside
itself (`RequestThreadCalls`), so the database is used exactly as by any other
request, under gevent or threads alike. Stateless: nothing is kept between
requests, and any worker of any process can answer.

Before the SDK sees anything, and before any of the body is read, the request
is authenticated from its headers with the API's own bearer tokens
(AuthService): no token, a malformed header, a forged or an expired token is a
401 in the API's error shape, and no tool runs. The user is then the acting
user of that request only. The body is read after that (within
REQUEST_BODY_TIMEOUT_SECONDS), and only then is the rate limit's exemption
(reads are not session writes) decided from it.

Limits: no server-initiated stream and no session (GET and DELETE answer
405), so no resumability; a request idle for REQUEST_TIMEOUT_SECONDS is cancelled.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from flask import Flask, Response, request
from mcp.server import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

from backend.auth.service import AuthUser
from backend.auth.tokens import AuthUnavailable, InvalidToken
from backend.errors import error_response
from backend.mcp_server import McpServices, services_for
from backend.mcp_server.server import SyncCalls, acting_user, build_server, sync_calls

log = logging.getLogger(__name__)

PATH = "/mcp"
ENDPOINT = "mcp"
# A request that has not finished by then is cancelled (504); a tool call is bounded far below it.
REQUEST_TIMEOUT_SECONDS = 120
# Tool calls that write: they share the API's per-user budget for session writes (SESSION_WRITE_RATE_LIMIT).
WRITE_TOOLS = frozenset({"rename_session", "archive_session", "delete_session", "restore_session"})


def install_http(app: Flask, path: str = PATH) -> None:
    """Mount the MCP endpoint on the app (after its rate limiter is set up)."""
    services = services_for(app)
    server = build_server(services.tools)
    loop = McpLoop()

    def mcp_endpoint(user: AuthUser) -> Response:
        body = request.get_data(cache=True)  # read already (mcp_view)
        exchange = RequestThreadCalls(loop.get())
        started = exchange.start(_serve(server, _asgi_scope(path), body, user, exchange))
        if started is None:
            log.warning("mcp request timed out", extra={"user_id": user.id})
            return error_response(504, "timeout", "The MCP request took too long")
        status, headers = started
        # The body streams as the SDK writes it (progress notifications as they happen).
        return Response(exchange.body(), status=status, headers=headers, direct_passthrough=True)

    limited = mcp_endpoint
    limiter = app.extensions.get("rate_limiter")
    if limiter is not None and limiter.enabled:
        from backend.rate_limits import caller_key

        limited = limiter.shared_limit(
            services.session_write_rate_limit, scope="session-writes", key_func=caller_key,
            exempt_when=lambda: not _is_write_call(),  # reads the body: only ever after authentication
        )(mcp_endpoint)

    def mcp_view() -> Response:
        """MCP over streamable HTTP (bearer token)."""
        # Who is calling, from the headers alone: a caller without a valid token is refused
        # before any of the body is waited for (a body that never comes holds a connection).
        user_or_refusal = _authenticate(services)
        if isinstance(user_or_refusal, Response):
            return user_or_refusal
        # Bounded by MAX_CONTENT_LENGTH (413) and REQUEST_BODY_TIMEOUT_SECONDS (408).
        request.get_data(cache=True)
        return limited(user_or_refusal)

    # POST only: stateless, there is no server-initiated stream to GET (it would never end) and no session to DELETE.
    app.add_url_rule(path, ENDPOINT, mcp_view, methods=["POST"])


def _authenticate(services: McpServices) -> AuthUser | Response:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return error_response(401, "unauthorized", "Send a valid access token: Authorization: Bearer <token>",
                              headers={"WWW-Authenticate": "Bearer"})
    try:
        return services.auth.user_for_token(token.strip())
    except InvalidToken as exc:
        log.info("mcp token refused", extra={"reason": str(exc)})
        return error_response(401, "invalid_token", str(exc),
                              headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    except AuthUnavailable:
        log.warning("mcp token not checked: the signing keys cannot be fetched")
        return error_response(503, "auth_unavailable", "Sign-in cannot be checked right now; try again shortly",
                              headers={"Retry-After": "5"})


def _is_write_call() -> bool:
    try:
        message = json.loads(request.get_data(cache=True) or b"null")
    except (ValueError, RecursionError):  # not JSON: the SDK answers it, and no tool runs
        return False
    messages = message if isinstance(message, list) else [message]
    return any(
        isinstance(m, dict) and m.get("method") == "tools/call" and isinstance(m.get("params"), dict)
        and m["params"].get("name") in WRITE_TOOLS
        for m in messages
    )


def _asgi_scope(path: str) -> dict[str, Any]:
    environ = request.environ
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": environ.get("SERVER_PROTOCOL", "HTTP/1.1").removeprefix("HTTP/") or "1.1",
        "method": request.method,
        "scheme": request.scheme,
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": environ.get("QUERY_STRING", "").encode("latin-1"),
        "headers": [(name.lower().encode("latin-1"), value.encode("latin-1"))
                    for name, value in request.headers.items()],
        "client": (request.remote_addr or "", 0),
        "server": (environ.get("SERVER_NAME", ""), int(environ.get("SERVER_PORT") or 0)),
    }


class McpLoop:
    """This process's asyncio loop for MCP requests, in a real OS thread, started on first use."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def get(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid() or self._loop.is_closed():
                ready: queue.Queue = queue.Queue()
                _start_native_thread(self._run, (ready,))
                self._loop, self._pid = ready.get(timeout=30), os.getpid()
            return self._loop

    @staticmethod
    def _run(ready: queue.Queue) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        ready.put(loop)
        loop.run_forever()


def _native_thread_starter() -> Callable[..., Any]:
    """`_thread.start_new_thread` as it was before gevent's monkey-patching (a real OS thread)."""
    try:
        from gevent import monkey

        return monkey.get_original("_thread", "start_new_thread")
    except ImportError:  # pragma: no cover - gevent is a dependency
        import _thread

        return _thread.start_new_thread


_start_native_thread = _native_thread_starter()
_DONE = object()


class RequestThreadCalls(SyncCalls):
    """One request between its own thread (or greenlet) and the MCP loop.

    The loop serves the request and hands back, through one queue, what
    belongs to the request's side: the tools' synchronous service calls
    (`run`), and the response, piece by piece (`send`). The request's thread
    starts each call beside itself (a thread; a greenlet under gevent, like
    any other request's database work) while it waits for the response to
    start (`start`) and while it streams the body (`body`).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.disconnected = asyncio.Event()  # set on the loop: the response is complete or the client left
        self._inbox: queue.Queue = queue.Queue()
        self._future: Any = None

    # --- on the loop ---------------------------------------------------------

    async def run(self, fn: Callable[[], Any]) -> Any:
        done = self.loop.create_future()
        self._inbox.put(("call", fn, done))
        return await done

    def send(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self._inbox.put(("start", message))
        elif message["type"] == "http.response.body":
            self._inbox.put(("body", message.get("body", b""), message.get("more_body", False)))

    # --- on the request's thread ---------------------------------------------

    def call_async(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        # From a service call `run` handed over: wait for the loop to do it.
        return asyncio.run_coroutine_threadsafe(_awaited(fn), self.loop).result(timeout=30)

    def start(self, coroutine: Awaitable[Any]) -> tuple[int, list] | None:
        """Run `coroutine` on the loop until the response starts: (status, headers); None if it timed out."""
        self._future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        self._future.add_done_callback(lambda _: self._inbox.put((_DONE,)))
        item = self._next()
        if item is None:
            return None
        if item[0] is _DONE:
            self._future.result()  # raises what ended it
            raise RuntimeError("the MCP transport ended without a response")
        message = item[1]
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])]
        return message["status"], headers

    def body(self) -> Iterator[bytes]:
        complete = False
        try:
            while not complete:
                item = self._next()
                if item is None or item[0] is _DONE:
                    return
                _, chunk, more = item
                complete = not more
                if chunk:
                    yield chunk
        finally:
            if not complete:  # the client left (or a timeout): stop serving the request
                self.loop.call_soon_threadsafe(self.disconnected.set)
                self._future.cancel()

    def _next(self) -> tuple | None:
        """The next piece of the response, starting the service calls that come first; None after a timeout."""
        while True:
            try:
                item = self._inbox.get(timeout=REQUEST_TIMEOUT_SECONDS)
            except queue.Empty:
                self._future.cancel()
                return None
            if item[0] != "call":
                return item
            # Beside this thread (a greenlet of this worker under gevent), so that what the
            # call sends meanwhile (progress) streams out while it runs.
            threading.Thread(target=self._do, args=item[1:], name="mcp-call", daemon=True).start()

    def _do(self, fn: Callable[[], Any], done: asyncio.Future) -> None:
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting tool, which decides
            self.loop.call_soon_threadsafe(_settle, done, None, exc)
        else:
            self.loop.call_soon_threadsafe(_settle, done, result, None)


async def _awaited(fn: Callable[[], Awaitable[Any]]) -> Any:
    return await fn()


def _settle(future: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if future.done():  # cancelled meanwhile
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


async def _serve(server: Server, scope: dict, body: bytes, user: AuthUser, exchange: RequestThreadCalls) -> None:
    """One request through the SDK's stateless streamable HTTP transport."""
    acting_user.set(user)
    sync_calls.set(exchange)
    delivered = False

    async def receive() -> dict:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await exchange.disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        exchange.send(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            exchange.disconnected.set()  # complete: nothing more will be read

    manager = StreamableHTTPSessionManager(app=server, stateless=True, json_response=False)
    async with manager.run():
        await manager.handle_request(scope, receive, send)

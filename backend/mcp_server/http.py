"""Streamable HTTP at `/mcp`: the SDK's own transport, driven from the WSGI app.

The SDK's HTTP transport is ASGI (asyncio); this app is WSGI (Flask's dev
server; gunicorn's gevent worker in production). Under gevent an asyncio loop
cannot run inside a request's greenlet: every greenlet shares one OS thread,
and asyncio allows one running loop per OS thread (the session namer's loop
already is one). So each process has one asyncio loop of its own, in a real
OS thread started on first use (`McpLoop`). A request is handed to it as an
ASGI request (body already read) and served whole by the SDK's
`StreamableHTTPSessionManager` in stateless mode; meanwhile the request's
own thread (or greenlet) waits and runs the synchronous service calls the
tools send back to it (`RequestThreadCalls`), so the database is used
exactly as by any other request, under gevent or threads alike. Stateless:
nothing is kept between requests, and any worker of any process can answer.

Before the SDK sees anything, the request is authenticated with the API's own
bearer tokens (AuthService): no token, a malformed header, a forged or an
expired token is a 401 in the API's error shape, and no tool runs. The user is
then the acting user of that request only.

Limits: the response goes out when the call is over, so progress
notifications (in its text/event-stream) arrive together with the result,
not live; no server-initiated stream and no session (GET and DELETE answer 405),
and no resumability.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import threading
from collections.abc import Awaitable, Callable
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

    def mcp_endpoint() -> Response:
        user_or_refusal = _authenticate(services)
        if isinstance(user_or_refusal, Response):
            return user_or_refusal
        body = request.get_data(cache=True)  # bounded by MAX_CONTENT_LENGTH (413 past it)
        calls = RequestThreadCalls(loop.get())
        outcome = calls.serve(_serve(server, _asgi_scope(path), body, user_or_refusal, calls))
        if outcome is None:
            log.warning("mcp request timed out", extra={"user_id": user_or_refusal.id})
            return error_response(504, "timeout", "The MCP request took too long")
        status, headers, content = outcome
        return Response(content, status=status, headers=headers)

    mcp_endpoint.__doc__ = "MCP over streamable HTTP (bearer token)."
    view = mcp_endpoint
    limiter = app.extensions.get("rate_limiter")
    if limiter is not None and limiter.enabled:
        from backend.rate_limits import caller_key

        view = limiter.shared_limit(
            services.session_write_rate_limit, scope="session-writes", key_func=caller_key,
            exempt_when=lambda: not _is_write_call(),
        )(mcp_endpoint)
    # POST only: stateless, there is no server-initiated stream to GET (it would never end) and no session to DELETE.
    app.add_url_rule(path, ENDPOINT, view, methods=["POST"])


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
    """The tools' synchronous work, run back on the request's own thread (or greenlet).

    The request's thread waits in `serve` for work from the loop; a tool
    awaits `run`, which hands a function over and waits for its result.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._work: queue.Queue = queue.Queue()

    async def run(self, fn: Callable[[], Any]) -> Any:
        done = self.loop.create_future()
        self._work.put((fn, done))
        return await done

    def call_async(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        # From the request's thread, during `run`: wait for the loop to do it.
        return asyncio.run_coroutine_threadsafe(_awaited(fn), self.loop).result(timeout=30)

    def serve(self, coroutine: Awaitable[Any]) -> Any:
        """Run `coroutine` on the loop; do the work it sends until it ends. None if it timed out."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        future.add_done_callback(lambda _: self._work.put(_DONE))
        while True:
            try:
                item = self._work.get(timeout=REQUEST_TIMEOUT_SECONDS)
            except queue.Empty:
                future.cancel()
                return None
            if item is _DONE:
                return future.result()
            fn, done = item
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


async def _serve(server: Server, scope: dict, body: bytes, user: AuthUser,
                 calls: SyncCalls) -> tuple[int, list, bytes]:
    """One request through the SDK's stateless streamable HTTP transport; the whole response."""
    acting_user.set(user)
    sync_calls.set(calls)
    started: dict[str, Any] = {}
    chunks: list[bytes] = []
    finished = asyncio.Event()
    delivered = False

    async def receive() -> dict:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await finished.wait()  # the client stays connected until the response is complete
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            started.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                finished.set()

    manager = StreamableHTTPSessionManager(app=server, stateless=True, json_response=False)
    async with manager.run():
        await manager.handle_request(scope, receive, send)
    finished.set()
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in started.get("headers", [])]
    return started.get("status", 500), headers, b"".join(chunks)

"""A deadline for receiving a request body (REQUEST_BODY_TIMEOUT_SECONDS), on every route.

Neither gunicorn's gevent worker nor werkzeug's server limits how long a client
may take to send the body its Content-Length promised: a request whose body
never arrives holds its connection, and its place under
MAX_CONNECTIONS_PER_WORKER (backend/overload.py), for as long as the client
likes. So the WSGI input is wrapped, and reading it past the deadline (counted
from the request's arrival, for the whole body, however the client trickles it)
raises `BodyTimeout`, which the app answers 408 `request_timeout`.

Routes read a body only once the caller is known (blueprints' `require_user`
runs before the body is parsed; `/mcp` authenticates from its headers first),
so a caller without credentials is refused without waiting for any body; sign-in
has no credentials to check first, and the deadline bounds it.

How each read is bounded (for the time left, so a client trickling its body a
byte at a time cannot stretch the deadline):
- under gevent (the production worker), a `gevent.Timeout` around the read: the
  greenlet blocks cooperatively, so the read is interrupted wherever it waits
  (and then the connection's reading side is shut, as below, so gunicorn does not
  wait for the rest of that body before it closes the connection);
- elsewhere (werkzeug's threaded server in development and tests, gunicorn's
  thread worker), a timer that, if the read is still waiting when the time is up,
  shuts the connection's reading side: the read returns at once with what it has,
  and so does anything else that would read from that client (werkzeug's server
  drains unread input before it lets go of a response), while the 408 is still
  written. (Not the socket's own timeout: after one, werkzeug's reader refuses
  every later read with an error that skips the response's close.)
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

from backend.errors import ApiError
from backend.shallow_streams import under_gevent

log = logging.getLogger(__name__)


class BodyTimeout(ApiError):
    def __init__(self, seconds: float) -> None:
        super().__init__(408, "request_timeout", f"The request body did not arrive within {seconds:g} s")


class DeadlineInput:
    """`wsgi.input`, each read bounded by the time left until `deadline` (time.monotonic)."""

    def __init__(self, stream: Any, deadline: float, seconds: float, sock: socket.socket | None,
                 cooperative: bool) -> None:
        self._stream = stream
        self._deadline = deadline
        self._seconds = seconds
        self._socket = sock
        self._cooperative = cooperative
        self._expired = False
        self._cut = False

    def read(self, size: int | None = -1) -> bytes:
        return self._bounded(self._stream.read, -1 if size is None else size)

    def readline(self, size: int | None = -1) -> bytes:
        return self._bounded(self._stream.readline, -1 if size is None else size)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        return self._bounded(self._stream.readlines, -1 if hint is None else hint)

    def __iter__(self):
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()

    def _bounded(self, fn, *args):
        left = self._deadline - time.monotonic()
        if self._expired or left <= 0:
            self._expire()
        if self._cooperative:
            import gevent

            timer = gevent.Timeout(left)
            timer.start()
            try:
                return fn(*args)
            except gevent.Timeout as exc:
                if exc is not timer:
                    raise
                self._expire()
            finally:
                timer.close()
        if self._socket is None:  # an in-memory body (the test client): reading never waits
            return fn(*args)
        watchdog = threading.Timer(left, self._cut_off)
        watchdog.daemon = True
        watchdog.start()
        try:
            data = fn(*args)
        finally:
            watchdog.cancel()
        if self._cut:  # what came before the cut is not the whole body
            self._expire()
        return data

    def _cut_off(self) -> None:
        self._cut = True
        try:
            self._socket.shutdown(socket.SHUT_RD)
        except OSError:  # closed meanwhile
            pass

    def _expire(self):
        if not self._expired:
            self._expired = True
            log.info("request body not received in time", extra={"timeout_seconds": self._seconds})
        if self._socket is not None and not self._cut:
            self._cut_off()  # nothing waits for the rest: not the server's drain, nor its next request
        raise BodyTimeout(self._seconds)


class BodyDeadline:
    """WSGI middleware: the body of every request must have arrived `seconds` after the request did."""

    def __init__(self, app, seconds: float, *, cooperative: bool | None = None) -> None:
        self.app = app
        self.seconds = seconds
        self.cooperative = under_gevent() if cooperative is None else cooperative

    def __call__(self, environ, start_response):
        if _has_body(environ):
            sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
            environ["wsgi.input"] = DeadlineInput(
                environ["wsgi.input"], time.monotonic() + self.seconds, self.seconds,
                sock if isinstance(sock, socket.socket) else None, self.cooperative,
            )
        return self.app(environ, start_response)


def _has_body(environ) -> bool:
    length = environ.get("CONTENT_LENGTH", "")
    return (length not in ("", "0")) or "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()


def document_body_timeout(app) -> None:
    """Add the 408 to every operation of the app's OpenAPI document that reads a body
    (flask-openapi3 adds its validation error to each operation the same way), so no
    route can leave it out."""
    generate = app.generate_spec_json

    def generate_spec_json() -> None:
        generate()
        for path_item in app.spec_json.get("paths", {}).values():
            for operation in path_item.values():
                if isinstance(operation, dict) and "requestBody" in operation:
                    operation.setdefault("responses", {}).setdefault("408", {
                        "description": "Request Timeout: the body did not arrive within REQUEST_BODY_TIMEOUT_SECONDS",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
                    })

    app.generate_spec_json = generate_spec_json

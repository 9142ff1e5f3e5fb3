"""A cap on requests in flight per process: past it, 503 with Retry-After at once.

Under the gevent worker a process accepts thousands of connections; without a
cap a burst beyond what the host can serve would queue until clients time
out. This counts every request from arrival until its response is closed
(so a streamed reply or an event stream counts for its whole life) and turns
away the ones over MAX_CONNECTIONS_PER_WORKER with the project's JSON error,
before Flask, auth or the database are touched.
"""

from __future__ import annotations

import json
import logging
import threading
import time

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 2
_BODY = json.dumps({
    "success": False,
    "error": {"code": "overloaded", "message": "The server is at capacity; try again shortly"},
}).encode()


class _Counted:
    """The app's response, released when the server closes it. Iterating it is iterating
    the app's own iterator: nothing of ours runs per chunk, and nothing of ours stays on the
    stack of a stream that waits."""

    __slots__ = ("_body", "_release")

    def __init__(self, body, release) -> None:
        self._body = body
        self._release = release

    def __iter__(self):
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._release()


class ConnectionLimit:
    """WSGI middleware: at most `limit` requests in flight in this process."""

    def __init__(self, app, limit: int, cors_origins: list[str]) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0
        self._cors_origins = frozenset(cors_origins)
        self._lock = threading.Lock()
        self._last_warning = 0.0

    def __call__(self, environ, start_response):
        with self._lock:
            admitted = self.in_flight < self.limit
            if admitted:
                self.in_flight += 1
        if not admitted:
            return self._refuse(environ, start_response)
        try:
            body = self.app(environ, start_response)
        except BaseException:
            self._release()
            raise
        # The request is over but its response may stream for hours: the parsed
        # request (headers, cookies, caches) need not be held that long.
        environ.pop("werkzeug.request", None)
        return _Counted(body, self._release)

    def _release(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _refuse(self, environ, start_response):
        now = time.monotonic()
        if now - self._last_warning > 10:  # one line per burst, not one per refusal
            self._last_warning = now
            log.warning("over capacity: refusing requests", extra={"limit": self.limit})
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(_BODY))),
            ("Retry-After", str(RETRY_AFTER_SECONDS)),
            ("Cache-Control", "no-store"),
        ]
        # Refused before Flask-CORS runs: a browser on an allowed origin must
        # still be able to read the 503 (and its Retry-After).
        origin = environ.get("HTTP_ORIGIN")
        if origin and origin in self._cors_origins:
            headers += [
                ("Access-Control-Allow-Origin", origin),
                ("Access-Control-Allow-Credentials", "true"),
                ("Access-Control-Expose-Headers", "Retry-After"),
                ("Vary", "Origin"),
            ]
        start_response("503 Service Unavailable", headers)
        return [_BODY]

"""The floor under an idle event stream: a WSGI app that only holds a text/event-stream open,
served by the same gunicorn.conf.py as the backend (bench/subscribers.py measures both)."""

from __future__ import annotations

import gevent


def app(environ, start_response):
    if environ["PATH_INFO"] == "/readyz":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ready"]
    start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])

    def body():
        yield b": stream open\n\n"
        while True:
            gevent.sleep(15)
            yield b": heartbeat\n\n"

    return body()

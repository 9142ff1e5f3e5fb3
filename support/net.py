"""Loopback ports and waiting for a server to answer."""

from __future__ import annotations

import contextlib
import http.client
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

from werkzeug.serving import make_server


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(port: int, path: str, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    """Poll GET path until it answers 200 (True), the timeout passes or proc exits (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return True
        except OSError:
            pass
        time.sleep(0.1)  # polling a process we do not control: there is no event to wait on
    return False


@contextlib.contextmanager
def served_on_loopback(app) -> Iterator[int]:
    """A WSGI app on a real HTTP server on 127.0.0.1 (werkzeug, a thread per request, so streams
    stay open while others are served); yields its port, and stops the server afterwards."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)

"""A request body that never comes, or comes too slowly, holds nothing (backend/request_body.py).

A caller is known from its headers before any body is read: without valid
credentials the answer is 401 at once, whatever Content-Length promised. A body
still arriving REQUEST_BODY_TIMEOUT_SECONDS after its request is 408
`request_timeout`. Either way the request's place under MAX_CONNECTIONS_PER_WORKER
(backend/overload.py) is given back while the client still holds its socket open.
Driven over real sockets: werkzeug's threaded server (in-process, so the app's
counter can be read), and the production command (gunicorn's gevent worker).
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import time
from contextlib import contextmanager

import pytest

from backend.overload import ConnectionLimit
from support.net import served_on_loopback
from tests.chat_support import wait_until
from tests.helpers import User, make_token
from tests.test_server_model import production_server

PROMISED = 1000  # bytes of body the requests below promise
TRICKLE_SECONDS = 0.2  # a slow client's pace: one byte this often


def connection_counter(app) -> ConnectionLimit:
    """The app's ConnectionLimit, wherever it sits among the WSGI middleware."""
    wsgi = app.wsgi_app
    while not isinstance(wsgi, ConnectionLimit):
        wsgi = wsgi.app
    return wsgi


@contextmanager
def promised_body(port: int, method: str, path: str, headers: dict, *, trickle: bool = False):
    """A request whose headers promise PROMISED bytes of body, of which none come (or, with
    `trickle`, one every TRICKLE_SECONDS); yields the open socket. The client never closes it
    before the block ends."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
             "Accept: application/json, text/event-stream", f"Content-Length: {PROMISED}",
             *[f"{k}: {v}" for k, v in headers.items()]]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    stop = threading.Event()

    def drip():
        for _ in range(PROMISED):
            if stop.wait(TRICKLE_SECONDS):  # the client's pace, not a synchronisation
                return
            try:
                sock.sendall(b" ")
            except OSError:  # answered and closed
                return

    dripper = threading.Thread(target=drip, daemon=True)
    if trickle:
        dripper.start()
    try:
        yield sock
    finally:
        stop.set()
        if trickle:
            dripper.join(5)
        sock.close()


def answer(sock: socket.socket, timeout: float) -> tuple[int, dict, float]:
    """The response on that socket: (status, JSON body, seconds it took to come)."""
    started = time.monotonic()
    sock.settimeout(timeout)
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, json.loads(response.read()), time.monotonic() - started


def _bearer(user: User) -> dict:
    return {"Authorization": f"Bearer {user.token}"}


FORGED = {"Authorization": "Bearer " + make_token("someone", secret="not-the-secret-" + "z" * 32)}
BROWSER = {"X-Requested-With": "fetch"}


def operations_needing_a_caller(app) -> list[tuple[str, str]]:
    """(METHOD, path) of every operation of the live document that needs credentials, ids filled
    in; and /mcp."""
    doc = app.test_client().get("/api/openapi.json").get_json()
    found = [(method.upper(), re.sub(r"\{[^}]+\}", "x", path))
             for path, item in doc["paths"].items() for method, op in item.items() if op.get("security")]
    assert ("POST", "/api/llm/sessions") in found
    return [("POST", "/mcp"), *found]


@pytest.mark.parametrize("credentials", [{}, FORGED], ids=["none", "forged"])
def test_a_caller_without_credentials_is_refused_at_once_whatever_body_it_promises(make_app, credentials):
    # Rate limits on, as in production: /mcp's limit looks into the body (is it a write?), and
    # used to, before the caller was known; a body that never came held the connection for ever.
    # Every operation that needs a caller, from the live document, so a new route is covered.
    app = make_app(rate_limits_enabled=True)
    counter = connection_counter(app)
    with served_on_loopback(app) as port:
        idle = counter.in_flight
        for method, path in operations_needing_a_caller(app):
            with promised_body(port, method, path, {**credentials, **BROWSER}) as sock:
                status, body, seconds = answer(sock, timeout=5)
                assert status == 401 and body["success"] is False, (method, path, body)
                assert body["error"]["code"] in ("unauthorized", "invalid_token")
                assert seconds < 2
                # The client still holds its socket (and never sends the body): its place is free.
                assert wait_until(lambda: counter.in_flight == idle, timeout=5), (method, path)


@pytest.mark.parametrize("path", ["/mcp", "/api/llm/sessions", "/api/auth/login"])
@pytest.mark.parametrize("trickle", [False, True], ids=["never-comes", "trickles"])
def test_a_body_not_received_by_the_deadline_is_408(make_app, path, trickle):
    deadline = 1.0
    app = make_app(rate_limits_enabled=True, request_body_timeout_seconds=deadline)
    counter = connection_counter(app)
    user = User()
    # Sign-in has no credentials to check before its body: the deadline is what bounds it.
    credentials = {} if path == "/api/auth/login" else _bearer(user)
    with served_on_loopback(app) as port:
        idle = counter.in_flight
        with promised_body(port, "POST", path, {**credentials, **BROWSER}, trickle=trickle) as sock:
            status, body, seconds = answer(sock, timeout=10)
            assert status == 408, body
            assert body == {"success": False, "error": {
                "code": "request_timeout", "message": "The request body did not arrive within 1 s"}}
            # Counted from the request's arrival, for the whole body: trickling does not stretch it.
            assert deadline - 0.1 <= seconds < deadline + 1.5
            assert wait_until(lambda: counter.in_flight == idle, timeout=5)


def test_a_body_that_arrives_in_time_is_served(make_app, alice):
    app = make_app(request_body_timeout_seconds=1.0)
    with served_on_loopback(app) as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/api/llm/sessions", body=json.dumps({"session_name": "In time"}),
                     headers={**_bearer(alice), "Content-Type": "application/json"})
        r = conn.getresponse()
        assert r.status == 201 and json.loads(r.read())["data"]["session_name"] == "In time"


def test_the_408_is_documented_on_every_operation_that_takes_a_body(app):
    doc = app.test_client().get("/api/openapi.json").get_json()
    with_body = [(path, method, op) for path, item in doc["paths"].items() for method, op in item.items()
                 if "requestBody" in op]
    assert with_body
    for path, method, op in with_body:
        assert "408" in op["responses"], f"{method.upper()} {path}"


def test_under_the_production_server_neither_holds_a_connection_slot(database_url, fake_model, tmp_path):
    """gunicorn's gevent worker has no body deadline of its own. With room for four requests,
    four callers without credentials whose bodies never come, then four signed-in callers
    whose bodies trickle, each hold their sockets open; each is answered (401 at once, 408 at
    the deadline) and the worker still has room for everyone else."""
    user = User()
    with production_server(database_url, fake_model, tmp_path, MAX_CONNECTIONS_PER_WORKER=4,
                           REQUEST_BODY_TIMEOUT_SECONDS=1) as (port, proc, log_path):
        def healthy() -> bool:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200

        with promised_body(port, "POST", "/mcp", {}) as a, promised_body(port, "POST", "/mcp", FORGED) as b, \
                promised_body(port, "POST", "/api/llm/sessions", BROWSER) as c, \
                promised_body(port, "POST", "/mcp", {}) as d:
            for sock in (a, b, c, d):
                status, body, seconds = answer(sock, timeout=5)
                assert status == 401 and seconds < 2, body
            assert wait_until(healthy, timeout=5)  # four sockets still open, no place held

        with promised_body(port, "POST", "/mcp", _bearer(user), trickle=True) as a, \
                promised_body(port, "POST", "/api/llm/sessions", _bearer(user), trickle=True) as b, \
                promised_body(port, "POST", "/api/auth/login", BROWSER, trickle=True) as c, \
                promised_body(port, "POST", "/mcp", _bearer(user)) as d:
            for sock in (a, b, c, d):
                status, body, seconds = answer(sock, timeout=10)
                assert status == 408 and body["error"]["code"] == "request_timeout", body
                assert seconds < 3
            assert wait_until(healthy, timeout=5)

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/api/llm/sessions", body=json.dumps({}),
                     headers={**_bearer(user), "Content-Type": "application/json"})
        assert conn.getresponse().status == 201
        assert proc.poll() is None

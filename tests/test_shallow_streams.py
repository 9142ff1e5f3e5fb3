"""ShallowStreams: the events stream's app call runs in a greenlet that ends before the stream idles.

Its use under the production server is covered by the events tests (tests/test_events.py
runs them on gunicorn's gevent worker); here, what the middleware itself promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gevent
import pytest
from greenlet import getcurrent

from backend.shallow_streams import ShallowStreams


def recording_app(seen: dict, *, block: bool = False):
    def app(environ, start_response):
        seen["greenlet"] = getcurrent()
        if block:
            gevent.sleep(0.001)  # a database read: the hub runs, then switches back here
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        return iter([b"one", b"two"])

    return app


@pytest.mark.parametrize("block", [False, True])
def test_a_listed_path_is_dispatched_in_a_greenlet_that_has_ended_when_its_response_is_read(block):
    seen: dict = {}
    started = []
    middleware = ShallowStreams(recording_app(seen, block=block), ["/api/llm/events"], enabled=True)
    body = middleware({"PATH_INFO": "/api/llm/events"}, lambda status, headers: started.append(status))
    assert seen["greenlet"] is not getcurrent() and seen["greenlet"].dead
    assert started == ["200 OK"] and list(body) == [b"one", b"two"]


def test_an_error_in_the_app_reaches_the_caller_as_it_was():
    def failing(environ, start_response):
        raise LookupError("boom")

    middleware = ShallowStreams(failing, ["/api/llm/events"], enabled=True)
    with pytest.raises(LookupError, match="boom"):
        middleware({"PATH_INFO": "/api/llm/events"}, lambda status, headers: None)


@pytest.mark.parametrize("path, enabled", [("/api/llm/sessions", True), ("/api/llm/events", False)])
def test_other_paths_and_servers_without_gevent_call_the_app_in_place(path, enabled):
    seen: dict = {}
    middleware = ShallowStreams(recording_app(seen), ["/api/llm/events"], enabled=enabled)
    assert list(middleware({"PATH_INFO": path}, lambda status, headers: None)) == [b"one", b"two"]
    assert seen["greenlet"] is getcurrent()


@pytest.mark.parametrize("patch, expected", [("from gevent import monkey; monkey.patch_all(); ", "True"), ("", "False")])
def test_it_is_on_only_where_gevent_has_patched_threading(patch, expected):
    # As gunicorn's gevent worker does before it loads the app; in a process of its own.
    probe = patch + "from backend.shallow_streams import under_gevent; print(under_gevent())"
    out = subprocess.run([sys.executable, "-c", probe], cwd=Path(__file__).resolve().parent.parent,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected

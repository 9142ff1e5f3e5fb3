"""The production server command (gunicorn.conf.py: gevent workers) keeps every guarantee.

Each test starts `gunicorn --config gunicorn.conf.py 'backend:create_app()'` with the
shipped defaults (only the worker count, the database and the fake model set), on
the test database, and drives it over real HTTP.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from support.server import ProductionServer
from tests.chat_support import parse_sse, wait_until
from tests.helpers import JWT_SECRET, SECRET_KEY, User, client_for, unique_session_id


@contextlib.contextmanager
def production_server(database_url, fake_model, tmp_path, **env_overrides):
    """`make serve`'s command on this run's database and fake model; yields (port, process, log path)."""
    env = {
        "APP_ENV": "test",
        "DATABASE_URL": database_url,
        "SECRET_KEY": SECRET_KEY,
        "SUPABASE_JWT_SECRET": JWT_SECRET,
        "OPENAI_BASE_URL": fake_model.base_url,
        "OPENAI_API_KEY": "test-key",
        "LOG_LEVEL": "WARNING",
        "WEB_CONCURRENCY": "1",
        **env_overrides,
    }
    server = ProductionServer(env, tmp_path / f"server-{uuid.uuid4().hex[:8]}.log", ready_timeout=60)
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield server.port, server.proc, server.log_path
    finally:
        server.stop()


def _request(port, method, path, user=None, body=None, timeout=30):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Content-Type": "application/json"}
    if user is not None:
        headers["Authorization"] = f"Bearer {user.token}"
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    return conn.getresponse()


def _named_sessions(app, n):
    """n users with a named session each (many users: the per-user chat rate limit stays on)."""
    sessions = []
    for _ in range(n):
        user, sid = User(), unique_session_id()
        r = client_for(app, user).post("/api/llm/sessions", json={"session_id": sid, "session_name": "named"})
        assert r.status_code == 201
        sessions.append((user, sid))
    return sessions


def _stream_all(port, sessions, results):
    """One thread per stream, each reading its reply to the end into results[sid]."""
    def read(user, sid):
        try:
            r = _request(port, "POST", "/api/llm/query/stream", user, {"session_id": sid, "query": f"q {sid}"}, 60)
            results[sid] = (r.status, parse_sse(r.read().decode())[0])
        except OSError as exc:
            results[sid] = (None, repr(exc))

    threads = [threading.Thread(target=read, args=session, daemon=True) for session in sessions]
    for t in threads:
        t.start()
    return threads


@pytest.mark.parametrize("setting, expected", [(None, "(50000, 20, 20)"), ("1000,5,5", "(1000, 5, 5)")])
def test_a_worker_freezes_its_start_up_objects_and_collects_garbage_less_often(setting, expected):
    # gunicorn.conf.py's post_worker_init, run as gunicorn runs it once the app is
    # loaded (in a process of its own: it sets this interpreter's collector).
    probe = ("import gc, runpy, types; conf = runpy.run_path('gunicorn.conf.py'); "
             "conf['post_worker_init'](types.SimpleNamespace(alive=True)); "
             "print(gc.get_threshold(), gc.get_freeze_count() > 1000)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHON_GC_THRESHOLD"}
    if setting:
        env["PYTHON_GC_THRESHOLD"] = setting
    out = subprocess.run([sys.executable, "-c", probe], cwd=Path(__file__).resolve().parent.parent, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{expected} True"


# Frees 31 MB inside the heap, under a block that stays, then starts post_worker_init's
# trimming (MALLOC_TRIM_SECONDS from the environment) and reports the resident MB freed.
TRIM_PROBE = """
import os, runpy, threading, time, types
def rss_mb():
    return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20
blocks = [bytes(4096) for _ in range(8192)]
kept = blocks[::16]
del blocks
before = rss_mb()
conf = runpy.run_path('gunicorn.conf.py')
conf['post_worker_init'](types.SimpleNamespace(alive=True))
deadline = time.monotonic() + 5
while rss_mb() > before - 16 and time.monotonic() < deadline:
    time.sleep(0.05)
print(any(t.name == 'malloc-trim' for t in threading.enumerate()), round(before - rss_mb()))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
@pytest.mark.parametrize("setting, trims", [("0.05", True), ("0", False)])
def test_a_worker_gives_memory_freed_inside_its_heap_back_to_the_system(setting, trims):
    env = {**os.environ, "MALLOC_TRIM_SECONDS": setting}
    out = subprocess.run([sys.executable, "-c", TRIM_PROBE], cwd=Path(__file__).resolve().parent.parent, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    running, freed_mb = out.stdout.split()
    assert running == str(trims)
    assert (int(freed_mb) >= 16) is trims, out.stdout


def test_one_worker_holds_hundreds_of_streams_at_once(database_url, fake, chat_app, tmp_path):
    """A thread per connection (16 per worker before) would hold 16 and queue the rest."""
    n = 200
    sessions = _named_sessions(chat_app, n)
    results: dict = {}
    with production_server(database_url, fake, tmp_path) as (port, _, _):
        with fake.hold_streams() as gate:
            threads = _stream_all(port, sessions, results)
            assert gate.wait_for_held(n, timeout=60), f"only {gate.held} of {n} replies started"
            health = _request(port, "GET", "/healthz")  # and the worker still answers
            assert health.status == 200
        for t in threads:
            t.join(60)
    assert len(results) == n
    assert all(status == 200 and events[-1].event == "done" for status, events in results.values())


def test_past_the_connection_limit_requests_get_503_not_a_hang(database_url, fake, chat_app, alice, tmp_path):
    sessions = _named_sessions(chat_app, 2)
    results: dict = {}
    with production_server(database_url, fake, tmp_path, MAX_CONNECTIONS_PER_WORKER=2) as (port, proc, _):
        with fake.hold_streams() as gate:
            threads = _stream_all(port, sessions, results)
            assert gate.wait_for_held(2, timeout=30)
            refused = _request(port, "GET", "/api/llm/sessions", alice, timeout=5)
            assert refused.status == 503
            assert refused.getheader("Retry-After") == "2"
            assert json.loads(refused.read())["error"]["code"] == "overloaded"
        for t in threads:
            t.join(30)
        assert all(status == 200 and events[-1].event == "done" for status, events in results.values())
        assert _request(port, "GET", "/api/llm/sessions", alice).status == 200
        assert proc.poll() is None  # no crashed worker


def test_naming_and_lease_renewal_work_under_the_server(database_url, fake, chat_app, alice, pool, tmp_path):
    """Auto-naming (background) lands, and a reply held longer than its lease keeps it (renewed)."""
    sid = unique_session_id()
    results: dict = {}
    with production_server(database_url, fake, tmp_path, RUN_LEASE_SECONDS=1.5, RUN_RENEW_SECONDS=0.3) as (port, _, _):
        with fake.hold_streams() as gate:
            [thread] = _stream_all(port, [(alice, sid)], results)
            assert gate.wait_for_held(1, timeout=30)
            with pool.connection() as conn:
                first = conn.execute("select lease_expires_at from chat_session_runs where session_id = %s",
                                     (sid,)).fetchone()["lease_expires_at"]

            def renewed_past_first_expiry():
                with pool.connection() as conn:
                    row = conn.execute("select lease_expires_at, lease_expires_at > now() as live "
                                       "from chat_session_runs where session_id = %s", (sid,)).fetchone()
                    now = conn.execute("select now() as t").fetchone()["t"]
                return row is not None and row["live"] and now > first

            assert wait_until(renewed_past_first_expiry, timeout=10)
        thread.join(30)
        status, events = results[sid]
        assert status == 200 and events[-1].event == "done" and events[-1].data["message_count"] == 2
        local = client_for(chat_app, alice)
        assert wait_until(lambda: local.get(f"/api/llm/sessions/{sid}").get_json()["data"]["session_name"] != "New Chat")


def test_sigterm_lets_an_open_reply_finish_then_exits_cleanly(database_url, fake, chat_app, pool, tmp_path):
    [(user, sid)] = _named_sessions(chat_app, 1)
    results: dict = {}
    with production_server(database_url, fake, tmp_path) as (port, proc, log_path):
        with fake.hold_streams() as gate:
            [thread] = _stream_all(port, [(user, sid)], results)
            assert gate.wait_for_held(1, timeout=30)
            proc.send_signal(signal.SIGTERM)
            assert wait_until(lambda: "Handling signal: term" in log_path.read_text() or proc.poll() is not None, timeout=10)
            assert proc.poll() is None  # still finishing the reply
        thread.join(30)
        assert proc.wait(30) == 0
    status, events = results[sid]
    assert status == 200 and events[-1].event == "done"
    with pool.connection() as conn:
        assert conn.execute("select count(*) as n from chat_session_runs where session_id = %s", (sid,)).fetchone()["n"] == 0

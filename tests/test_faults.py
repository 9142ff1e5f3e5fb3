"""Faults: a database connection killed mid-write, a database restarted under load, an upstream cut mid-stream.

Kills are injected without touching app code: a trigger (scoped to session ids
starting with `fault-`) makes the statement at the injected point wait on an
advisory lock this test holds; once PostgreSQL shows that backend waiting, the
test terminates it (pg_terminate_backend), releases the lock, and checks the
rows: each operation is applied whole or not at all.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import subprocess
import threading
from contextlib import contextmanager

import psycopg
import pytest

from backend.sessions.store import SessionStore
from backend.services import services_of
from tests.chat_support import (
    named_session,
    parse_sse,
    reply_text,
    send,
    turn,
    wait_until,
)
from tests.checkpoints import NO_ROWS, seed_thread, thread_row_counts
from tests.helpers import client_for, installed_trigger

GATE_KEY = 7_241_777  # advisory lock key the gates wait on; no app code uses it
KILLS_PER_POINT = 25  # 5 points: 125 killed operations, plus a let-through control at each


@contextmanager
def gate(pool, table: str, event: str):
    """While the block runs, `event` on `table` for fault-* sessions waits for GATE_KEY."""
    ours = ("row.session_id like 'fault-%'" if table in ("chat_sessions", "session_deletions")
            else "row.thread_id like '%\\_session\\_fault-%'")
    with installed_trigger(pool, f"test_gate_{table}_{event}", table, event,
                           when=ours, then=f"perform pg_advisory_xact_lock({GATE_KEY})"):
        yield


@pytest.fixture
def holder(database_url):
    """A connection of the test's own, to hold the gate and to kill backends."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


def blocked_backend(holder) -> int | None:
    row = holder.execute(
        """select pid from pg_locks where locktype = 'advisory' and not granted and objid = %s
             and database = (select oid from pg_database where datname = current_database())""",
        (GATE_KEY,),
    ).fetchone()
    return row[0] if row else None


def run_gated(holder, operation, *, kill: bool):
    """Run `operation` in a thread until it waits at the gate; kill its backend (or not); return its result."""
    result: dict = {}

    def target():
        try:
            result["value"] = operation()
        except Exception as exc:  # noqa: BLE001 - the caller inspects it
            result["error"] = exc

    holder.execute("select pg_advisory_lock(%s)", (GATE_KEY,))
    worker = threading.Thread(target=target, name="gated-operation")
    try:
        worker.start()
        reached = wait_until(lambda: blocked_backend(holder) is not None or not worker.is_alive(), interval=0.002)
        assert reached, "never reached the gate"
        pid = blocked_backend(holder)
        assert pid is not None, f"finished without reaching the gate: {result}"
        if kill:
            assert holder.execute("select pg_terminate_backend(%s)", (pid,)).fetchone()[0]
            # gone before the unlock, so nothing it does can commit after it
            assert wait_until(lambda: not holder.execute(
                "select 1 from pg_stat_activity where pid = %s", (pid,)).fetchone(), interval=0.002)
    finally:
        holder.execute("select pg_advisory_unlock(%s)", (GATE_KEY,))
        worker.join(30)
    assert not worker.is_alive()
    return result


def assert_503_json(response) -> None:
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.mimetype == "application/json" and response.headers["Retry-After"] == "5"
    assert response.get_json()["error"]["code"] == "database_unavailable"


# --- delete: session row, every checkpoint row and the audit row, together ----------------

def delete_state(pool, user, sid: str):
    with pool.connection() as conn:
        row = conn.execute("select 1 from chat_sessions where user_id = %s and session_id = %s", (user.id, sid)).fetchone()
        audits = conn.execute(
            "select count(*) as n from session_deletions where user_id = %s and session_id = %s", (user.id, sid)
        ).fetchone()["n"]
    return row is not None, thread_row_counts(pool, user.thread_id(sid)), audits


@pytest.mark.parametrize("table, event", [
    ("checkpoint_blobs", "delete"),   # among the checkpoint rows
    ("chat_sessions", "delete"),      # at the session row
    ("session_deletions", "insert"),  # at the audit row
])
def test_killed_delete_is_all_or_nothing(app, api, alice, pool, holder, table, event):
    killed = []
    with gate(pool, table, event):
        for trial in range(KILLS_PER_POINT + 1):
            kill = trial < KILLS_PER_POINT  # the last trial is let through
            sid = f"fault-{secrets.token_hex(6)}"
            assert api.post("/api/llm/sessions", json={"session_id": sid}).status_code == 201
            seeded = seed_thread(pool, alice.thread_id(sid), turns=1)
            assert seeded["checkpoint_blobs"] > 0  # so the first gate has something to wait on

            client = client_for(app, alice)
            result = run_gated(holder, functools.partial(client.delete, f"/api/llm/sessions/{sid}"), kill=kill)

            if kill:
                assert_503_json(result["value"])
                assert delete_state(pool, alice, sid) == (True, seeded, 0), f"partial delete in trial {trial}"
                killed.append(sid)
            else:
                assert result["value"].status_code == 200
                assert delete_state(pool, alice, sid) == (False, NO_ROWS, 1)
    # the 503 was safe to retry, and the pool is fine after all those kills
    assert api.delete(f"/api/llm/sessions/{killed[0]}").status_code == 200
    assert delete_state(pool, alice, killed[0]) == (False, NO_ROWS, 1)


# --- create: the row or no row ------------------------------------------------------------

def test_killed_create_leaves_no_row(app, api, alice, pool, holder):
    killed = []
    with gate(pool, "chat_sessions", "insert"):
        for trial in range(KILLS_PER_POINT + 1):
            kill = trial < KILLS_PER_POINT
            sid = f"fault-{secrets.token_hex(6)}"
            client = client_for(app, alice)
            create = functools.partial(client.post, "/api/llm/sessions", json={"session_id": sid})
            result = run_gated(holder, create, kill=kill)
            with pool.connection() as conn:
                rows = conn.execute(
                    "select count(*) as n from chat_sessions where user_id = %s and session_id = %s", (alice.id, sid)
                ).fetchone()["n"]
            if kill:
                assert_503_json(result["value"])
                assert rows == 0, f"trial {trial}"
                killed.append(sid)
            else:
                assert result["value"].status_code == 201 and rows == 1
    # a retry after the 503 creates it (201: it was not there)
    assert api.post("/api/llm/sessions", json={"session_id": killed[0]}).status_code == 201


# --- count increment: unchanged or +n exactly -----------------------------------------------

def test_killed_increment_changes_nothing(app, api, alice, pool, holder):
    app_pool = services_of(app).db.pool

    def increment(n: int):  # the app's own SQL, on its pool
        with app_pool.connection() as conn:
            return SessionStore.increment_message_count(conn, alice.id, sid, n)

    sid = f"fault-{secrets.token_hex(6)}"
    assert api.post("/api/llm/sessions", json={"session_id": sid}).status_code == 201
    increment(2)

    def count():
        with pool.connection() as conn:
            return conn.execute(
                "select message_count, last_message_at from chat_sessions where user_id = %s and session_id = %s",
                (alice.id, sid),
            ).fetchone()

    with gate(pool, "chat_sessions", "update"):
        for trial in range(KILLS_PER_POINT + 1):
            kill = trial < KILLS_PER_POINT
            before = count()
            result = run_gated(holder, lambda: increment(3), kill=kill)
            if kill:
                assert isinstance(result.get("error"), psycopg.OperationalError), result
                assert count() == before, f"trial {trial}"
            else:
                assert result["value"]["message_count"] == before["message_count"] + 3 == count()["message_count"]


def test_killed_count_at_the_end_of_a_turn_is_repaired_whole(make_app, fake, alice, pool, holder):
    """The turn's last transaction (count += n, run row gone) is killed: both stay as they were, and upkeep
    later levels the count with the history once the lease runs out."""
    app = make_app(openai_base_url=fake.base_url, openai_api_key="k", run_lease_seconds=0.5, run_renew_seconds=0.1)
    client = client_for(app, alice)
    upkeep = services_of(app).maintenance

    def runs(sid):
        with pool.connection() as conn:
            return conn.execute("select count(*) as n from chat_session_runs where session_id = %s", (sid,)).fetchone()["n"]

    with gate(pool, "chat_sessions", "update"):
        for trial in range(5):
            sid = f"fault-{secrets.token_hex(6)}"  # named, so no naming update meets the gate
            assert client.post("/api/llm/sessions", json={"session_id": sid, "session_name": "n"}).status_code == 201
            def whole_turn(sid=sid, trial=trial):  # the stream read to its end
                return send(client, sid, f"question {trial}").get_data(as_text=True)

            events, _ = parse_sse(run_gated(holder, whole_turn, kill=True)["value"])
            assert reply_text(events) == f"Echo: question {trial}"
            assert events[-1].event == "error" and events[-1].data["code"] == "internal_error"
            body = client.get(f"/api/llm/sessions/{sid}?include_messages=true").get_json()
            assert body["data"]["message_count"] == 0 and runs(sid) == 1, f"half a finish in trial {trial}"
            assert len(body["messages"]) == 2  # the history was written before the count

            assert wait_until(lambda: upkeep.reconcile_runs() > 0)  # once the lease has run out
            body = client.get(f"/api/llm/sessions/{sid}?include_messages=true").get_json()
            assert body["data"]["message_count"] == 2 == len(body["messages"]) and runs(sid) == 0


# --- the database restarted under load -------------------------------------------------------

def test_database_restart_under_load(make_app, tmp_path):
    """Requests fail cleanly (503 JSON, Retry-After) while the database is down; the pool recovers by itself."""
    import pgserver
    from pgserver._commands import pg_ctl

    from tests.helpers import User

    # A private embedded server (what backend.db.start_embedded_postgres starts), stopped by this test
    # only: cleanup_mode=None, so pgserver does not try to stop it again at exit.
    server = pgserver.get_server(tmp_path / "pg", cleanup_mode=None)
    # A full pool from the start (min = max): in steady state no request waits for one to be opened.
    app = make_app(database_url=server.get_uri(), db_pool_timeout_seconds=0.5, db_pool_min_size=4, db_pool_max_size=4)
    user = User()
    phase = ["up"]  # up -> stopping -> down -> starting -> back -> recovered
    seen: list[dict] = []  # in order of completion
    done = threading.Condition()
    stop = threading.Event()

    def call(op, request):
        started = {"phase": phase[0]}
        response = request()
        body = response.get_json(silent=True)
        with done:
            seen.append({**started, "op": op, "end_phase": phase[0], "status": response.status_code,
                         "mimetype": response.mimetype, "retry_after": response.headers.get("Retry-After"),
                         "code": body["error"]["code"] if response.status_code >= 400 and body else None})
            done.notify_all()
        return response

    def client_loop():
        client = client_for(app, user)
        while not stop.is_set():
            created = call("create", lambda: client.post("/api/llm/sessions"))
            if created.status_code != 201:
                call("list", lambda: client.get("/api/llm/sessions?limit=5"))
                continue
            path = f"/api/llm/sessions/{created.get_json()['session_id']}"
            call("get", functools.partial(client.get, path))
            call("rename", functools.partial(client.put, path, json={"session_name": "under load"}))
            call("delete", functools.partial(client.delete, path))

    def within(name):  # started and finished in that phase
        return [r for r in seen if r["phase"] == r["end_phase"] == name]

    def wait_for(condition) -> bool:
        with done:
            return done.wait_for(condition, timeout=60)

    workers = [threading.Thread(target=client_loop, name=f"load-{i}") for i in range(4)]
    probe = app.test_client()
    for w in workers:
        w.start()
    try:
        assert wait_for(lambda: len(within("up")) >= 40)
        assert probe.get("/readyz").status_code == 200

        phase[0] = "stopping"
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
        phase[0] = "down"
        assert wait_for(lambda: len(within("down")) >= 12), "requests hang while the database is down"
        ready = probe.get("/readyz")
        assert ready.status_code == 503 and ready.headers["Retry-After"] and ready.get_json()["success"] is False
        assert probe.get("/healthz").status_code == 200

        phase[0] = "starting"
        with server._lock:  # pgserver's own start: same data directory, same socket
            server.ensure_postgres_running()
        phase[0] = "back"
        assert wait_for(lambda: sum(r["status"] < 300 for r in within("back")) >= 40), "the pool did not recover by itself"
        phase[0] = "recovered"  # while the pool refilled, a request could time out waiting: a clean 503
        assert wait_for(lambda: len(within("recovered")) >= 20)
        assert wait_until(lambda: probe.get("/readyz").status_code == 200)
    finally:
        stop.set()
        for w in workers:
            w.join(30)
        services_of(app).close()
        with contextlib.suppress(subprocess.CalledProcessError):  # already down if the test failed there
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)

    for r in seen:  # never a 500, never HTML: a success, or a clean 503
        assert r["mimetype"] == "application/json", r
        assert r["status"] < 300 or (r["status"], r["retry_after"], r["code"]) == (503, "5", "database_unavailable"), r
    assert all(r["status"] < 300 for r in within("up"))
    assert all(r["status"] == 503 for r in within("down"))
    # and once recovered (40 requests through), it stays healthy
    assert all(r["status"] < 300 for r in within("recovered")), [r for r in within("recovered") if r["status"] >= 300]


# --- upstream faults mid-stream ----------------------------------------------------------------

def test_stream_cut_on_the_first_turn_keeps_a_consistent_session(chat, fake):
    # Named by the user, so no naming request races the stream for the scripted fault.
    sid = named_session(chat)
    fake.cut_stream_next(after_tokens=3)
    fake.reply = lambda body: "one two three four five six"
    events = turn(chat, sid, "first question")
    assert events[0].event == "run" and {e.event for e in events[1:-1]} == {"token"} and events[-1].event == "error"
    assert reply_text(events) == "one two three "
    assert events[-1].data["code"] == "upstream_error"
    body = chat.get(f"/api/llm/sessions/{sid}?include_messages=true").get_json()
    assert [(m["role"], m["content"]) for m in body["messages"]] == [("user", "first question")]
    assert body["data"]["message_count"] == 1
    events = turn(chat, sid, "again")
    assert events[-1].event == "done" and events[-1].data["message_count"] == 3


def test_upstream_stalling_mid_stream_on_a_brand_new_session(make_app, fake, alice):
    """The session is made by this turn, and named meanwhile; the reply stalls after one token."""
    app = make_app(openai_base_url=fake.base_url, openai_api_key="k", openai_timeout_seconds=0.3, openai_max_retries=0)
    client = client_for(app, alice)
    sid = f"chat-{secrets.token_hex(6)}"
    fake.token_delay = 1.0  # streams only: the first token at once, the next after the read timeout
    events, _ = parse_sse(send(client, sid, "a question that stalls").get_data(as_text=True))
    assert [e.event for e in events] == ["run", "token", "error"]  # the stall is longer than any coalescing
    assert events[-1].data["code"] == "upstream_timeout"
    body = client.get(f"/api/llm/sessions/{sid}?include_messages=true").get_json()
    assert [m["role"] for m in body["messages"]] == ["user"]
    assert body["data"]["message_count"] == 1
    assert wait_until(lambda: client.get(f"/api/llm/sessions/{sid}").get_json()["data"]["session_name"] != "New Chat")

"""Live events: a subscriber on one server process sees every committed change made through another.

The subscriber reads GET /api/llm/events from a gunicorn server (the production
command); the changes are made through this test process's own app, on the same
database. Events are awaited, never slept for.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import queue
import signal
import socket
import subprocess
import threading
import uuid
import time
from dataclasses import dataclass

import psycopg
import pytest

from backend.events.hub import LISTENER_NAME
from backend.events.store import LATEST_ID_SQL, EventStore
from backend.services import services_of
from support.databases import scratch_database
from support.net import served_on_loopback
from tests.chat_support import named_session, turn, wait_until
from tests.helpers import User, client_for, failing_trigger, make_token, unique_session_id
from tests.test_auth import BROWSER, signup
from tests.test_server_model import production_server


@dataclass
class Event:
    id: str | None
    event: str
    data: dict


class Subscription:
    """GET /api/llm/events on a real connection, parsed as it arrives, in a thread of its own."""

    def __init__(self, port: int, token: str | None, last_event_id: str | None = None, query: str = "",
                 cookie: str | None = None) -> None:
        self.events: queue.Queue = queue.Queue()
        self.ended = threading.Event()
        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Accept": "text/event-stream"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if cookie is not None:
            headers["Cookie"] = cookie
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self._conn.request("GET", f"/api/llm/events{query}", headers=headers)
        self.response = self._conn.getresponse()
        assert self.response.status == 200, self.response.read()
        self.comments: list[str] = []
        self._opened = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        assert self._opened.wait(10)  # the server has subscribed: later changes reach us

    def _read(self) -> None:
        fields: dict = {}
        try:
            for raw in self.response:
                line = raw.decode().rstrip("\r\n")
                if line.startswith(":"):
                    self.comments.append(line)
                    self._opened.set()
                elif line == "":
                    if "data" in fields:
                        self.events.put(Event(fields.get("id"), fields.get("event", "message"), json.loads(fields["data"])))
                    fields = {}
                else:
                    name, _, value = line.partition(":")
                    fields[name] = value[1:] if value.startswith(" ") else value
        except (OSError, ValueError, AttributeError):  # AttributeError: closed under our feet by close()
            pass
        finally:
            self.ended.set()

    def next(self, timeout: float = 15) -> Event:
        return self.events.get(timeout=timeout)

    def until(self, predicate, timeout: float = 15) -> list[Event]:
        """Events up to and including the first that satisfies predicate."""
        seen, deadline = [], time.monotonic() + timeout
        while True:
            event = self.next(max(0.01, deadline - time.monotonic()))
            seen.append(event)
            if predicate(event):
                return seen

    def close(self) -> None:
        # Shut the socket first: closing the response waits for the reader thread's
        # blocked read, which would otherwise last until the next heartbeat.
        sock = self._conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.ended.wait(5)
        self._conn.close()


@pytest.fixture(scope="module")
def server(database_url, fake_model, tmp_path_factory):
    with production_server(database_url, fake_model, tmp_path_factory.mktemp("events"), WEB_CONCURRENCY=2,
                           RUN_RENEW_SECONDS=0.2, RUN_LEASE_SECONDS=2) as (port, _, _):
        yield port


def api_session(client, sid):
    return client.get(f"/api/llm/sessions/{sid}").get_json()["data"]


def test_every_event_type_crosses_processes_with_the_exact_session(server, chat_app, fake, alice):
    local = client_for(chat_app, alice)
    tab = Subscription(server, alice.token)
    try:
        sid = unique_session_id()
        created = local.post("/api/llm/sessions", json={"session_id": sid, "session_name": "Live"}).get_json()["data"]
        e = tab.next()
        assert (e.event, e.data["type"], e.data["session_id"]) == ("session.created", "session.created", sid)
        assert e.data["session"] == created and e.id.isdigit() and e.data["at"].endswith("Z")

        renamed = local.put(f"/api/llm/sessions/{sid}", json={"session_name": "Renamed"}).get_json()["data"]
        e = tab.next()
        assert e.event == "session.updated" and e.data["session"] == renamed

        turn(local, sid, "hello live")
        events = tab.until(lambda ev: ev.event == "run.finished")
        assert [ev.event for ev in events] == ["run.started", "session.updated", "run.finished"]
        assert events[2].data["outcome"] == "done"
        after_turn = api_session(local, sid)
        assert events[1].data["session"] == after_turn  # count and unread in one event
        assert after_turn["message_count"] == 2 and after_turn["has_unread"] is True
        e = tab.next()  # what the turn cost, after it ended (backend/usage)
        assert e.event == "usage.updated" and e.data["run_id"] == events[2].data["run_id"]
        spent = local.get(f"/api/llm/sessions/{sid}/usage").get_json()["data"]
        assert e.data["kind"] == "chat" and spent["calls"] == 1 and e.data["usage"] == {
            key: spent[key] for key in ("calls", "input_tokens", "output_tokens", "cost_micros", "currency")}

        forced = local.delete(f"/api/llm/sessions/{sid}").get_json()
        e = tab.next()
        assert e.event == "session.deleted" and e.data["deleted"] == forced["deleted"] and e.data["forced"] is False
        assert "session" not in e.data
        assert [int(x.id) for x in events] == sorted(int(x.id) for x in events)
    finally:
        tab.close()


def test_auto_name_and_reads_reach_other_tabs(server, chat_app, fake, alice):
    local = client_for(chat_app, alice)
    tab = Subscription(server, alice.token)
    try:
        sid = unique_session_id()
        turn(local, sid, "What is the value of the Highland property?")  # a new session: named in the background
        named = tab.until(lambda ev: ev.event == "session.updated" and ev.data["session"]["session_name"] != "New Chat")
        assert named[-1].data["session"]["session_name"] == "Highland Property Valuation"
        assert [s["session_id"] for s in local.get("/api/llm/sessions?unread=true").get_json()["data"]] == [sid]

        read = local.post(f"/api/llm/sessions/{sid}/read")
        assert read.status_code == 200 and read.get_json()["data"]["has_unread"] is False
        e = tab.until(lambda ev: ev.event == "session.updated" and ev.data["session"]["has_unread"] is False)[-1]
        assert e.data["session"] == read.get_json()["data"]
        assert local.get("/api/llm/sessions?unread=true").get_json()["data"] == []
        assert local.post(f"/api/llm/sessions/{sid}/read").status_code == 200  # idempotent
        assert local.post("/api/llm/sessions/no-such-session/read").status_code == 404
    finally:
        tab.close()


def test_rolled_back_changes_emit_nothing(server, chat_app, alice, pool):
    local = client_for(chat_app, alice)
    sid = named_session(local, "Stays")
    turn(local, sid, "keep")
    failing = f"fail-{unique_session_id()}"
    tab = Subscription(server, alice.token)
    try:
        # Made after the tab opened and seen by it, so no event from before the
        # failures can still be on its way (a new stream may repeat the change
        # just before it: docs/api.md).
        local.post("/api/llm/sessions", json={"session_id": failing, "session_name": "x"})
        tab.until(lambda ev: ev.event == "session.created" and ev.data["session_id"] == failing)
        with failing_trigger(pool, "chat_sessions", "update", "fail-"):
            assert local.put(f"/api/llm/sessions/{failing}", json={"session_name": "never"}).status_code == 500
        with failing_trigger(pool, "chat_sessions", "delete", "fail-"):
            assert local.delete(f"/api/llm/sessions/{failing}").status_code == 500
        marker = local.put(f"/api/llm/sessions/{sid}", json={"session_name": "Marker"}).get_json()["data"]
        e = tab.next()  # the first event after the failures is the marker: nothing of them leaked
        assert e.event == "session.updated" and e.data["session"] == marker
    finally:
        tab.close()


@pytest.mark.parametrize("how", ["header", "query"])
def test_resume_gets_every_missed_event_in_order_then_live_ones(server, chat_app, alice, how):
    local = client_for(chat_app, alice)
    tab = Subscription(server, alice.token)
    sid = unique_session_id()
    local.post("/api/llm/sessions", json={"session_id": sid})
    first = tab.next()
    tab.close()
    for i in range(5):  # while disconnected
        local.put(f"/api/llm/sessions/{sid}", json={"session_name": f"name {i}"})
    again = (Subscription(server, alice.token, last_event_id=first.id) if how == "header"
             else Subscription(server, alice.token, query=f"?last_event_id={first.id}"))
    try:
        missed = [again.next() for _ in range(5)]
        assert [e.data["session"]["session_name"] for e in missed] == [f"name {i}" for i in range(5)]
        assert len({e.id for e in missed}) == 5 and int(missed[0].id) > int(first.id)
        live = local.put(f"/api/llm/sessions/{sid}", json={"session_name": "live"}).get_json()["data"]
        assert again.next().data["session"] == live
        with pytest.raises(queue.Empty):
            again.next(timeout=0.5)  # and no duplicates behind it
    finally:
        again.close()


def test_a_cursor_past_retention_or_unknown_gets_reset_then_live(server, chat_app, alice, pool):
    local = client_for(chat_app, alice)
    sid = named_session(local)
    with pool.connection() as conn:
        old_cursor = conn.execute("select max(id) as id from session_events").fetchone()["id"]
    local.put(f"/api/llm/sessions/{sid}", json={"session_name": "after the cursor"})
    with pool.connection() as conn:  # retention purged past it
        conn.execute("update session_events_purged set upto = %s", (old_cursor + 1,))
    try:
        for cursor in (str(old_cursor), "not-a-cursor", "99999999999999"):
            tab = Subscription(server, alice.token, last_event_id=cursor)
            try:
                e = tab.next()
                assert e.event == "reset" and e.data == {"type": "reset"} and e.id.isdigit()
                live = local.put(f"/api/llm/sessions/{sid}", json={"session_name": f"live {cursor[:5]}"}).get_json()
                assert tab.next().data["session"] == live["data"]
            finally:
                tab.close()
    finally:
        with pool.connection() as conn:
            conn.execute("update session_events_purged set upto = 0")


def test_subscribers_recover_after_the_listener_connection_dies(server, chat_app, alice, pool):
    local = client_for(chat_app, alice)
    tab = Subscription(server, alice.token)
    try:
        sid = named_session(local)  # made, and seen, after the tab opened: nothing older is on its way
        tab.until(lambda ev: ev.event == "session.created" and ev.data["session_id"] == sid)
        with pool.connection() as conn:
            killed = conn.execute(
                "select count(pg_terminate_backend(pid)) as n from pg_stat_activity "
                "where application_name = %s and datname = current_database()", (LISTENER_NAME,)).fetchone()["n"]
        assert killed >= 1
        during = local.put(f"/api/llm/sessions/{sid}", json={"session_name": "while down"}).get_json()["data"]
        assert tab.next(timeout=20).data["session"] == during  # caught up after the listener reconnected
        after = local.put(f"/api/llm/sessions/{sid}", json={"session_name": "after"}).get_json()["data"]
        assert tab.next().data["session"] == after
    finally:
        tab.close()


def test_events_never_cross_users_even_with_the_same_session_id(server, chat_app, alice, bob):
    alice_tab, bob_tab = Subscription(server, alice.token), Subscription(server, bob.token)
    try:
        same = unique_session_id()
        a, b = client_for(chat_app, alice), client_for(chat_app, bob)
        a.post("/api/llm/sessions", json={"session_id": same, "session_name": "alice's"})
        b.post("/api/llm/sessions", json={"session_id": same, "session_name": "bob's"})
        a.put(f"/api/llm/sessions/{same}", json={"is_archived": True})
        b.delete(f"/api/llm/sessions/{same}")
        alice_events = [alice_tab.next() for _ in range(2)]
        bob_events = [bob_tab.next() for _ in range(2)]
        assert [e.event for e in alice_events] == ["session.created", "session.updated"]
        assert {e.data["session"]["session_name"] for e in alice_events} == {"alice's"}
        assert [e.event for e in bob_events] == ["session.created", "session.deleted"]
        assert bob_events[0].data["session"]["session_name"] == "bob's"
        for tab in (alice_tab, bob_tab):
            with pytest.raises(queue.Empty):
                tab.next(timeout=0.5)
        assert api_session(a, same)["is_archived"] is True  # alice's is untouched by bob's delete
    finally:
        alice_tab.close()
        bob_tab.close()


def test_a_stream_ends_with_auth_expired_when_its_token_does(server):
    user = User()
    token = make_token(user.id, exp=int(time.time()) + 2)
    tab = Subscription(server, token)
    try:
        e = tab.next(timeout=10)
        assert e.event == "auth_expired"
        assert tab.ended.wait(5)
    finally:
        tab.close()


def test_a_cookie_signed_in_tab_gets_its_changes_and_ends_at_sign_out(server, chat_app):
    # A cookie sign-in reads the database before the stream starts (the user, the sign-in's
    # lifetime) and again when it is woken; under the production worker that first part runs
    # in a greenlet of its own (backend/shallow_streams.py) that blocks on those reads.
    email, password = signup(chat_app)

    def call(method, path, body=None, cookie=None):
        conn = http.client.HTTPConnection("127.0.0.1", server, timeout=30)
        headers = {"Content-Type": "application/json", **BROWSER, **({"Cookie": cookie} if cookie else {})}
        conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        r = conn.getresponse()
        return r.status, r.getheader("Set-Cookie"), r.read()

    status, set_cookie, _ = call("POST", "/api/auth/login", {"email": email, "password": password})
    assert status == 200
    cookie = set_cookie.split(";", 1)[0]
    tab = Subscription(server, None, cookie=cookie)
    try:
        sid = unique_session_id()
        assert call("POST", "/api/llm/sessions", {"session_id": sid}, cookie)[0] == 201
        e = tab.next()
        assert (e.event, e.data["session_id"]) == ("session.created", sid)
        assert call("POST", "/api/auth/logout", {}, cookie)[0] == 200
        assert tab.until(lambda ev: ev.event == "auth_expired")[-1].data == {"type": "auth_expired"}
        assert tab.ended.wait(5)
    finally:
        tab.close()


def test_the_stream_needs_a_caller(server):
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=10)
    conn.request("GET", "/api/llm/events")
    r = conn.getresponse()
    assert r.status == 401 and json.loads(r.read())["success"] is False


def test_a_stream_renews_itself_and_the_reconnect_misses_nothing(make_app, alice):
    app = make_app(events_max_stream_seconds=0.5, events_heartbeat_seconds=0.2)
    local = client_for(app, alice)
    sid = unique_session_id()
    first = local.get("/api/llm/events", buffered=False)
    local.post("/api/llm/sessions", json={"session_id": sid})
    body = first.get_data(as_text=True)  # ends by itself after 0.5 s
    first.close()
    cursor = [line[4:] for line in body.splitlines() if line.startswith("id: ")][-1]
    local.put(f"/api/llm/sessions/{sid}", json={"session_name": "between streams"})
    second = local.get("/api/llm/events", headers={"Last-Event-ID": cursor}, buffered=False)
    body = second.get_data(as_text=True)
    second.close()
    assert "event: session.updated" in body and "between streams" in body and f"id: {cursor}\n" not in body


def test_events_can_be_turned_off(make_app, alice):
    r = client_for(make_app(events_enabled=False), alice).get("/api/llm/events")
    assert r.status_code == 503 and r.get_json()["error"]["code"] == "events_disabled"


def test_each_worker_listens_from_its_start_before_any_stream(server_url, fake_model, tmp_path):
    # A database of its own: no other test's server listens there.
    with scratch_database(server_url, prefix="listen") as url, psycopg.connect(url, autocommit=True) as conn:
        with production_server(url, fake_model, tmp_path, WEB_CONCURRENCY=2):
            deadline, listening = time.monotonic() + 20, 0
            while listening < 2 and time.monotonic() < deadline:
                # The listener's last statement, after LISTEN: the latest id (backend/events/hub.py).
                listening = conn.execute("select count(*) from pg_stat_activity where application_name = %s "
                                         "and query = %s and datname = current_database()",
                                         (LISTENER_NAME, LATEST_ID_SQL)).fetchone()[0]
                time.sleep(0.05)  # polling the database: there is nothing to wait on
            assert listening == 2  # one listener per worker, and no stream was ever opened


def test_sigterm_ends_event_streams_at_once_so_shutdown_does_not_wait(database_url, fake_model, alice, tmp_path):
    with production_server(database_url, fake_model, tmp_path) as (port, proc, _):
        tab = Subscription(port, alice.token)
        try:
            proc.send_signal(signal.SIGTERM)
            assert tab.ended.wait(10)  # the stream closed; EventSource reconnects elsewhere from its cursor
            assert proc.wait(15) == 0  # well within the 30-s graceful timeout an endless stream would take
        finally:
            tab.close()


def test_subscribers_ride_out_a_database_restart_and_miss_nothing(make_app, tmp_path):
    import pgserver
    from pgserver._commands import pg_ctl

    server = pgserver.get_server(tmp_path / "pg", cleanup_mode=None)  # private: this test stops it
    app = make_app(database_url=server.get_uri(), events_heartbeat_seconds=0.3, db_pool_timeout_seconds=0.5)
    user = User()
    local = client_for(app, user)
    stream = local.get("/api/llm/events", buffered=False)
    chunks: queue.Queue = queue.Queue()

    def read() -> None:
        for chunk in stream.response:
            chunks.put(chunk.decode() if isinstance(chunk, bytes) else chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def wait_for_text(text: str, timeout: float = 30) -> None:
        seen, deadline = "", time.monotonic() + timeout
        while text not in seen:
            seen += chunks.get(timeout=max(0.01, deadline - time.monotonic()))

    try:
        wait_for_text(": stream open")
        local.post("/api/llm/sessions", json={"session_id": "before-restart"})
        wait_for_text("before-restart")
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
        wait_for_text(": keep-alive")  # the stream lives on while the database is down
        with server._lock:
            server.ensure_postgres_running()
        assert wait_until_created(local, "after-restart")
        wait_for_text("after-restart")  # caught up once the listener and the pool were back
    finally:
        services_of(app).event_hub.drain()  # ends the stream from inside, as a shutdown does
        reader.join(10)
        stream.close()
        services_of(app).close()
        with contextlib.suppress(subprocess.CalledProcessError):
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)


def wait_until_created(client, session_id: str) -> bool:
    """The pool may need a moment after the restart: retry the create until it lands."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if client.post("/api/llm/sessions", json={"session_id": session_id}).status_code in (200, 201):
            return True
    return False


def test_a_bulk_insert_for_many_users_in_one_transaction_commits(pool):
    """Events lock once per transaction, not per user: a lock each would fill PostgreSQL's lock table."""
    prefix = f"bulk-{uuid.uuid4().hex[:8]}"
    with pool.connection() as conn, conn.transaction():
        conn.execute(
            "insert into chat_sessions (user_id, business_id, session_id, thread_id) "
            "select %s || '-' || g, 'b', 's', 'user_' || %s || '-' || g || '_business_b_session_s' "
            "from generate_series(1, 20000) g", (prefix, prefix))
    with pool.connection() as conn:
        assert conn.execute("select count(*) as n from session_events where user_id like %s",
                            (prefix + "-%",)).fetchone()["n"] == 20000
        conn.execute("delete from chat_sessions where user_id like %s", (prefix + "-%",))


def test_a_stream_starting_live_reads_nothing_until_woken_and_misses_nothing(chat_app, alice, monkeypatch):
    # A new client (no Last-Event-ID) starts at the highest id the listener has heard of (sql/016 puts
    # it in the wake-up), and an idle stream reads nothing at its heartbeats: a reconnect storm or
    # thousands of idle tabs cost the database nothing. The next change still arrives, in full.
    services = services_of(chat_app)
    hub, store = services.event_hub, EventStore  # every store's reads (the class is the public surface)
    hub.start()
    assert hub.connected.wait(10)
    reads: list[str] = []
    for name in ("read_after", "latest_id_for", "resume"):
        real = getattr(store, name)
        monkeypatch.setattr(store, name, lambda *a, _real=real, _name=name, **k: (reads.append(_name), _real(*a, **k))[1])
    local = client_for(chat_app, alice)
    sid = unique_session_id()
    assert local.post("/api/llm/sessions", json={"session_id": sid}).status_code == 201
    deadline = time.monotonic() + 10
    with services.db.pool.connection() as conn:
        created = conn.execute("select max(id) as id from session_events where user_id = %s", (alice.id,)).fetchone()["id"]
    while hub.latest_id < created and time.monotonic() < deadline:
        time.sleep(0.01)  # the listener thread hears of it: nothing to wait on from here
    assert hub.latest_id >= created

    stream = services.events.stream(alice.id, None)
    assert next(stream).startswith(b"retry:")
    assert reads == []  # started without a query
    renamed = local.put(f"/api/llm/sessions/{sid}", json={"session_name": "Heard"}).get_json()["data"]
    event = next(stream).decode()
    assert reads == ["read_after"]  # one read, after the wake-up
    assert "event: session.updated" in event and json.loads(event.split("data: ", 1)[1])["session"] == renamed
    assert hub.latest_id == int(event.split("\n", 1)[0].removeprefix("id: "))
    stream.close()


def test_a_resuming_stream_checks_its_cursor_and_reads_its_events_in_one_query(chat_app, alice, monkeypatch):
    # A reconnect storm of tabs with cursors costs one read each, not two.
    services = services_of(chat_app)
    hub, store = services.event_hub, EventStore  # every store's reads (the class is the public surface)
    hub.start()
    assert hub.connected.wait(10)
    local = client_for(chat_app, alice)
    sid = unique_session_id()
    assert local.post("/api/llm/sessions", json={"session_id": sid}).status_code == 201
    with services.db.pool.connection() as conn:
        cursor = conn.execute("select max(id) as id from session_events where user_id = %s", (alice.id,)).fetchone()["id"]
    names = [local.put(f"/api/llm/sessions/{sid}", json={"session_name": f"missed {i}"}).get_json()["data"]
             for i in range(2)]
    reads: list[str] = []
    for name in ("read_after", "latest_id_for", "resume"):
        real = getattr(store, name)
        monkeypatch.setattr(store, name, lambda *a, _real=real, _name=name, **k: (reads.append(_name), _real(*a, **k))[1])

    stream = services.events.stream(alice.id, str(cursor))
    assert next(stream).startswith(b"retry:")
    missed = [next(stream).decode() for _ in names]
    assert reads == ["resume"]
    assert [json.loads(e.split("data: ", 1)[1])["session"] for e in missed] == names
    stream.close()


# --- the per-user cap (EVENTS_MAX_STREAMS_PER_USER) under simultaneous opens ---------------------------


def _open_at_once(port: int, cookie: str, n: int) -> list[tuple[int, http.client.HTTPResponse, dict]]:
    """n GET /api/llm/events by one cookie sign-in, sent together (each connected first, then all
    released by one barrier); returns (status, response, error body) each, the streams left open."""
    barrier = threading.Barrier(n)
    results: list = []

    def one():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.connect()
        barrier.wait(30)
        conn.request("GET", "/api/llm/events", headers={"Cookie": cookie, "Accept": "text/event-stream"})
        r = conn.getresponse()  # holds the connection from here (the server closes after each response)
        results.append((r.status, r, json.loads(r.read()) if r.status != 200 else {}))

    threads = [threading.Thread(target=one, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == n
    return results


def _cookie_for(app, port: int) -> tuple[str, str]:
    """A cookie sign-in (its streams read the database before they start): (cookie, user id)."""
    email, password = signup(app)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/api/auth/login", body=json.dumps({"email": email, "password": password}),
                 headers={"Content-Type": "application/json", **BROWSER})
    r = conn.getresponse()
    assert r.status == 200
    return r.getheader("Set-Cookie").split(";", 1)[0], json.loads(r.read())["data"]["user_id"]


def _close_all(results) -> None:
    for _, response, _ in results:
        response.close()


def test_simultaneous_opens_by_one_user_never_pass_the_cap(make_app):
    cap, n = 3, 40
    # Short heartbeats: a server learns that a stream's client left when it next writes to it.
    app = make_app(events_max_streams_per_user=cap, events_heartbeat_seconds=0.2)
    hub = services_of(app).event_hub
    with served_on_loopback(app) as port:
        cookie, user_id = _cookie_for(app, port)
        results = _open_at_once(port, cookie, n)
        try:
            assert sorted(status for status, _, _ in results) == [200] * cap + [429] * (n - cap)
            assert {body["error"]["code"] for status, _, body in results if status == 429} == {"too_many_streams"}
            assert hub.subscribers_of(user_id) == cap
        finally:
            _close_all(results)
        # Closed streams give their places back (and refused ones never held one).
        assert wait_until(lambda: hub.subscribers_of(user_id) == 0)


def test_simultaneous_opens_never_pass_the_cap_under_the_production_server(chat_app, database_url, fake_model, tmp_path):
    cap, n = 3, 60
    with production_server(database_url, fake_model, tmp_path, EVENTS_MAX_STREAMS_PER_USER=cap,
                           EVENTS_HEARTBEAT_SECONDS=0.2) as (port, _, _):
        cookie, _ = _cookie_for(chat_app, port)
        results = _open_at_once(port, cookie, n)
        try:
            assert sorted(status for status, _, _ in results) == [200] * cap + [429] * (n - cap)
        finally:
            _close_all(results)

        def room_again() -> bool:
            [(status, response, _)] = _open_at_once(port, cookie, 1)
            response.close()
            return status == 200

        assert wait_until(room_again)


@pytest.mark.parametrize("cursor", ["²", "١٢", "9999999999999999999", "-1", "1e3"])
def test_a_cursor_that_is_not_ascii_digits_gets_reset_not_a_broken_stream(make_app, alice, cursor):
    # '²'.isdigit() is true, and int('²') fails: the stream used to break after its 200.
    app = make_app(events_max_stream_seconds=0.2, events_heartbeat_seconds=0.1)
    r = client_for(app, alice).get("/api/llm/events", query_string={"last_event_id": cursor})
    assert r.status_code == 200
    body = r.get_data(as_text=True)
    assert "event: reset" in body

"""A busy pool is a queue, not a database outage: requests wait their turn, a queue too long
is 503 `overloaded`, the database failing is 503 `database_unavailable` after the short wait,
and leases are renewed whatever the queue."""

from __future__ import annotations

import threading
import time

from backend.db import PoolBusy
from backend.services import services_of
from tests.chat_support import named_session, parse_sse, send, wait_until
from tests.helpers import User, client_for, in_thread, moving_queue, requests_waiting

# Deliberate waits below are what the tests are about (a request waiting past a timeout,
# a connection held for a while), never synchronisation: that is done on the pool's stats.
SHORT, QUEUE = 0.3, 10.0


def test_a_request_waits_past_the_short_timeout_while_the_database_answers(make_app):
    app = make_app(db_pool_timeout_seconds=SHORT, db_pool_queue_seconds=QUEUE, db_pool_min_size=2, db_pool_max_size=2)
    client = client_for(app, User())
    assert client.get("/api/llm/sessions").status_code == 200  # a connection came back in working order
    pool = services_of(app).db.pool
    held = [pool.getconn() for _ in range(2)]
    try:
        started = time.monotonic()
        thread, out = in_thread(lambda: client.get("/api/llm/sessions"))
        assert wait_until(lambda: requests_waiting(pool) == 1)
        threading.Event().wait(3 * SHORT)  # held past the short timeout
        pool.putconn(held.pop())
        thread.join(QUEUE)
    finally:
        for conn in held:
            pool.putconn(conn)
    assert out["value"].status_code == 200, out["value"].get_data(as_text=True)
    assert time.monotonic() - started > 3 * SHORT


def test_a_queue_too_long_is_503_overloaded_with_retry_after(make_app):
    app = make_app(db_pool_timeout_seconds=1.0, db_pool_queue_seconds=1.5, db_pool_min_size=1, db_pool_max_size=1)
    client = client_for(app, User())
    assert client.get("/api/llm/sessions").status_code == 200
    pool = services_of(app).db.pool
    with moving_queue(pool) as start:  # 2 s of turns ahead of the request
        thread, out = in_thread(lambda: client.get("/api/llm/sessions"))
        start()
        thread.join(10)
    r = out["value"]
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    assert r.get_json() == {"success": False, "error": {
        "code": "overloaded", "message": "The server is too busy; try again shortly"}}
    assert client.get("/api/llm/sessions").status_code == 200  # the queue drained


def test_a_pool_that_stopped_returning_connections_is_database_unavailable(make_app):
    app = make_app(db_pool_timeout_seconds=SHORT, db_pool_queue_seconds=SHORT, db_pool_min_size=1, db_pool_max_size=1)
    client = client_for(app, User())
    assert client.get("/api/llm/sessions").status_code == 200
    pool = services_of(app).db.pool
    conn = pool.getconn()  # nothing comes back for longer than the wait: no queue is moving
    try:
        r = client.get("/api/llm/sessions")
    finally:
        pool.putconn(conn)
    assert r.status_code == 503 and r.get_json()["error"]["code"] == "database_unavailable"


def test_after_a_connection_fails_a_request_waits_the_short_timeout_only(make_app, pool):
    app = make_app(db_pool_timeout_seconds=SHORT, db_pool_queue_seconds=QUEUE, db_pool_min_size=1, db_pool_max_size=1)
    client = client_for(app, User())
    assert client.get("/api/llm/sessions").status_code == 200
    app_pool = services_of(app).db.pool
    assert app_pool.health.answering()
    with app_pool.connection() as conn:
        pid = conn.info.backend_pid
    with pool.connection() as admin:  # the server ends it, as a restart would
        assert admin.execute("select pg_terminate_backend(%s) as ok", (pid,)).fetchone()["ok"]
    lost = client.get("/api/llm/sessions")
    assert lost.status_code == 503 and lost.get_json()["error"]["code"] == "database_unavailable"
    assert not app_pool.health.answering()

    conn = app_pool.getconn(timeout=10)  # the pool's new connection: nothing has come back since the failure
    try:
        started = time.monotonic()
        r = client.get("/api/llm/sessions")
        waited = time.monotonic() - started
    finally:
        app_pool.putconn(conn)
    assert r.status_code == 503 and r.get_json()["error"]["code"] == "database_unavailable"
    assert waited < QUEUE / 2
    assert app_pool.health.answering()  # it came back in working order (putconn tells health)
    assert client.get("/api/llm/sessions").status_code == 200


def test_readiness_is_busy_not_down_while_every_connection_is_in_use(make_app):
    app = make_app(db_pool_timeout_seconds=1.0, db_pool_queue_seconds=QUEUE, db_pool_min_size=2, db_pool_max_size=2)
    probe = app.test_client()
    assert probe.get("/readyz").get_json() == {"success": True, "data": {"status": "ready"}}
    pool = services_of(app).db.pool
    held = [pool.getconn() for _ in range(2)]
    try:
        busy = probe.get("/readyz")
    finally:
        for conn in held:
            pool.putconn(conn)
    assert busy.status_code == 200 and busy.get_json()["data"]["status"] == "busy"
    assert wait_until(lambda: probe.get("/readyz").get_json()["data"]["status"] == "ready")  # once they are back


def _lease_expiry(pool, user_id: str, session_id: str):
    with pool.connection() as conn:
        row = conn.execute("select lease_expires_at from chat_session_runs where user_id = %s and session_id = %s",
                           (user_id, session_id)).fetchone()
    return row and row["lease_expires_at"]


def test_leases_are_renewed_while_every_pooled_connection_is_taken(make_app, fake, fake_model, pool):
    app = make_app(openai_base_url=fake_model.base_url, openai_api_key="test-key", openai_model="fake-chat",
                   naming_model="fake-naming", db_pool_min_size=2, db_pool_max_size=2,
                   run_renew_seconds=0.1, run_lease_seconds=0.5)
    user = User()
    client = client_for(app, user)
    sid = named_session(client)
    app_pool = services_of(app).db.pool
    with fake.hold_streams() as gate:
        streaming = in_thread(lambda: send(client, sid, "hello"))
        assert gate.wait_for_held(1)
        held = [app_pool.getconn() for _ in range(2)]  # a burst has every pooled connection
        try:
            before = _lease_expiry(pool, user.id, sid)
            assert wait_until(lambda: _lease_expiry(pool, user.id, sid) > before), "no renewal while the pool was taken"
        finally:
            for conn in held:
                app_pool.putconn(conn)
    thread, out = streaming
    thread.join(10)
    events, _ = parse_sse(out["value"].get_data(as_text=True))
    assert events[-1].event == "done", events[-1]


def test_pool_busy_is_a_pool_timeout():
    # Callers that catch PoolTimeout (the lease keeper, the events hub) catch this one too.
    from psycopg_pool import PoolTimeout

    assert issubclass(PoolBusy, PoolTimeout)


def test_the_lease_keeper_opens_its_connection_again_when_it_is_lost(make_app, fake, fake_model, pool):
    app = make_app(openai_base_url=fake_model.base_url, openai_api_key="test-key", openai_model="fake-chat",
                   naming_model="fake-naming", run_renew_seconds=0.1, run_lease_seconds=0.5)
    user = User()
    client = client_for(app, user)
    sid = named_session(client)
    leases = services_of(app).leases
    with fake.hold_streams() as gate:
        streaming = in_thread(lambda: send(client, sid, "hello"))
        assert gate.wait_for_held(1)
        assert wait_until(lambda: leases._conn is not None)
        lost = leases._conn.info.backend_pid
        with pool.connection() as admin:  # a restart or an idle timeout ends it
            assert admin.execute("select pg_terminate_backend(%s) as ok", (lost,)).fetchone()["ok"]
        assert wait_until(lambda: leases._conn is not None and not leases._conn.closed
                          and leases._conn.info.backend_pid != lost)
        before = _lease_expiry(pool, user.id, sid)
        assert wait_until(lambda: _lease_expiry(pool, user.id, sid) > before), "no renewal on the new connection"
    thread, out = streaming
    thread.join(10)
    assert parse_sse(out["value"].get_data(as_text=True))[0][-1].event == "done"


def test_idle_connections_are_handed_out_newest_first(make_app):
    # After a burst grew the pool, light traffic keeps to the connections used last:
    # those stay warm, the others idle where the pool shrinks from.
    app = make_app(db_pool_min_size=3, db_pool_max_size=3)
    pool = services_of(app).db.pool
    pool.wait(timeout=10)
    first, second, third = (pool.getconn() for _ in range(3))
    for conn in (first, second, third):
        pool.putconn(conn)
    again = pool.getconn()
    assert again is third  # psycopg_pool alone hands out `first`, idle longest
    pool.putconn(again)
    assert pool.get_stats()["pool_available"] == 3  # returns are synchronous (QueueingPool.putconn)
    with pool.connection() as conn:
        assert conn is third
    with pool.connection() as conn:  # and again, while `first` and `second` stay idle
        assert conn is third

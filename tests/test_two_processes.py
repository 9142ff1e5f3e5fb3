"""Busy and forced deletes across processes: a gunicorn server (2 workers) and this test process share one database."""

from __future__ import annotations

import http.client
import json

import pytest

from tests.chat_support import parse_sse, send
from tests.checkpoints import NO_ROWS, thread_row_counts
from tests.helpers import client_for, unique_session_id
from tests.test_server_model import production_server


@pytest.fixture(scope="module")
def server(database_url, fake_model, tmp_path_factory):
    """`gunicorn --config gunicorn.conf.py 'backend:create_app()'`, as production runs it, with 2 workers."""
    with production_server(database_url, fake_model, tmp_path_factory.mktemp("gunicorn"), WEB_CONCURRENCY=2,
                           RUN_LEASE_SECONDS=3, RUN_RENEW_SECONDS=0.1, MAINTENANCE_INTERVAL_SECONDS=0) as (port, _, _):
        yield port


def _request(port, method, path, user, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {user.token}", "Content-Type": "application/json"}
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    return conn.getresponse()


def test_stream_in_server_busy_and_force_delete_from_another_process(server, chat_app, fake, alice, pool):
    local = client_for(chat_app, alice)
    sid = unique_session_id()
    local.post("/api/llm/sessions", json={"session_id": sid, "session_name": "cross-process"})
    with fake.hold_streams() as gate:
        stream = _request(server, "POST", "/api/llm/query/stream", alice, {"session_id": sid, "query": "hello there"})
        assert stream.status == 200
        assert gate.wait_for_held(1)

        refused = local.delete(f"/api/llm/sessions/{sid}")
        assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "session_busy"
        again = send(local, sid, "me too")
        assert again.status_code == 409 and again.get_json()["error"]["code"] == "session_busy"

        forced = local.delete(f"/api/llm/sessions/{sid}?force=true")
        assert forced.status_code == 200
        events, _ = parse_sse(stream.read().decode())
    assert events[-1].event == "error" and events[-1].data["code"] in ("cancelled", "session_deleted")
    assert thread_row_counts(pool, alice.thread_id(sid)) == NO_ROWS
    with pool.connection() as conn:
        assert conn.execute("select count(*) as n from chat_session_runs where session_id = %s", (sid,)).fetchone()["n"] == 0


def test_stream_here_busy_and_force_delete_through_the_server(server, chat_app, fake, alice, pool):
    local = client_for(chat_app, alice)
    sid = unique_session_id()
    local.post("/api/llm/sessions", json={"session_id": sid, "session_name": "cross-process"})
    with fake.hold_streams() as gate:
        streaming = send(local, sid, "hello here", buffered=False)
        assert gate.wait_for_held(1)

        refused = _request(server, "DELETE", f"/api/llm/sessions/{sid}", alice)
        assert refused.status == 409 and json.loads(refused.read())["error"]["code"] == "session_busy"
        forced = _request(server, "DELETE", f"/api/llm/sessions/{sid}?force=true", alice)
        assert forced.status == 200
        assert json.loads(forced.read())["deleted"]["chat_sessions"] == 1
        events, _ = parse_sse(streaming.get_data(as_text=True))
    assert events[-1].event == "error"
    assert thread_row_counts(pool, alice.thread_id(sid)) == NO_ROWS


def test_turns_through_both_workers_keep_one_memory(server, chat_app, fake, alice):
    sid = unique_session_id()
    for i in range(4):  # requests spread over the server's workers
        r = _request(server, "POST", "/api/llm/query/stream", alice, {"session_id": sid, "query": f"turn {i}"})
        events, _ = parse_sse(r.read().decode())
        assert events[-1].event == "done" and events[-1].data["message_count"] == 2 * (i + 1)
    history = client_for(chat_app, alice).get(f"/api/llm/sessions/{sid}?include_messages=true").get_json()
    assert [m["content"] for m in history["messages"] if m["role"] == "user"] == [f"turn {i}" for i in range(4)]

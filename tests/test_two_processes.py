"""Busy and forced deletes across processes: a gunicorn server (2 workers) and this test process share one database."""

from __future__ import annotations

import http.client
import json
import os
import signal

import pytest

from backend.services import services_of
from tests.chat_support import SseEvent, parse_sse, reply_text, send, wait_until
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


# --- runs: joined, resumed and stopped from another process; the owner killed ---------------------

def _next_event(response) -> SseEvent:
    """The next event of a streamed response, read as it arrives (heartbeats skipped)."""
    while True:
        block = ""
        while not block.endswith("\n\n"):
            line = response.readline().decode()
            assert line, "the stream ended"
            block += line
        events, _ = parse_sse(block)
        if events:
            return events[0]


def _saved_messages(chat_app, user, sid):
    return client_for(chat_app, user).get(f"/api/llm/sessions/{sid}?include_messages=true").get_json()["messages"]


@pytest.mark.parametrize("with_cursor", [False, True])
def test_a_reply_written_by_the_server_is_joined_here_whole(server, chat_app, fake, alice, with_cursor):
    sid = unique_session_id()
    fake.reply = lambda body: "A reply written by one process and read by another. ✓"
    with fake.hold_streams() as gate:
        stream = _request(server, "POST", "/api/llm/query/stream", alice, {"session_id": sid, "query": "hi"})
        run_id = _next_event(stream).data["run_id"]
        assert gate.wait_for_held(1)
        first = _next_event(stream)
        stream.close()  # the client went away: the reply goes on
        headers = {"Last-Event-ID": first.id} if with_cursor else {}
        joined = client_for(chat_app, alice).get(f"/api/llm/sessions/{sid}/runs/{run_id}/stream",
                                                 headers=headers, buffered=False)
        gate.release()
        events, _ = parse_sse(joined.get_data(as_text=True))
    saved = _saved_messages(chat_app, alice, sid)[1]["content"]
    assert saved == "A reply written by one process and read by another. ✓"
    assert (first.data["content"] if with_cursor else "") + reply_text(events) == saved
    assert events[-1].event == "done" and events[-1].data["run_id"] == run_id


def test_a_reply_here_is_stopped_through_the_server(server, chat_app, fake, alice):
    local = client_for(chat_app, alice)
    sid = unique_session_id()
    with fake.hold_streams() as gate:
        streaming = send(local, sid, "hello here", buffered=False)
        chunks = iter(streaming.response)
        received = ""
        while "event: token" not in received:
            received += next(chunks).decode()
        run_id = parse_sse(received)[0][0].data["run_id"]
        stopped = _request(server, "POST", f"/api/llm/sessions/{sid}/runs/{run_id}/cancel", alice)
        assert stopped.status == 200 and json.loads(stopped.read())["data"]["status"] == "cancelled"
        received += b"".join(chunks).decode()
    events, _ = parse_sse(received)
    assert events[-1].event == "error" and events[-1].data["code"] == "cancelled"
    assert [(m["role"], m.get("status")) for m in _saved_messages(chat_app, alice, sid)] == [
        ("user", None), ("assistant", "stopped")]
    again = _request(server, "POST", f"/api/llm/sessions/{sid}/runs/{run_id}/cancel", alice)
    assert again.status == 409 and json.loads(again.read())["error"]["code"] == "run_finished"


def test_the_process_writing_a_reply_killed_readers_get_interrupted_and_the_text_is_kept(
        server, chat_app, fake, alice, pool):
    sid = unique_session_id()
    with fake.hold_streams() as gate:
        stream = _request(server, "POST", "/api/llm/query/stream", alice, {"session_id": sid, "query": "doomed"})
        run_id = _next_event(stream).data["run_id"]
        assert gate.wait_for_held(1)
        seen = _next_event(stream).data["content"]
        reader = client_for(chat_app, alice).get(f"/api/llm/sessions/{sid}/runs/{run_id}/stream", buffered=False)
        chunks = iter(reader.response)
        received = ""
        while "event: token" not in received:  # the text its process has written to the run's row
            received += next(chunks).decode()
        # A message queued behind it, here: it must start somewhere once the owner is gone.
        queued = client_for(chat_app, alice).post(
            "/api/llm/query/stream", json={"session_id": sid, "query": "after", "multitask_strategy": "enqueue"},
            buffered=False)
        queued_chunks = iter(queued.response)
        with pool.connection() as conn:
            owner = conn.execute("select owner from chat_session_runs where run_id = %s", (run_id,)).fetchone()["owner"]
        os.kill(int(owner.rpartition(":")[2]), signal.SIGKILL)
        received += b"".join(chunks).decode()  # ends once the lease (3 s here) runs out
        gate.release()
        events, _ = parse_sse(received)
        assert events[-1].event == "error" and events[-1].data["code"] == "interrupted"
        assert reply_text(events) == seen
        upkeep = services_of(chat_app).maintenance
        assert wait_until(lambda: upkeep.reconcile_runs() > 0 or run_ended(pool, run_id))
        assert upkeep.start_stalled_queues() == 1  # the queued message starts here
        after, _ = parse_sse(b"".join(queued_chunks).decode())
    assert after[0].data["status"] == "queued" and after[-1].event == "done"
    assert reply_text(after) == "Echo: after"
    assert [(m["role"], m["content"], m.get("status")) for m in _saved_messages(chat_app, alice, sid)] == [
        ("user", "doomed", None), ("assistant", seen, "interrupted"), ("user", "after", None),
        ("assistant", "Echo: after", None)]
    listed = client_for(chat_app, alice).get(f"/api/llm/sessions/{sid}/runs").get_json()["data"]
    assert [r["status"] for r in listed] == ["interrupted", "done"]


def run_ended(pool, run_id) -> bool:
    with pool.connection() as conn:
        return conn.execute("select 1 from chat_runs where run_id = %s", (run_id,)).fetchone() is not None

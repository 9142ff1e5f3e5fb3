"""Chat turns: streaming, memory, the offline model, errors before and during the stream, counts."""

from __future__ import annotations

import threading

import pytest
from langgraph.checkpoint.postgres import PostgresSaver

from backend.chat.checkpointer import SessionCheckpointSaver, WrittenCheckpoint
from backend.chat.counts import MessageCounts
from backend.chat.run_store import RunStore
from backend.services import services_of
from backend.sessions.store import SessionStore
from backend.sessions.thread_store import ThreadStore
from tests.chat_support import named_session, parse_sse, reply_text, send, turn, wait_until
from tests.helpers import client_for, unique_session_id


def session_of(client, sid):
    return client.get(f"/api/llm/sessions/{sid}?include_messages=true").get_json()


def test_turn_streams_tokens_then_done(chat, fake, alice):
    sid = unique_session_id()
    # Tokens that arrive apart go out apart (queued ones may share an event).
    fake.token_delay = 0.02
    events = turn(chat, sid, "What is the capital of France?")
    tokens = [e for e in events if e.event == "token"]
    assert len(tokens) > 1  # streamed in pieces, not one blob
    assert reply_text(events) == "Echo: What is the capital of France?"
    assert events[-1].event == "done"
    assert events[-1].data["session_id"] == sid and events[-1].data["message_count"] == 2
    assert set(events[-1].data) == {"session_id", "message_count", "session_name", "run_id", "user_message_id",
                                    "assistant_message_id"}
    # A run: its id first, then every event with an increasing cursor.
    assert events[0].event == "run" and events[0].data == {
        "run_id": events[-1].data["run_id"], "session_id": sid, "status": "running"}
    ids = [int(e.id) for e in events]
    assert ids == sorted(set(ids)) and ids[0] == 0
    [chat_request] = [r for r in fake.chat_requests if r.json.get("stream") and r.json["messages"][-1]["content"] == "What is the capital of France?"]
    assert chat_request.json["model"] == "fake-chat"
    assert chat_request.headers["authorization"] == "Bearer test-key"


def test_turns_keep_the_model_servers_connection(chat, fake):
    # The SDK stops reading at [DONE]; unless the body's end is read too, the
    # connection is dropped and every turn pays a new handshake (llm/transport.py).
    sid = named_session(chat)
    words = [f"kept connection {i}" for i in range(3)]
    for text in words:
        turn(chat, sid, text)
    streamed = [r for r in fake.chat_requests if r.json.get("stream") and r.json["messages"][-1]["content"] in words]
    assert len(streamed) == 3
    assert len({r.client_port for r in streamed}) == 1


def test_a_turn_logs_one_line_not_one_per_http_request(chat, chat_app, fake, caplog):
    sid = named_session(chat)
    with caplog.at_level("INFO"):
        turn(chat, sid, "how many lines?")
        assert wait_until(lambda: any(r.getMessage() == "turn finished" for r in caplog.records))
    assert not [r for r in caplog.records if r.name.startswith("httpx") and r.levelno < 30]


def test_a_turn_reads_its_checkpoint_with_its_lease_not_again(chat, fake, monkeypatch):
    # The lease's pooled connection also brings the thread's latest checkpoint
    # (SessionCheckpointSaver.for_run): the graph's own load is served from it.
    sid = named_session(chat)
    turn(chat, sid, "first message")
    loads = []  # the graph's loads from the table (the end-of-turn count reads with a saver of its own)
    library_load = PostgresSaver.get_tuple
    monkeypatch.setattr(PostgresSaver, "get_tuple", lambda self, config: (
        isinstance(self, SessionCheckpointSaver) and loads.append(config)) or library_load(self, config))
    turn(chat, sid, "second message")
    assert loads == []
    last = [r for r in fake.chat_requests if r.json["messages"][-1]["content"] == "second message"][-1]
    assert [(m["role"], m["content"]) for m in last.json["messages"]] == [
        ("user", "first message"), ("assistant", "Echo: first message"), ("user", "second message"),
    ]


def test_session_is_created_on_first_use(chat, fake, alice):
    sid = unique_session_id()
    assert chat.get(f"/api/llm/sessions/{sid}").status_code == 404
    turn(chat, sid, "hello")
    body = session_of(chat, sid)
    assert body["data"]["thread_id"] == alice.thread_id(sid)
    assert sid in [s["session_id"] for s in chat.get("/api/llm/sessions").get_json()["data"]]


def test_memory_over_several_turns(chat, fake):
    sid = named_session(chat)
    for i in range(3):
        turn(chat, sid, f"message number {i}")
    last = [r for r in fake.chat_requests if r.json["messages"][-1]["content"] == "message number 2"][-1]
    assert [(m["role"], m["content"]) for m in last.json["messages"]] == [
        ("user", "message number 0"), ("assistant", "Echo: message number 0"),
        ("user", "message number 1"), ("assistant", "Echo: message number 1"),
        ("user", "message number 2"),
    ]
    body = session_of(chat, sid)
    assert [(m["role"], m["content"]) for m in body["messages"]] == [
        ("user", "message number 0"), ("assistant", "Echo: message number 0"),
        ("user", "message number 1"), ("assistant", "Echo: message number 1"),
        ("user", "message number 2"), ("assistant", "Echo: message number 2"),
    ]
    assert all(m["created_at"].endswith("Z") for m in body["messages"])
    assert body["data"]["message_count"] == 6 == len(body["messages"])
    assert body["data"]["last_message_at"] is not None


def test_two_users_same_session_id_have_separate_memories(chat_app, fake, alice, bob):
    sid = unique_session_id()
    a, b = client_for(chat_app, alice), client_for(chat_app, bob)
    turn(a, sid, "alice's secret")
    turn(b, sid, "bob's question")
    assert [m["content"] for m in session_of(b, sid)["messages"]] == ["bob's question", "Echo: bob's question"]
    assert session_of(a, sid)["data"]["message_count"] == 2


# --- refused before streaming: ordinary JSON errors, never a 200 stream ------------

@pytest.mark.parametrize(
    "body, field",
    [
        ({"session_id": "s1"}, "query"),
        ({"query": "hi"}, "session_id"),
        ({"session_id": "s1", "query": ""}, "query"),
        ({"session_id": "s1", "query": "   \n "}, "query"),
        ({"session_id": "s1", "query": "x" * 32_001}, "query"),
        ({"session_id": "s1", "query": "nul\x00byte"}, "query"),
        ({"session_id": "bad id", "query": "hi"}, "session_id"),
        ({"session_id": "s1", "query": ["hi"]}, "query"),
        ({"session_id": "s1", "query": "hi", "stream": True}, "stream"),
    ],
)
def test_bad_requests_are_400_json(chat, fake, body, field):
    before = len(fake.requests)
    r = chat.post("/api/llm/query/stream", json=body)
    assert r.status_code == 400 and r.mimetype == "application/json"
    assert field in r.get_json()["error"]["fields"]
    assert len(fake.requests) == before


def test_longest_query_is_accepted(chat, fake):
    sid = named_session(chat)
    assert send(chat, sid, "y" * 32_000).status_code == 200


def test_unauthenticated_is_401(chat_app, fake):
    r = chat_app.test_client().post("/api/llm/query/stream", json={"session_id": "s", "query": "hi"})
    assert r.status_code == 401 and r.mimetype == "application/json"


def test_archived_session_refuses_messages(chat, fake):
    sid = named_session(chat)
    chat.put(f"/api/llm/sessions/{sid}", json={"is_archived": True})
    r = send(chat, sid, "hello?")
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "session_archived"
    assert session_of(chat, sid)["messages"] == []


def test_second_message_while_busy_is_409(chat, chat_app, fake, alice):
    sid = named_session(chat)
    with fake.hold_streams() as gate:
        first = send(chat, sid, "first", buffered=False)
        assert gate.wait_for_held(1)
        second = send(client_for(chat_app, alice), sid, "second")
        assert second.status_code == 409
        assert second.get_json()["error"]["code"] == "session_busy"
        gate.release()
        events, _ = parse_sse(first.get_data(as_text=True))
    assert events[-1].event == "done" and events[-1].data["message_count"] == 2
    assert turn(chat, sid, "third")[-1].event == "done"  # free again


# --- the offline model -------------------------------------------------------------

def test_offline_model_answers_deterministically(make_app, alice, caplog):
    with caplog.at_level("WARNING"):
        app = make_app()  # no key, no base URL
    assert any("offline model" in r.getMessage() for r in caplog.records)
    client = client_for(app, alice)
    sid = unique_session_id()
    first = reply_text(turn(client, sid, "Tell me about Highland"))
    assert first.startswith("[offline model]") and "Tell me about Highland" in first
    again = unique_session_id()
    assert reply_text(turn(client, again, "Tell me about Highland")) == first
    assert session_of(client, sid)["data"]["message_count"] == 2


def test_require_model_refuses_to_start_offline(make_settings):
    with pytest.raises(ValueError, match="REQUIRE_MODEL"):
        make_settings(require_model=True)


# --- failures after streaming began: an error event, and a consistent session ------------

@pytest.mark.parametrize(
    "script, code",
    [
        (lambda fake: [fake.fail_next(500), fake.fail_next(500)], "upstream_error"),
        (lambda fake: [fake.fail_next(429, retry_after=0.01), fake.fail_next(429, retry_after=0.01)], "upstream_rate_limited"),
        (lambda fake: [fake.hang_next(3), fake.hang_next(3)], "upstream_timeout"),
        (lambda fake: [fake.cut_stream_next(after_tokens=2)], "upstream_error"),
    ],
)
def test_upstream_failure_gives_error_event_and_consistent_session(chat, fake, script, code):
    sid = named_session(chat)
    turn(chat, sid, "a good first turn")
    script(fake)
    events = turn(chat, sid, "this one fails")
    assert events[-1].event == "error"
    assert events[-1].data["code"] == code and events[-1].data["message"]
    assert not [e for e in events if e.event == "done"]
    body = session_of(chat, sid)
    # the question stays in history without an answer; the count agrees with history
    assert [m["content"] for m in body["messages"]] == ["a good first turn", "Echo: a good first turn", "this one fails"]
    assert body["data"]["message_count"] == 3
    assert turn(chat, sid, "and again")[-1].event == "done"
    assert session_of(chat, sid)["data"]["message_count"] == 5


def test_sdk_retry_recovers_within_the_turn(chat, fake):
    sid = named_session(chat)
    fake.fail_next(500)
    events = turn(chat, sid, "retried")
    assert events[-1].event == "done" and reply_text(events) == "Echo: retried"


def test_heartbeats_while_the_model_is_quiet(make_app, fake, alice):
    app = make_app(openai_base_url=fake.base_url, openai_api_key="k", sse_heartbeat_seconds=0.02)
    client = client_for(app, alice)
    sid = named_session(client)
    with fake.hold_streams() as gate:
        response = send(client, sid, "slow", buffered=False)
        chunks = iter(response.response)
        seen = ""
        while seen.count(": keep-alive") < 2:
            seen += next(chunks).decode()
        gate.release()
        seen += "".join(c.decode() for c in chunks)
    events, comments = parse_sse(seen)
    assert comments.count("keep-alive") >= 2
    assert events[-1].event == "done"


# --- exact counts -----------------------------------------------------------------

def test_counts_exact_with_many_sessions_in_parallel(chat_app, fake, alice):
    fake.token_delay = 0.001
    client = client_for(chat_app, alice)
    sids = [named_session(client) for _ in range(5)]  # CHAT_MAX_CONCURRENT_PER_USER: 5 at once
    errors: list[str] = []

    def talk(sid):
        c = client_for(chat_app, alice)
        for i in range(3):
            events = turn(c, sid, f"turn {i}")
            if events[-1].event != "done":
                errors.append(str(events[-1]))

    threads = [threading.Thread(target=talk, args=(s,)) for s in sids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for sid in sids:
        body = session_of(client, sid)
        assert body["data"]["message_count"] == 6 == len(body["messages"])


def test_a_turn_ends_with_the_counts_its_saver_measured(chat, fake, alice, pool, monkeypatch):
    # The saver measures the checkpoint the turn writes; the end (sql/018) uses that: no read-back.
    sid = named_session(chat)
    turn(chat, sid, "first")
    read_back = []
    monkeypatch.setattr(ThreadStore, "visible_history",
                        staticmethod(lambda conn, thread_id: read_back.append(thread_id) or []))
    events = turn(chat, sid, "héllo")
    assert events[-1].event == "done" and events[-1].data["message_count"] == 4
    assert read_back == []
    with pool.connection() as conn:
        row = conn.execute("select message_count, history_bytes, has_unread from chat_sessions "
                           "where user_id = %s and session_id = %s", (alice.id, sid)).fetchone()
    texts = ["first", "Echo: first", "héllo", "Echo: héllo"]
    assert row == {"message_count": 4, "history_bytes": sum(len(t.encode()) for t in texts), "has_unread": True}


def test_a_failed_turn_ends_the_same_way_without_marking_the_session_unread(chat, fake, alice, pool, monkeypatch):
    sid = named_session(chat)
    turn(chat, sid, "first")
    assert chat.post(f"/api/llm/sessions/{sid}/read").get_json()["data"]["has_unread"] is False
    read_back = []
    original = ThreadStore.visible_history
    monkeypatch.setattr(ThreadStore, "visible_history",
                        staticmethod(lambda conn, thread_id: read_back.append(thread_id) or original(conn, thread_id)))
    fake.cut_stream_next(after_tokens=2)
    assert turn(chat, sid, "this one breaks")[-1].data["code"] == "upstream_error"
    data = session_of(chat, sid)["data"]
    assert (data["message_count"], data["has_unread"]) == (3, False)
    assert read_back == [] and not RunStore(pool).run_is_live(alice.id, sid)


def test_a_run_whose_checkpoint_is_not_the_latest_is_counted_from_the_history(chat, fake, alice, pool):
    sid = named_session(chat)
    turn(chat, sid, "one")
    runs = RunStore(pool)
    _, run_id, _ = runs.start_run_in_session(alice.id, sid, "test", 60, max_messages=100, max_bytes=10**6,
                                             max_runs=5)
    # Not the latest checkpoint (another write landed after the run's): the statement changes nothing...
    row, counted, _ = runs.end_counted_run(alice.id, sid, run_id, "done", checkpoint_id="not-the-latest",
                                        message_count=99, history_bytes=12_345)
    assert counted is False and row["message_count"] == 2
    assert runs.run_is_live(alice.id, sid)
    # ...and the run's end reads the history back instead.
    counts = MessageCounts(pool, SessionStore(pool), runs, ThreadStore(pool))
    ended, queued = counts.end_run_and_count_messages(alice.id, sid, run_id, "done",
                                              written=WrittenCheckpoint("not-the-latest", 99, 12_345))
    assert (ended["message_count"], ended["history_bytes"]) == (2, len(b"one") + len(b"Echo: one"))
    assert queued is False
    assert not runs.run_is_live(alice.id, sid)
    assert runs.end_counted_run(alice.id, "no-such-session", run_id, "done", checkpoint_id="x", message_count=1,
                                history_bytes=1) == (None, False, False)


def test_concurrent_sends_to_one_session_one_wins_count_exact(chat_app, fake, alice):
    client = client_for(chat_app, alice)
    sid = named_session(client)
    statuses: list[int] = []
    start = threading.Barrier(6)
    with fake.hold_streams() as gate:
        def attempt():
            c = client_for(chat_app, alice)
            start.wait()
            r = send(c, sid, "race", buffered=False)
            statuses.append(r.status_code)
            if r.status_code == 200:
                gate.wait_for_held(1)
                gate.release()
                parse_sse(r.get_data(as_text=True))

        threads = [threading.Thread(target=attempt) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(statuses) == [200, 409, 409, 409, 409, 409]
    body = session_of(client, sid)
    assert body["data"]["message_count"] == 2 == len(body["messages"])

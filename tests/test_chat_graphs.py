"""The graph is pluggable: CHAT_GRAPH_FACTORY names a user's own agent; the periodic upkeep runs."""

from __future__ import annotations

import pytest

from backend.services import services_of
from tests import custom_graphs
from tests.chat_support import reply_text, turn, wait_until
from tests.checkpoints import NO_ROWS, seed_thread, thread_row_counts
from tests.helpers import client_for, unique_session_id


def test_custom_graph_with_extra_node(make_app, fake, alice):
    app = make_app(openai_base_url=fake.base_url, openai_api_key="k",
                   chat_graph_factory="tests.custom_graphs:with_retrieval")
    client = client_for(app, alice)
    sid = unique_session_id()
    events = turn(client, sid, "what do the documents say?")
    assert reply_text(events) == "[found 2 documents] Echo: what do the documents say?"
    body = client.get(f"/api/llm/sessions/{sid}?include_messages=true").get_json()
    # the note was streamed, not stored: history holds the question and the model's answer
    assert [m["content"] for m in body["messages"]] == ["what do the documents say?", "Echo: what do the documents say?"]
    assert body["data"]["message_count"] == 2


def test_a_graph_that_streams_only_through_emit_runs_in_the_turns_own_thread(make_app, fake, alice):
    # LangGraph's own streaming runs each node in a thread of a pool made for the run;
    # a graph that needs none of it (like the built-in one) is spared that cost.
    runs = {}
    for factory in ("with_retrieval", "emitting_only"):
        app = make_app(openai_base_url=fake.base_url, openai_api_key="k",
                       chat_graph_factory=f"tests.custom_graphs:{factory}")
        events = turn(client_for(app, alice), unique_session_id(), f"via {factory}")
        runs[factory] = (reply_text(events), custom_graphs.NODE_THREADS[-1])
    assert runs["emitting_only"] == ("emitted Echo: via emitting_only", "chat-turn")
    text, thread = runs["with_retrieval"]
    assert text == "[found 2 documents] Echo: via with_retrieval" and thread != "chat-turn"


def test_custom_graph_that_does_not_stream_still_answers(make_app, alice):
    app = make_app(chat_graph_factory="tests.custom_graphs:without_streaming")
    client = client_for(app, alice)
    sid = unique_session_id()
    assert reply_text(turn(client, sid, "one")) == "1 message(s) so far"
    events = turn(client, sid, "two")
    assert reply_text(events) == "3 message(s) so far"
    assert events[-1].data["message_count"] == 4


@pytest.mark.parametrize(
    "spec, message",
    [("no_colon", "must look like"), ("tests.custom_graphs:missing", "cannot be loaded"),
     ("no.such.module:factory", "cannot be loaded")],
)
def test_bad_graph_factory_stops_start_up_with_a_clear_error(make_app, spec, message):
    with pytest.raises(ValueError, match=message):
        make_app(chat_graph_factory=spec)


def test_server_sweeps_orphans_periodically(make_app, alice, pool):
    sid = unique_session_id()
    orphan = alice.thread_id(sid)
    with pool.connection() as conn:  # a session of ours, registered, then its row deleted by hand
        conn.execute("insert into chat_sessions (user_id, business_id, session_id, thread_id) values (%s, %s, %s, %s)",
                     (alice.id, alice.business_id, sid, orphan))
        conn.execute("delete from chat_sessions where thread_id = %s", (orphan,))
    seed_thread(pool, orphan, turns=1)
    app = make_app(maintenance_interval_seconds=0.05, orphan_sweep_interval_seconds=0.05, orphan_min_age_seconds=0)
    try:
        assert wait_until(lambda: thread_row_counts(pool, orphan) == NO_ROWS)
    finally:
        services_of(app).maintenance.stop()  # a sweeper must not outlive its test


def _checkpoints_of(pool, thread_id):
    with pool.connection() as conn:
        return conn.execute("select count(*) as n from checkpoints where thread_id = %s", (thread_id,)).fetchone()["n"]


def test_superseded_checkpoints_are_pruned_by_default(chat, fake, alice, pool):
    sid = unique_session_id()
    for i in range(3):
        turn(chat, sid, f"turn {i}")
    assert _checkpoints_of(pool, alice.thread_id(sid)) == 1  # only the latest
    body = chat.get(f"/api/llm/sessions/{sid}?include_messages=true").get_json()
    assert len(body["messages"]) == 6 == body["data"]["message_count"]
    # Memory intact (the last chat turn's request: the session's naming call may come after it).
    assert "turn 0" in [r for r in fake.chat_requests if r.json.get("stream")][-1].json["messages"][0]["content"]
    turn(chat, sid, "turn 3")
    assert _checkpoints_of(pool, alice.thread_id(sid)) == 1


def test_full_history_keeps_every_checkpoint(make_app, fake, alice, pool):
    app = make_app(openai_base_url=fake.base_url, openai_api_key="k", checkpoint_history="full")
    client = client_for(app, alice)
    sid = unique_session_id()
    for i in range(3):
        turn(client, sid, f"turn {i}")
    assert _checkpoints_of(pool, alice.thread_id(sid)) >= 9  # input, loop and end steps of each turn
    assert client.get(f"/api/llm/sessions/{sid}").get_json()["data"]["message_count"] == 6

"""Runs: a reply outlives its connection; any tab on any process joins it, resumes it from a cursor
without a character lost or doubled, and stops it. A second app on the same database plays another
server process (its own leases, its own memory)."""

from __future__ import annotations

import pytest

from backend.services import services_of
from tests.chat_support import SseEvent, named_session, parse_sse, reply_text, send, wait_until
from tests.helpers import User, client_for

LONG_REPLY = "Once upon a time, " + " ".join(f"word{i}" for i in range(40)) + " — the end. ✓"


def messages_of(client, sid: str) -> list[dict]:
    return client.get(f"/api/llm/sessions/{sid}?include_messages=true").get_json()["messages"]


def run_over(pool, sid: str) -> bool:
    with pool.connection() as conn:
        return conn.execute("select 1 from chat_session_runs where session_id = %s", (sid,)).fetchone() is None


class Stream:
    """An SSE response read event by event as it arrives (the werkzeug test client, unbuffered)."""

    def __init__(self, response) -> None:
        self.response = response
        self._chunks = iter(response.response)
        self._buffer = ""
        self.events: list[SseEvent] = []

    def next_event(self) -> SseEvent:
        while True:
            while "\n\n" not in self._buffer:
                self._buffer += next(self._chunks).decode()
            block, _, self._buffer = self._buffer.partition("\n\n")
            events, _ = parse_sse(block + "\n\n")
            if events:  # not a heartbeat
                self.events.append(events[0])
                return events[0]

    def until(self, event: str) -> list[SseEvent]:
        while not self.events or self.events[-1].event != event:
            self.next_event()
        return self.events

    def rest(self) -> list[SseEvent]:
        self._buffer += b"".join(self._chunks).decode()
        events, _ = parse_sse(self._buffer)
        self._buffer = ""
        self.events.extend(events)
        return self.events

    def close(self) -> None:
        self.response.close()


def start_held(client, sid: str, gate, query: str = "first") -> tuple[Stream, str]:
    """A turn whose model is held after its first token (fake.hold_streams): its stream, past the
    `run` event, and its run id."""
    stream = Stream(send(client, sid, query, buffered=False))
    run_id = stream.next_event().data["run_id"]
    assert gate.wait_for_held(1)
    return stream, run_id


def join(client, sid: str, run_id: str, cursor: str | None = None, **kwargs):
    headers = {} if cursor is None else {"Last-Event-ID": cursor}
    return client.get(f"/api/llm/sessions/{sid}/runs/{run_id}/stream", headers=headers, **kwargs)


@pytest.fixture
def other_process(make_app, fake):
    """A second server process on the same database: its own leases and memory."""
    return make_app(openai_base_url=fake.base_url, openai_api_key="k", openai_model="fake-chat",
                    naming_model="fake-naming")


def test_a_reply_goes_on_after_its_client_goes_away_and_is_replayed_whole(chat, fake, pool):
    sid = named_session(chat)
    fake.reply = lambda body: LONG_REPLY
    fake.token_delay = 0.005
    stream = Stream(send(chat, sid, "tell me a story", buffered=False))
    run_id = stream.next_event().data["run_id"]
    assert stream.next_event().event == "token"
    stream.close()  # the tab is gone; the reply is not
    assert wait_until(lambda: run_over(pool, sid))
    saved = messages_of(chat, sid)
    assert [m["role"] for m in saved] == ["user", "assistant"] and saved[1]["content"] == LONG_REPLY
    assert "status" not in saved[1] or saved[1]["status"] is None

    events, _ = parse_sse(join(chat, sid, run_id).get_data(as_text=True))
    assert events[0].event == "run" and events[0].data["status"] == "done"
    assert reply_text(events) == LONG_REPLY
    assert events[-1].event == "done" and events[-1].data["run_id"] == run_id
    assert events[-1].data["message_count"] == 2
    [listed] = chat.get(f"/api/llm/sessions/{sid}/runs").get_json()["data"]
    assert listed["run_id"] == run_id and listed["status"] == "done" and listed["ended_at"]


@pytest.mark.parametrize("where", ["same process", "other process"])
def test_a_join_mid_reply_gets_the_reply_so_far_then_live_text_equal_to_the_saved_reply(
        chat, fake, pool, alice, other_process, where):
    reader = chat if where == "same process" else client_for(other_process, alice)
    sid = named_session(chat)
    fake.reply = lambda body: LONG_REPLY
    with fake.hold_streams() as gate:
        original, run_id = start_held(chat, sid, gate, "go")
        first = original.next_event()  # the first token, then the model is held
        joined = Stream(join(reader, sid, run_id, buffered=False))
        assert joined.next_event().event == "run"
        assert joined.next_event().data["content"] == first.data["content"]  # the reply so far
        gate.release()
        joined_events = joined.rest()
        original_events = original.rest()
    saved = messages_of(chat, sid)[1]["content"]
    assert saved == LONG_REPLY
    assert reply_text(joined_events) == saved and reply_text(original_events) == saved
    assert joined_events[-1].event == "done" and joined_events[-1].data == original_events[-1].data


def _resumes(client, sid, run_id, events: list[SseEvent]) -> None:
    """From every event id of a stream, a join gives exactly what came after it."""
    whole = reply_text(events)
    for i, event in enumerate(events):
        seen = reply_text(events[: i + 1])
        rest, _ = parse_sse(join(client, sid, run_id, event.id).get_data(as_text=True))
        assert seen + reply_text(rest) == whole, f"after id {event.id}"
        terminals = [e for e in rest if e.event in ("done", "error")]
        if event.event in ("done", "error"):
            assert terminals == []  # the end was seen: nothing more
        else:
            assert [e.event for e in terminals] == [events[-1].event]


@pytest.mark.parametrize("where", ["same process", "other process"])
def test_resuming_after_any_event_id_loses_and_repeats_nothing(chat, fake, alice, other_process, where):
    reader = chat if where == "same process" else client_for(other_process, alice)
    sid = named_session(chat)
    fake.reply = lambda body: "alpha beta gamma δέλτα epsilon 🚀 zeta"
    fake.token_delay = 0.01  # tokens apart, so the stream has many ids
    events, _ = parse_sse(send(chat, sid, "go").get_data(as_text=True))
    assert len([e for e in events if e.event == "token"]) > 3
    _resumes(reader, sid, events[0].data["run_id"], events)


def test_resuming_mid_reply_on_the_other_process_from_the_last_id_seen(chat, fake, alice, other_process):
    sid = named_session(chat)
    fake.reply = lambda body: LONG_REPLY
    with fake.hold_streams() as gate:
        original, run_id = start_held(chat, sid, gate, "go")
        seen = original.next_event()
        original.close()  # the phone went to the background
        resumed = Stream(join(client_for(other_process, alice), sid, run_id, seen.id, buffered=False))
        gate.release()
        rest = resumed.rest()
    assert all(e.event != "run" for e in rest)  # the cursor was past it
    assert seen.data["content"] + reply_text(rest) == LONG_REPLY == messages_of(chat, sid)[1]["content"]
    assert rest[-1].event == "done"


def test_many_readers_each_get_the_whole_reply(chat, fake, alice, other_process):
    sid = named_session(chat)
    fake.reply = lambda body: LONG_REPLY
    with fake.hold_streams() as gate:
        original, run_id = start_held(chat, sid, gate, "go")
        readers = [Stream(join(client, sid, run_id, buffered=False))
                   for client in [chat, client_for(other_process, alice)] * 5]
        gate.release()
        results = [reply_text(r.rest()) for r in readers]
        original.rest()
    assert results == [LONG_REPLY] * len(readers)


@pytest.mark.parametrize("where", ["same process", "other process"])
def test_stop_from_any_process_keeps_the_text_so_far_marked_stopped(chat, fake, alice, pool, other_process, where):
    stopper = chat if where == "same process" else client_for(other_process, alice)
    sid = named_session(chat)
    fake.reply = lambda body: LONG_REPLY
    with fake.hold_streams() as gate:
        original, run_id = start_held(chat, sid, gate, "go")
        first = original.next_event().data["content"]
        joined = Stream(join(client_for(other_process, alice), sid, run_id, buffered=False))
        stopped = stopper.post(f"/api/llm/sessions/{sid}/runs/{run_id}/cancel")
        assert stopped.status_code == 200, stopped.get_json()
        assert stopped.get_json()["data"]["status"] == "cancelled"
        for reader in (original, joined):
            events = reader.rest()
            assert events[-1].event == "error" and events[-1].data["code"] == "cancelled"
            assert reply_text(events) == first
    saved = messages_of(chat, sid)
    assert [(m["role"], m["content"], m.get("status")) for m in saved] == [
        ("user", "go", None), ("assistant", first, "stopped")]
    assert chat.get(f"/api/llm/sessions/{sid}").get_json()["data"]["message_count"] == 2
    # The model is told on the next turn that the reply was cut short.
    fake.reply = lambda body: "ok"
    assert parse_sse(send(chat, sid, "and then?").get_data(as_text=True))[0][-1].event == "done"
    upstream = fake.chat_requests[-1].json["messages"]
    assert upstream[-2]["role"] == "assistant" and upstream[-2]["content"].startswith(first)
    assert "stopped" in upstream[-2]["content"]


def test_a_stale_cancel_is_409_and_never_touches_the_newer_run(chat, fake, pool):
    sid = named_session(chat)
    fake.reply = lambda body: "short"
    old_run = parse_sse(send(chat, sid, "one").get_data(as_text=True))[0][0].data["run_id"]
    with fake.hold_streams() as gate:
        newer = Stream(send(chat, sid, "two", buffered=False))
        assert gate.wait_for_held(1)
        stale = chat.post(f"/api/llm/sessions/{sid}/runs/{old_run}/cancel")
        assert stale.status_code == 409 and stale.get_json()["error"]["code"] == "run_finished"
        gate.release()
        assert newer.rest()[-1].event == "done"


def test_runs_of_another_user_are_not_found_under_any_id(chat, chat_app, fake, alice):
    sid = named_session(chat)
    fake.reply = lambda body: "mine"
    run_id = parse_sse(send(chat, sid, "hello").get_data(as_text=True))[0][0].data["run_id"]
    bob = client_for(chat_app, User())
    assert bob.get(f"/api/llm/sessions/{sid}/runs").status_code == 404
    for response in (join(bob, sid, run_id), bob.post(f"/api/llm/sessions/{sid}/runs/{run_id}/cancel")):
        assert response.status_code == 404 and response.get_json()["error"]["code"] == "run_not_found"
    # Bob with a session of the same id still cannot reach Alice's run.
    named_session_id = bob.post("/api/llm/sessions", json={"session_id": sid}).get_json()["session_id"]
    assert named_session_id == sid
    assert join(bob, sid, run_id).status_code == 404
    assert bob.get(f"/api/llm/sessions/{sid}/runs").get_json()["data"] == []


def test_bad_cursors_and_unknown_runs_are_clean_4xx(chat, fake):
    sid = named_session(chat)
    run_id = parse_sse(send(chat, sid, "hello").get_data(as_text=True))[0][0].data["run_id"]
    for cursor in ("abc", "-1", "1.5", "9" * 30):
        r = join(chat, sid, run_id, cursor)
        assert r.status_code == 400 and r.get_json()["success"] is False, cursor
    r = chat.get(f"/api/llm/sessions/{sid}/runs/{run_id}/stream?last_event_id=x")
    assert r.status_code == 400
    missing = "00000000-0000-4000-8000-000000000000"
    assert join(chat, sid, missing).get_json()["error"]["code"] == "run_not_found"
    assert join(chat, sid, "not-a-uuid").status_code == 400


def test_runs_past_the_replay_window_are_gone(chat, chat_app, fake, pool, alice):
    sid = named_session(chat)
    run_id = parse_sse(send(chat, sid, "hello").get_data(as_text=True))[0][0].data["run_id"]
    with pool.connection() as conn:
        conn.execute("update chat_runs set ended_at = now() - interval '1 hour' where run_id = %s", (run_id,))
    assert join(chat, sid, run_id).status_code == 404
    assert chat.get(f"/api/llm/sessions/{sid}/runs").get_json()["data"] == []
    services_of(chat_app).maintenance.purge_ended_runs()
    with pool.connection() as conn:
        assert conn.execute("select 1 from chat_runs where run_id = %s", (run_id,)).fetchone() is None


def test_events_name_the_run(chat, fake, pool, alice):
    sid = named_session(chat)
    run_id = parse_sse(send(chat, sid, "hello").get_data(as_text=True))[0][0].data["run_id"]
    with pool.connection() as conn:
        rows = conn.execute("select type, payload->>'run_id' as run_id from session_events"
                            " where user_id = %s and session_id = %s and type like 'run.%%' order by id",
                            (alice.id, sid)).fetchall()
    assert [(r["type"], r["run_id"]) for r in rows] == [("run.started", run_id), ("run.finished", run_id)]


def test_a_queued_message_is_an_event_naming_its_run(chat, fake, pool, alice):
    sid = named_session(chat)
    with fake.hold_streams() as gate:
        first, first_run = start_held(chat, sid, gate)
        queued = Stream(send_with(chat, sid, "second", "enqueue", buffered=False))
        queued_run = queued.next_event().data["run_id"]
        gate.release()
        first.rest()
        queued.rest()
    with pool.connection() as conn:
        rows = conn.execute("select type, payload->>'run_id' as run_id from session_events"
                            " where user_id = %s and session_id = %s and type like 'run.%%' order by id",
                            (alice.id, sid)).fetchall()
    assert [(r["type"], r["run_id"]) for r in rows] == [
        ("run.started", first_run), ("run.queued", queued_run), ("run.finished", first_run),
        ("run.started", queued_run), ("run.finished", queued_run)]


def test_a_forced_delete_leaves_no_run_rows(chat, fake, pool, alice):
    sid = named_session(chat)
    parse_sse(send(chat, sid, "hello").get_data(as_text=True))
    with fake.hold_streams() as gate:
        running = Stream(send(chat, sid, "again", buffered=False))
        assert gate.wait_for_held(1)
        assert chat.delete(f"/api/llm/sessions/{sid}?force=true").status_code == 200
        gate.release()
        running.rest()
    with pool.connection() as conn:
        for table in ("chat_runs", "chat_session_runs"):
            n = conn.execute(f"select count(*) as n from {table} where user_id = %s and session_id = %s",
                             (alice.id, sid)).fetchone()["n"]
            assert n == 0, table


def test_with_run_on_disconnect_cancel_a_client_going_away_stops_the_reply(make_app, fake, alice, pool):
    app = make_app(openai_base_url=fake.base_url, openai_api_key="k", run_on_disconnect="cancel")
    client = client_for(app, alice)
    sid = named_session(client)
    fake.token_delay = 0.05
    fake.client_disconnected.clear()
    stream = Stream(send(client, sid, "a long answer please " * 20, buffered=False))
    stream.until("token")
    stream.close()
    assert fake.client_disconnected.wait(5), "upstream stream was not closed"
    assert wait_until(lambda: run_over(pool, sid))
    assert [m["role"] for m in messages_of(client, sid)] == ["user"]


# --- a second message while a reply runs: multitask_strategy ---------------------------------------

def send_with(client, sid: str, query: str, strategy: str, **kwargs):
    return client.post("/api/llm/query/stream", json={"session_id": sid, "query": query, "multitask_strategy": strategy},
                       **kwargs)


def transcript(client, sid: str) -> list[tuple]:
    return [(m["role"], m["content"], m.get("status")) for m in messages_of(client, sid)]


def test_enqueue_waits_its_turn_and_then_streams_its_own_reply(chat, fake, pool):
    sid = named_session(chat)
    with fake.hold_streams() as gate:
        first, first_run = start_held(chat, sid, gate, "first")
        queued = Stream(send_with(chat, sid, "second", "enqueue", buffered=False))
        head = queued.next_event()
        assert head.event == "run" and head.data["status"] == "queued" and head.data["run_id"] != first_run
        listed = chat.get(f"/api/llm/sessions/{sid}/runs").get_json()["data"]
        assert [(r["run_id"], r["status"]) for r in listed] == [(first_run, "running"), (head.data["run_id"], "queued")]
        gate.release()
        assert first.rest()[-1].event == "done"
        second = queued.rest()
    assert second[-1].event == "done" and second[-1].data["run_id"] == head.data["run_id"]
    assert reply_text(second) == "Echo: second"
    assert transcript(chat, sid) == [("user", "first", None), ("assistant", "Echo: first", None),
                                     ("user", "second", None), ("assistant", "Echo: second", None)]


def test_a_queued_message_whose_client_went_away_still_runs(chat, fake, pool):
    sid = named_session(chat)
    with fake.hold_streams() as gate:
        first, _ = start_held(chat, sid, gate, "first")
        queued = Stream(send_with(chat, sid, "second", "enqueue", buffered=False))
        queued_run = queued.next_event().data["run_id"]
        queued.close()  # the phone went to sleep with its message queued
        gate.release()
        first.rest()
    assert wait_until(lambda: len(messages_of(chat, sid)) == 4)
    assert transcript(chat, sid)[2:] == [("user", "second", None), ("assistant", "Echo: second", None)]
    events, _ = parse_sse(join(chat, sid, queued_run).get_data(as_text=True))
    assert reply_text(events) == "Echo: second" and events[-1].event == "done"


def test_a_queued_message_can_be_cancelled_and_never_runs(chat, fake, pool):
    sid = named_session(chat)
    with fake.hold_streams() as gate:
        first, _ = start_held(chat, sid, gate, "first")
        queued = Stream(send_with(chat, sid, "never mind", "enqueue", buffered=False))
        queued_run = queued.next_event().data["run_id"]
        cancelled = chat.post(f"/api/llm/sessions/{sid}/runs/{queued_run}/cancel")
        assert cancelled.status_code == 200 and cancelled.get_json()["data"]["status"] == "cancelled"
        end = queued.rest()[-1]
        assert end.event == "error" and end.data["code"] == "cancelled"
        gate.release()
        first.rest()
    assert wait_until(lambda: run_over(pool, sid))
    assert transcript(chat, sid) == [("user", "first", None), ("assistant", "Echo: first", None)]
    again = chat.post(f"/api/llm/sessions/{sid}/runs/{queued_run}/cancel")
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "run_finished"


def test_interrupt_stops_the_running_reply_keeping_its_text_then_runs(chat, fake, pool):
    sid = named_session(chat)
    fake.reply = lambda body: LONG_REPLY if body["messages"][-1]["content"] == "first" else "Echo: now this"
    with fake.hold_streams() as gate:
        first, _ = start_held(chat, sid, gate, "first")
        partial = first.next_event().data["content"]
        second = send_with(chat, sid, "now this", "interrupt", buffered=False)  # held after its first token too
        ended = first.rest()[-1]
    assert ended.event == "error" and ended.data["code"] == "cancelled"
    events, _ = parse_sse(second.get_data(as_text=True))
    assert events[-1].event == "done" and reply_text(events) == "Echo: now this"
    assert transcript(chat, sid) == [("user", "first", None), ("assistant", partial, "stopped"),
                                     ("user", "now this", None), ("assistant", "Echo: now this", None)]
    assert chat.get(f"/api/llm/sessions/{sid}").get_json()["data"]["message_count"] == 4


def test_rollback_discards_the_running_reply_and_its_message_then_runs(chat, fake, pool):
    sid = named_session(chat)
    parse_sse(send(chat, sid, "earlier").get_data(as_text=True))
    fake.reply = lambda body: LONG_REPLY if body["messages"][-1]["content"] == "oops" else "Echo: instead"
    with fake.hold_streams() as gate:
        first, _ = start_held(chat, sid, gate, "oops")
        second = send_with(chat, sid, "instead", "rollback", buffered=False)
        assert first.rest()[-1].data["code"] == "cancelled"
    events, _ = parse_sse(second.get_data(as_text=True))
    assert events[-1].event == "done" and events[-1].data["message_count"] == 4
    assert transcript(chat, sid) == [("user", "earlier", None), ("assistant", "Echo: earlier", None),
                                     ("user", "instead", None), ("assistant", "Echo: instead", None)]
    assert chat.get(f"/api/llm/sessions/{sid}").get_json()["data"]["message_count"] == 4
    # The withdrawn message is gone, not a branch beside the one that replaced it.
    instead = messages_of(chat, sid)[2]
    assert instead["sibling_ids"] == [instead["id"]]
    with pool.connection() as conn:
        assert conn.execute("select count(*) as n from chat_messages m join chat_sessions s on s.id = m.session_row_id"
                            " where s.session_id = %s and m.content = 'oops'", (sid,)).fetchone()["n"] == 0


def test_reject_is_the_default_and_the_queue_is_capped(make_app, fake, alice):
    app = make_app(openai_base_url=fake.base_url, openai_api_key="k", run_queue_max_per_session=1)
    client = client_for(app, alice)
    sid = named_session(client)
    with fake.hold_streams() as gate:
        first, _ = start_held(client, sid, gate)
        busy = send(client, sid, "second")
        assert busy.status_code == 409 and busy.get_json()["error"]["code"] == "session_busy"
        queued = Stream(send_with(client, sid, "second", "enqueue", buffered=False))
        assert queued.next_event().data["status"] == "queued"
        full = send_with(client, sid, "third", "enqueue")
        assert full.status_code == 429 and full.get_json()["error"]["code"] == "queue_full"
        gate.release()
        first.rest()
        assert queued.rest()[-1].event == "done"


def test_enqueue_on_a_free_session_just_runs(chat, fake):
    sid = named_session(chat)
    events, _ = parse_sse(send_with(chat, sid, "hello", "enqueue").get_data(as_text=True))
    assert events[0].data["status"] == "running" and events[-1].event == "done"


def test_a_forced_delete_with_a_queued_message_leaves_nothing(chat, fake, pool, alice):
    sid = named_session(chat)
    with fake.hold_streams() as gate:
        first, _ = start_held(chat, sid, gate, "first")
        queued = Stream(send_with(chat, sid, "second", "enqueue", buffered=False))
        queued.next_event()
        assert chat.delete(f"/api/llm/sessions/{sid}?force=true").status_code == 200
        gate.release()
        first.rest()
        assert queued.rest()[-1].data["code"] == "session_deleted"
    with pool.connection() as conn:
        for table in ("chat_runs", "chat_session_runs", "chat_queued_runs"):
            n = conn.execute(f"select count(*) as n from {table} where user_id = %s and session_id = %s",
                             (alice.id, sid)).fetchone()["n"]
            assert n == 0, table

"""Auto-naming from the first message: in the background, with fallbacks, and a rename always wins."""

from __future__ import annotations

import threading

from tests.chat_support import NAMING_ANSWER, model_reply, send, state_of, turn, wait_until
from tests.helpers import client_for, unique_session_id


def name_of(client, sid):
    return client.get(f"/api/llm/sessions/{sid}").get_json()["data"]["session_name"]


def naming_requests(fake):
    return [r for r in fake.chat_requests if not r.json.get("stream")]


def test_first_message_names_the_session(chat_app, chat, fake):
    before = len(naming_requests(fake))
    sid = unique_session_id()
    turn(chat, sid, "What's the value of the Highland property?")
    assert state_of(chat_app).namer.wait_idle(5)
    assert name_of(chat, sid) == NAMING_ANSWER

    [request] = naming_requests(fake)[before:]
    assert request.json["model"] == "fake-naming"
    assert request.json["max_tokens"] <= 16
    assert "Highland property" in request.json["messages"][-1]["content"]

    # later messages do not rename it
    turn(chat, sid, "And the Bristol one?")
    assert state_of(chat_app).namer.wait_idle(5)
    assert len(naming_requests(fake)) == before + 1
    assert name_of(chat, sid) == NAMING_ANSWER


def test_done_carries_the_name_when_ready(chat_app, chat, fake):
    # Naming answers at once; the chat reply is held until naming is done.
    sid = unique_session_id()
    with fake.hold_streams() as gate:
        response = send(chat, sid, "What's the value of the Highland property?", buffered=False)
        assert gate.wait_for_held(1)
        assert state_of(chat_app).namer.wait_idle(5)
        gate.release()
        body = response.get_data(as_text=True)
    assert f'"session_name": "{NAMING_ANSWER}"' in body


def test_naming_input_is_bounded(chat_app, chat, fake):
    before = len(naming_requests(fake))
    sid = unique_session_id()
    turn(chat, sid, "Highland " + "very long question " * 1500)
    assert state_of(chat_app).namer.wait_idle(5)
    [request] = naming_requests(fake)[before:]
    assert len(request.json["messages"][-1]["content"]) <= 600


def test_naming_failure_falls_back_to_key_words(chat_app, chat, fake):
    fake.reply = lambda body: "" if not body.get("stream") else model_reply(body)  # unusable titles
    sid = unique_session_id()
    turn(chat, sid, "What's the value of the Highland property?")
    assert state_of(chat_app).namer.wait_idle(10)
    name = name_of(chat, sid)
    assert "Highland" in name and name != "New Chat"


def test_offline_naming_uses_the_heuristic(make_app, alice):
    app = make_app()
    client = client_for(app, alice)
    sid = unique_session_id()
    turn(client, sid, "Find me comparable properties in Bristol")
    assert state_of(app).namer.wait_idle(5)
    assert "Bristol" in name_of(client, sid)


def test_nothing_usable_keeps_new_chat(make_app, alice):
    app = make_app()
    client = client_for(app, alice)
    sid = unique_session_id()
    turn(client, sid, "???")
    assert state_of(app).namer.wait_idle(5)
    assert name_of(client, sid) == "New Chat"


def test_rename_during_naming_wins(chat_app, chat, fake):
    naming_may_answer = threading.Event()

    def slow_naming(body):
        if not body.get("stream"):
            naming_may_answer.wait(5)
        return model_reply(body)

    fake.reply = slow_naming
    sid = unique_session_id()
    turn(chat, sid, "What's the value of the Highland property?")
    assert fake.wait_for_requests(1)
    assert chat.put(f"/api/llm/sessions/{sid}", json={"session_name": "My own name"}).status_code == 200
    naming_may_answer.set()
    assert state_of(chat_app).namer.wait_idle(5)
    assert name_of(chat, sid) == "My own name"


def test_name_given_at_create_is_never_replaced(chat_app, chat, fake):
    before = len(naming_requests(fake))
    sid = unique_session_id()
    chat.post("/api/llm/sessions", json={"session_id": sid, "session_name": "Chosen"})
    turn(chat, sid, "What's the value of the Highland property?")
    assert state_of(chat_app).namer.wait_idle(5)
    assert name_of(chat, sid) == "Chosen"
    assert len(naming_requests(fake)) == before


def _forget_name(pool, user_id, sid):
    """What a crash between the first message and its naming leaves behind."""
    with pool.connection() as conn:
        conn.execute(
            "update chat_sessions set session_name = 'New Chat', name_source = 'default', naming_claimed_at = null "
            "where user_id = %s and session_id = %s",
            (user_id, sid),
        )


def test_unnamed_session_is_named_on_next_start(make_app, chat, fake, alice, pool, fake_model):
    sid = unique_session_id()
    chat.post("/api/llm/sessions", json={"session_id": sid, "session_name": "temp"})
    turn(chat, sid, "What's the value of the Highland property?")
    _forget_name(pool, alice.id, sid)

    # A "restarted" server with its upkeep on names it shortly after start.
    restarted = make_app(
        openai_base_url=fake_model.base_url, openai_api_key="k", naming_model="fake-naming",
        maintenance_interval_seconds=3600, orphan_sweep_interval_seconds=0,
    )
    assert wait_until(lambda: name_of(chat, sid) == NAMING_ANSWER)
    assert state_of(restarted).namer.wait_idle(5)


def test_recovery_names_once_even_with_two_processes(make_app, chat, fake, alice, pool, fake_model):
    sid = unique_session_id()
    chat.post("/api/llm/sessions", json={"session_id": sid, "session_name": "temp"})
    turn(chat, sid, "Find me comparable properties in Bristol")
    _forget_name(pool, alice.id, sid)
    before = len(naming_requests(fake))
    apps = [make_app(openai_base_url=fake_model.base_url, openai_api_key="k", naming_model="fake-naming") for _ in range(2)]
    for app in apps:
        state_of(app).maintenance.name_unnamed()
    for app in apps:
        assert state_of(app).namer.wait_idle(5)
    assert name_of(chat, sid) == NAMING_ANSWER
    assert len(naming_requests(fake)) == before + 1  # claimed by one process only

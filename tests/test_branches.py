"""Branches: every message has an id; a user message can be edited and a reply regenerated, each a
new branch beside the old one; a switch makes any branch the active path, which is exactly what
the model is sent next; replies can be rated. In both history modes, on a real PostgreSQL, with
the fake model recording what it was sent."""

from __future__ import annotations

import threading

import pytest

from backend.services import services_of
from tests.chat_support import model_reply, named_session, parse_sse, turn
from tests.helpers import User, client_for


@pytest.fixture(scope="module", params=["latest", "full"])
def branch_app(request, module_make_app, fake_model):
    return module_make_app(
        openai_base_url=fake_model.base_url, openai_api_key="test-key", openai_model="fake-chat",
        naming_model="fake-naming", openai_timeout_seconds=2, openai_max_retries=1,
        checkpoint_history=request.param,
    )


@pytest.fixture
def client(branch_app, alice):
    return client_for(branch_app, alice)


def path_of(client, sid: str) -> list[dict]:
    response = client.get(f"/api/llm/sessions/{sid}?include_messages=true")
    assert response.status_code == 200, response.get_json()
    return response.get_json()["messages"]


def stream(response) -> dict:
    """The terminal event's data of a streamed turn; asserts it is `done`."""
    assert response.status_code == 200, response.get_data(as_text=True)
    events, _ = parse_sse(response.get_data(as_text=True))
    assert events[-1].event == "done", events[-1].data
    return events[-1].data


def edit(client, sid: str, message_id: str, query: str, **body):
    return client.post(f"/api/llm/sessions/{sid}/messages/{message_id}/edit", json={"query": query, **body})


def regenerate(client, sid: str, message_id: str, **body):
    return client.post(f"/api/llm/sessions/{sid}/messages/{message_id}/regenerate", json=body)


def switch(client, sid: str, message_id: str):
    return client.put(f"/api/llm/sessions/{sid}/branch", json={"message_id": message_id})


def conversation(client, turns: int) -> str:
    sid = named_session(client)
    for i in range(turns):
        stream(client.post("/api/llm/query/stream", json={"session_id": sid, "query": f"q{i}"}))
    return sid


def sent_to_model(fake) -> list[tuple[str, str]]:
    """What the model was sent on its last chat request: (role, content), without the system prompt."""
    body = fake.chat_requests[-1].json
    return [(m["role"], m["content"]) for m in body["messages"] if m["role"] != "system"]


def test_messages_have_ids_parents_and_the_done_event_names_them(client, fake):
    sid = named_session(client)
    done = stream(client.post("/api/llm/query/stream", json={"session_id": sid, "query": "hello"}))
    messages = path_of(client, sid)
    assert [m["role"] for m in messages] == ["user", "assistant"]
    user, reply = messages
    assert done["user_message_id"] == user["id"] and done["assistant_message_id"] == reply["id"]
    assert user["parent_id"] is None and reply["parent_id"] == user["id"]
    assert user["sibling_ids"] == [user["id"]] and user["sibling_index"] == 0
    assert reply["feedback"] is None


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_edit_starts_a_branch_and_keeps_the_old_one(client, fake, where):
    sid = conversation(client, 3)
    before = path_of(client, sid)
    index = {"first": 0, "middle": 2, "last": 4}[where]
    old = before[index]
    done = stream(edit(client, sid, old["id"], "edited question"))
    after = path_of(client, sid)
    assert after[:index] == [{**m, "sibling_ids": m["sibling_ids"]} for m in before[:index]]
    new_user, new_reply = after[index], after[index + 1]
    assert len(after) == index + 2
    assert new_user["content"] == "edited question" and new_user["id"] == done["user_message_id"]
    assert new_reply["content"] == "Echo: edited question" and new_reply["id"] == done["assistant_message_id"]
    assert new_user["parent_id"] == old["parent_id"]
    assert new_user["sibling_ids"] == [old["id"], new_user["id"]] and new_user["sibling_index"] == 1
    assert done["message_count"] == index + 2
    # The model saw the path up to the edit, then the new question: nothing of the old branch.
    assert sent_to_model(fake) == [(m["role"], m["content"]) for m in before[:index]] + [("user", "edited question")]
    # The old branch is intact and comes back whole.
    switched = switch(client, sid, old["id"])
    assert switched.status_code == 200, switched.get_json()
    assert switched.get_json()["data"]["message_count"] == 6
    assert [m["id"] for m in path_of(client, sid)] == [m["id"] for m in before]
    assert path_of(client, sid)[index]["sibling_index"] == 0


def test_regenerate_adds_a_sibling_reply_to_the_same_question(client, fake):
    sid = conversation(client, 2)
    before = path_of(client, sid)
    fake.reply = lambda body: "another answer" if body.get("stream") else model_reply(body)
    done = stream(regenerate(client, sid, before[1]["id"]))
    after = path_of(client, sid)
    assert len(after) == 2
    assert after[0] == before[0] | {"sibling_ids": before[0]["sibling_ids"]}
    assert after[1]["content"] == "another answer" and after[1]["parent_id"] == before[0]["id"]
    assert after[1]["sibling_ids"] == [before[1]["id"], after[1]["id"]]
    assert done["user_message_id"] == before[0]["id"] and done["assistant_message_id"] == after[1]["id"]
    assert sent_to_model(fake) == [("user", "q0")]
    # Regenerating the last reply of a longer conversation keeps what came before it.
    sid = conversation(client, 3)
    before = path_of(client, sid)
    stream(regenerate(client, sid, before[-1]["id"]))
    assert sent_to_model(fake) == [(m["role"], m["content"]) for m in before[:-1]]
    assert [m["id"] for m in path_of(client, sid)][:-1] == [m["id"] for m in before[:-1]]


def test_three_edits_of_one_message_count_four_branches(client, fake):
    sid = conversation(client, 2)
    target = path_of(client, sid)[2]
    ids = [target["id"]]
    for n in range(3):
        ids.append(stream(edit(client, sid, ids[-1] if n else target["id"], f"take {n}"))["user_message_id"])
    picker = path_of(client, sid)[2]
    assert picker["sibling_ids"] == ids and picker["sibling_index"] == 3
    # Every sibling shows the same picker from its own place (the "stuck at 2/2" case).
    for i, message_id in enumerate(ids):
        assert switch(client, sid, message_id).status_code == 200
        shown = path_of(client, sid)[2]
        assert shown["id"] == message_id and shown["sibling_ids"] == ids and shown["sibling_index"] == i


def test_a_switch_is_exactly_what_the_model_sees_next(client, fake):
    sid = conversation(client, 2)
    first = path_of(client, sid)
    stream(edit(client, sid, first[0]["id"], "another start"))
    assert switch(client, sid, first[0]["id"]).status_code == 200
    stream(client.post("/api/llm/query/stream", json={"session_id": sid, "query": "continue"}))
    assert sent_to_model(fake) == [(m["role"], m["content"]) for m in first] + [("user", "continue")]
    path = path_of(client, sid)
    assert [m["content"] for m in path] == ["q0", "Echo: q0", "q1", "Echo: q1", "continue", "Echo: continue"]
    assert path[0]["sibling_index"] == 0 and len(path[0]["sibling_ids"]) == 2
    # Back to the other branch: its newest leaf, and the model is sent that path only.
    other = path[0]["sibling_ids"][1]
    body = switch(client, sid, other).get_json()
    assert [m["content"] for m in body["messages"]] == ["another start", "Echo: another start"]
    assert body["data"]["message_count"] == 2
    stream(client.post("/api/llm/query/stream", json={"session_id": sid, "query": "and then"}))
    assert sent_to_model(fake) == [("user", "another start"), ("assistant", "Echo: another start"),
                                   ("user", "and then")]


def test_message_count_is_the_active_path_and_the_caps_count_every_branch(branch_app, alice, fake):
    client = client_for(branch_app, alice)
    sid = conversation(client, 2)
    stream(edit(client, sid, path_of(client, sid)[0]["id"], "new"))
    row = client.get(f"/api/llm/sessions/{sid}").get_json()["data"]
    assert row["message_count"] == 2
    with services_of(branch_app).db.pool.connection() as conn:
        kept = conn.execute("select branch_messages from chat_sessions where session_id = %s", (sid,)).fetchone()
    assert kept["branch_messages"] == 4


def test_feedback_is_idempotent_returned_with_the_message_and_does_not_reorder(client, fake):
    sid = conversation(client, 1)
    other = conversation(client, 1)
    order = [s["session_id"] for s in client.get("/api/llm/sessions").get_json()["data"]]
    reply = path_of(client, sid)[1]
    url = f"/api/llm/sessions/{sid}/messages/{reply['id']}/feedback"
    for _ in range(2):
        response = client.put(url, json={"rating": "up", "comment": "spot on"})
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["data"]["feedback"]["rating"] == "up"
    assert path_of(client, sid)[1]["feedback"]["comment"] == "spot on"
    assert [s["session_id"] for s in client.get("/api/llm/sessions").get_json()["data"]] == order
    assert order[0] == other
    cleared = client.put(url, json={"rating": None})
    assert cleared.status_code == 200 and cleared.get_json()["data"]["feedback"] is None
    # A user message cannot be rated; an unknown id is 404.
    user_url = f"/api/llm/sessions/{sid}/messages/{path_of(client, sid)[0]['id']}/feedback"
    assert client.put(user_url, json={"rating": "down"}).status_code == 400
    assert client.put(f"/api/llm/sessions/{sid}/messages/nope/feedback", json={"rating": "up"}).status_code == 404


def test_another_users_message_ids_are_not_found(branch_app, alice, fake):
    owner = client_for(branch_app, alice)
    sid = conversation(owner, 1)
    user, reply = path_of(owner, sid)
    stranger = client_for(branch_app, User())
    named = named_session(stranger)
    for target_sid in (sid, named):
        assert stranger.put(f"/api/llm/sessions/{target_sid}/messages/{reply['id']}/feedback",
                            json={"rating": "up"}).status_code == 404
        assert edit(stranger, target_sid, user["id"], "mine now").status_code == 404
        assert regenerate(stranger, target_sid, reply["id"]).status_code == 404
        assert switch(stranger, target_sid, user["id"]).status_code == 404
    assert path_of(owner, sid)[1]["feedback"] is None
    assert len(path_of(owner, sid)) == 2


def test_wrong_roles_and_unknown_messages_are_4xx(client, fake):
    sid = conversation(client, 1)
    user, reply = path_of(client, sid)
    assert edit(client, sid, reply["id"], "x").status_code == 400
    assert regenerate(client, sid, user["id"]).status_code == 400
    assert edit(client, sid, "missing", "x").status_code == 404
    assert switch(client, sid, "missing").status_code == 404
    assert edit(client, sid, user["id"], "   ").status_code == 400
    assert client.put(f"/api/llm/sessions/{sid}/branch", json={}).status_code == 400


def test_edit_switch_and_regenerate_while_a_reply_runs_are_session_busy(client, fake):
    sid = conversation(client, 1)
    user, reply = path_of(client, sid)
    with fake.hold_streams() as gate:
        holder = threading.Thread(
            target=lambda: client.post("/api/llm/query/stream", json={"session_id": sid, "query": "held"}).get_data())
        holder.start()
        assert gate.wait_for_held()
        for response in (edit(client, sid, user["id"], "x"), regenerate(client, sid, reply["id"]),
                         switch(client, sid, user["id"])):
            assert response.status_code == 409
            assert response.get_json()["error"]["code"] == "session_busy"
        gate.release()
        holder.join(10)
    assert [m["content"] for m in path_of(client, sid)][-2:] == ["held", "Echo: held"]
    assert len(path_of(client, sid)[0]["sibling_ids"]) == 1


def test_concurrent_edits_keep_the_count_exact(client, fake):
    sid = conversation(client, 2)
    target = path_of(client, sid)[2]["id"]
    codes: list[int] = []

    def go(n: int) -> None:
        response = edit(client, sid, target, f"race {n}")
        codes.append(response.status_code)
        response.get_data()

    threads = [threading.Thread(target=go, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert codes.count(200) >= 1 and set(codes) <= {200, 409}
    path = path_of(client, sid)
    row = client.get(f"/api/llm/sessions/{sid}").get_json()["data"]
    assert row["message_count"] == len(path) == 4
    assert len(path[2]["sibling_ids"]) == 1 + codes.count(200)

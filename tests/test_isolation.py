"""Two users on every endpoint: another user's session behaves exactly like one that does not exist."""

from __future__ import annotations

from tests.chat_support import named_session, turn
from tests.checkpoints import session_row, thread_row_counts
from tests.conftest import client_for


def test_every_endpoint_keeps_users_apart(chat_app, fake, alice, bob, pool):
    a, b = client_for(chat_app, alice), client_for(chat_app, bob)
    sid = named_session(a, "Alice's private chat")
    turn(a, sid, "something private")
    row_before = session_row(pool, alice.id, sid)
    rows_before = thread_row_counts(pool, alice.thread_id(sid))
    missing = "no-such-session-anywhere"

    def same_as_missing(method, path_for, **kwargs):
        theirs = getattr(b, method)(path_for(sid), **kwargs)
        nothing = getattr(b, method)(path_for(missing), **kwargs)
        assert (theirs.status_code, theirs.get_json()) == (nothing.status_code, nothing.get_json()), method

    same_as_missing("get", lambda s: f"/api/llm/sessions/{s}")
    same_as_missing("get", lambda s: f"/api/llm/sessions/{s}?include_messages=true")
    same_as_missing("put", lambda s: f"/api/llm/sessions/{s}", json={"session_name": "Bob was here"})
    same_as_missing("put", lambda s: f"/api/llm/sessions/{s}", json={"is_archived": True})
    same_as_missing("delete", lambda s: f"/api/llm/sessions/{s}")
    same_as_missing("delete", lambda s: f"/api/llm/sessions/{s}?force=true")
    assert sid not in [s["session_id"] for s in b.get("/api/llm/sessions?include_archived=true").get_json()["data"]]

    # Bob chatting under the same id gets a session of his own, not Alice's history.
    events = turn(b, sid, "hello?")
    assert events[-1].data["message_count"] == 2
    assert "something private" not in str(b.get(f"/api/llm/sessions/{sid}?include_messages=true").get_json())

    assert session_row(pool, alice.id, sid) == row_before
    assert thread_row_counts(pool, alice.thread_id(sid)) == rows_before

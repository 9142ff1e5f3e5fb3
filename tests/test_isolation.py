"""Two users on every endpoint: another user's session behaves exactly like one that does not exist.

Bob acts on Alice's session by its id, by its LangGraph thread id, and by
guessing ids shaped like hers; every answer must equal the answer for an id
nobody has, and Alice's rows (session, every checkpoint row, runs, audit) must
be byte-for-byte what they were, checked in the database.
"""

from __future__ import annotations

import secrets

import pytest

from tests.chat_support import parse_sse, send, turn
from tests.checkpoints import rows_digest, seed_thread, thread_row_counts
from tests.helpers import User, client_for, make_token, unique_session_id


def fingerprint(pool, user, session_id: str) -> dict:
    """Everything of Alice's that Bob could touch, as stored (full row contents, hashed per table)."""
    thread_id = user.thread_id(session_id)
    with pool.connection() as conn:
        def table(sql, *params):
            return rows_digest(conn, sql, *params)

        return {
            "session": table("select * from chat_sessions where user_id = %s and session_id = %s", user.id, session_id),
            **{name: table(f"select * from {name} where thread_id = %s", thread_id)
               for name in ("checkpoints", "checkpoint_blobs", "checkpoint_writes")},
            # not lease_expires_at: the owner renews it all the time
            "runs": table("select user_id, session_id, run_id, owner, started_at, cancel_requested_at"
                          " from chat_session_runs where user_id = %s", user.id),
            "audit": table("select * from session_deletions where user_id = %s or session_id = %s", user.id, session_id),
        }


def audit_rows(pool, user) -> int:
    with pool.connection() as conn:
        return conn.execute("select count(*) as n from session_deletions where user_id = %s", (user.id,)).fetchone()["n"]


GUESSES = ["by id", "by thread id", "same millisecond, other suffix", "next millisecond, same suffix",
           "upper case", "prefix", "longer"]


def guesses(alice, sid: str) -> dict[str, str]:
    """Ids Bob might try: hers, her thread id, and ids shaped like hers."""
    _, millis, _ = sid.split("-")
    return {
        "by id": sid,
        "by thread id": alice.thread_id(sid),
        "same millisecond, other suffix": f"chat-{millis}-{secrets.token_hex(5)}",
        "next millisecond, same suffix": f"chat-{int(millis) + 1}-{sid.rsplit('-', 1)[1]}",
        "upper case": sid.upper(),
        "prefix": sid[:-1],
        "longer": sid + "0",
    }


@pytest.fixture
def alices_session(chat_app, fake, alice, pool):
    """A session with a server-made id (chat-<ms>-<random>), a name, and one whole turn."""
    a = client_for(chat_app, alice)
    sid = a.post("/api/llm/sessions", json={"session_name": "Alice's private chat"}).get_json()["session_id"]
    assert turn(a, sid, "something private")[-1].event == "done"
    return sid


BOB_ACTIONS = [
    ("get", "/api/llm/sessions/{}", {}),
    ("get", "/api/llm/sessions/{}?include_messages=true", {}),
    ("get", "/api/llm/sessions/{}?include_messages=false", {}),
    ("put", "/api/llm/sessions/{}", {"json": {"session_name": "Bob was here"}}),
    ("put", "/api/llm/sessions/{}", {"json": {"is_archived": True}}),
    ("put", "/api/llm/sessions/{}", {"json": {"session_name": "Bob", "is_archived": False}}),
    ("put", "/api/llm/sessions/{}", {"json": {"message_count": 0}}),
    ("delete", "/api/llm/sessions/{}", {}),
    ("delete", "/api/llm/sessions/{}?force=false", {}),
    ("delete", "/api/llm/sessions/{}?force=true", {}),
    ("get", "/api/llm/sessions/{}/usage", {}),
    ("get", "/api/llm/sessions/{}/export", {}),
]


@pytest.mark.parametrize("how", GUESSES)
def test_bob_gets_what_a_missing_session_gets(chat_app, alice, bob, pool, alices_session, how):
    sid = alices_session
    b = client_for(chat_app, bob)
    assert list(guesses(alice, sid)) == GUESSES
    target = guesses(alice, sid)[how]
    before = fingerprint(pool, alice, sid)

    for method, path, kwargs in BOB_ACTIONS:
        theirs = getattr(b, method)(path.format(target), **kwargs)
        nobodys = getattr(b, method)(path.format(f"chat-{secrets.token_hex(8)}"), **kwargs)
        assert (theirs.status_code, theirs.get_json()) == (nobodys.status_code, nobodys.get_json()), (method, path)
        assert theirs.status_code in (400, 404)

    listed = b.get("/api/llm/sessions?include_archived=true&limit=200").get_json()
    assert listed["total"] == 0 and listed["data"] == []
    assert b.get("/api/llm/usage?group_by=session").get_json()["total"]["calls"] == 0
    assert fingerprint(pool, alice, sid) == before
    assert audit_rows(pool, bob) == 0  # refused deletes leave no audit row either


def test_a_thread_without_a_row_is_not_anothers_either(chat_app, alice, bob, pool):
    """A session that lived only in Alice's browser: checkpoints, no row."""
    sid = f"chat-{secrets.token_hex(6)}"
    seed_thread(pool, alice.thread_id(sid))
    before = fingerprint(pool, alice, sid)
    b = client_for(chat_app, bob)
    for path in (f"/api/llm/sessions/{sid}", f"/api/llm/sessions/{sid}?force=true"):
        r = b.delete(path)
        assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"
    assert b.get(f"/api/llm/sessions/{sid}?include_messages=true").status_code == 404
    assert fingerprint(pool, alice, sid) == before


def _normalised(body: dict, user, session_id: str) -> dict:
    """A create answer with the parts that differ per call (ids, times) taken out."""
    data = dict(body["data"])
    assert data.pop("session_id") == body.pop("session_id") == session_id
    assert data.pop("thread_id") == body.pop("thread_id") == user.thread_id(session_id)
    for stamp in ("created_at", "updated_at"):
        data.pop(stamp)
    return {**body, "data": data}


@pytest.mark.parametrize("how", ["by id", "by thread id", "same millisecond, other suffix"])
def test_bob_creating_or_chatting_under_alices_id_gets_a_session_of_his_own(chat_app, fake, alice, bob, pool, alices_session, how):
    sid = alices_session
    b = client_for(chat_app, bob)
    target = guesses(alice, sid)[how]
    before = fingerprint(pool, alice, sid)

    missing = f"chat-{secrets.token_hex(8)}"
    theirs, nobodys = (b.post("/api/llm/sessions", json={"session_id": s}) for s in (target, missing))
    # 201 (new), never 200 ("you already have it"): that would say Alice's exists
    assert theirs.status_code == nobodys.status_code == 201
    assert _normalised(theirs.get_json(), bob, target) == _normalised(nobodys.get_json(), bob, missing)

    # Chatting: a second id, so the session is made on first use here too.
    target2, missing2 = target + ".2", f"chat-{secrets.token_hex(8)}"
    for s in (target, target2, missing2):
        events = turn(b, s, f"bob asks {s}")
        assert [e.event for e in events][-1] == "done" and events[-1].data["message_count"] == 2
        assert events[-1].data["session_name"] != "Alice's private chat"
        [request] = [r for r in fake.chat_requests if r.json.get("stream")
                     and r.json["messages"][-1]["content"] == f"bob asks {s}"]
        assert [m["content"] for m in request.json["messages"]] == [f"bob asks {s}"]  # none of Alice's history
        history = b.get(f"/api/llm/sessions/{s}?include_messages=true").get_json()["messages"]
        assert "something private" not in str(history)

    assert fingerprint(pool, alice, sid) == before


def test_alices_busy_or_archived_session_tells_bob_nothing(chat_app, fake, alice, bob, pool, alices_session):
    """409 session_busy / session_archived would reveal that Alice's session exists."""
    sid = alices_session
    a, b = client_for(chat_app, alice), client_for(chat_app, bob)
    with fake.hold_streams() as gate:
        alices_reply = send(a, sid, "a slow question", buffered=False)
        assert alices_reply.status_code == 200 and gate.wait_for_held(1)
        before = fingerprint(pool, alice, sid)  # with her live run row
        for path in (f"/api/llm/sessions/{sid}", f"/api/llm/sessions/{sid}?force=true"):
            r = b.delete(path)
            assert r.status_code == 404, path
        assert fingerprint(pool, alice, sid) == before  # her run was not asked to stop
        gate.release()
        events, _ = parse_sse(alices_reply.get_data(as_text=True))
    assert events[-1].event == "done" and events[-1].data["message_count"] == 4

    assert a.put(f"/api/llm/sessions/{sid}", json={"is_archived": True}).status_code == 200
    before = fingerprint(pool, alice, sid)
    assert b.put(f"/api/llm/sessions/{sid}", json={"is_archived": False}).status_code == 404
    bobs = send(b, sid, "hello?")
    assert bobs.status_code == 200  # his own new session, not 409 session_archived
    assert parse_sse(bobs.get_data(as_text=True))[0][-1].event == "done"
    assert fingerprint(pool, alice, sid) == before


# --- thread ids are unambiguous ---------------------------------------------------------------------

def test_the_thread_id_collision_from_the_review_is_refused(chat_app, fake, pool):
    """user `alice` (business b), session q_business_z_session_w, has the thread
    user_alice_business_b_session_q_business_z_session_w; a token with sub
    alice_business_b_session_q and business z would name the same thread for session w."""
    alice = User(business_id="b")
    alice.id, alice.token = "alice", make_token("alice", business_id="b")
    victim = client_for(chat_app, alice)
    turn(victim, "q_business_z_session_w", "remember this")
    thread = alice.thread_id("q_business_z_session_w")
    assert thread == "user_alice_business_b_session_q_business_z_session_w"
    before = thread_row_counts(pool, thread)

    attacker = chat_app.test_client()
    token = make_token("alice_business_b_session_q", business_id="z")
    r = attacker.delete("/api/llm/sessions/w", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "invalid_token"
    assert thread_row_counts(pool, thread) == before  # alice's memory is untouched
    assert victim.get("/api/llm/sessions/q_business_z_session_w?include_messages=true").get_json()["messages"]


@pytest.mark.parametrize("sub, business, accepted", [
    ("6a1f0c2e-9b1d-4c55-8f0e-1f2a3b4c5d6e", "acme", True),
    ("auth0|5f7c8ec7", "acme", True),
    ("someone@example.com", "acme.io", True),
    ("a_b", "acme", False),
    ("ok", "acme_corp", False),
    ("has space", "acme", False),
    ("x" * 129, "acme", False),
    ("ok", "x" * 129, False),
])
def test_token_identity_parts_must_keep_thread_ids_one_to_one(app, sub, business, accepted):
    r = app.test_client().get("/api/auth/me", headers={"Authorization": f"Bearer {make_token(sub, business_id=business)}"})
    assert r.status_code == (200 if accepted else 401), r.get_json()


def test_a_rowless_delete_never_takes_a_thread_a_session_owns(chat_app, fake, alice, pool):
    sid = unique_session_id()
    client = client_for(chat_app, alice)
    turn(client, sid, "mine")
    with pool.connection() as conn:  # a second row for the same thread cannot exist; simulate a stale lookup
        conn.execute("update chat_sessions set session_id = %s where user_id = %s and session_id = %s",
                     (sid + "-moved", alice.id, sid))
    before = thread_row_counts(pool, alice.thread_id(sid))
    assert client.delete(f"/api/llm/sessions/{sid}").status_code == 404
    assert thread_row_counts(pool, alice.thread_id(sid)) == before

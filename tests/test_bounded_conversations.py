"""A conversation's cost is bounded: replies (max_tokens), history sent upstream (trimmed), history kept (capped),
and messages read back (paged)."""

from __future__ import annotations

import threading

from backend.chat.run_store import RunStore
from tests.chat_support import named_session, parse_sse, send, turn
from tests.checkpoints import rows_digest
from tests.helpers import User, client_for


def test_replies_are_capped_upstream(chat, fake):
    sid = named_session(chat)
    turn(chat, sid, "hello")
    assert fake.chat_requests[-1].json["max_tokens"] == 2048


def test_only_the_newest_history_that_fits_goes_upstream(make_app, fake, alice):
    app = make_app(openai_base_url=fake.base_url, openai_api_key="k", chat_context_max_tokens=300,
                   system_prompt="Be brief.")
    client = client_for(app, alice)
    sid = named_session(client)
    for i in range(12):
        turn(client, sid, f"message {i} " + "words " * 40)  # ~60 tokens a turn, both sides
    sent = fake.chat_requests[-1].json["messages"]
    assert sent[0] == {"role": "system", "content": "Be brief."}  # always kept
    assert sent[-1]["content"].startswith("message 11 ")  # the newest always goes
    assert sent[1]["role"] == "user"  # starts on a user message
    assert len(sent) < 1 + 2 * 12 - 1  # older ones were left out...
    history = client.get(f"/api/llm/sessions/{sid}?include_messages=true").get_json()
    assert len(history["messages"]) == 24  # ...of the request, never of the stored history


def test_a_full_session_takes_no_more_turns_and_nothing_is_written(make_app, fake, alice, pool):
    app = make_app(openai_base_url=fake.base_url, openai_api_key="k", chat_history_max_messages=4)
    client = client_for(app, alice)
    sid = named_session(client)
    turn(client, sid, "one")
    turn(client, sid, "two")
    with pool.connection() as conn:
        before = rows_digest(conn, "select * from checkpoints where thread_id = %s", alice.thread_id(sid))
        runs = conn.execute("select count(*) as n from session_events where session_id = %s", (sid,)).fetchone()["n"]
    r = send(client, sid, "three")
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "session_full"
    with pool.connection() as conn:
        assert rows_digest(conn, "select * from checkpoints where thread_id = %s", alice.thread_id(sid)) == before
        assert conn.execute("select count(*) as n from session_events where session_id = %s",
                            (sid,)).fetchone()["n"] == runs  # not even a run started
    # a brand-new session is unaffected
    assert send(client, named_session(client), "fresh").status_code == 200


def test_a_session_holding_too_much_text_takes_no_more_turns(make_app, fake, alice, pool):
    app = make_app(openai_base_url=fake.base_url, openai_api_key="k", chat_history_max_bytes=2410)
    client = client_for(app, alice)
    sid = named_session(client)
    turn(client, sid, "é" * 600)  # 1,200 bytes, and "Echo: " and them again: 2,406 in all
    assert turn(client, sid, "short")[-1].event == "done"  # still under 2,410 when it started
    with pool.connection() as conn:
        stored = conn.execute("select history_bytes, message_count from chat_sessions where session_id = %s"
                              " and user_id = %s", (sid, alice.id)).fetchone()
        before = rows_digest(conn, "select * from checkpoints where thread_id = %s", alice.thread_id(sid))
    history = client.get(f"/api/llm/sessions/{sid}?include_messages=true").get_json()["messages"]
    assert stored["history_bytes"] == sum(len(m["content"].encode()) for m in history) == 2422
    r = send(client, sid, "one more")
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "session_full"
    with pool.connection() as conn:
        assert rows_digest(conn, "select * from checkpoints where thread_id = %s", alice.thread_id(sid)) == before
        assert conn.execute("select message_count from chat_sessions where session_id = %s and user_id = %s",
                            (sid, alice.id)).fetchone()["message_count"] == stored["message_count"]


def test_an_import_counts_its_text(api, pool, alice):
    body = {"format": "chat-session/v1", "messages": [{"role": "user", "content": "héllo"},
                                                      {"role": "assistant", "content": "hi"}]}
    sid = api.post("/api/llm/sessions/import", json=body).get_json()["data"]["session_id"]
    with pool.connection() as conn:
        assert conn.execute("select history_bytes from chat_sessions where session_id = %s and user_id = %s",
                            (sid, alice.id)).fetchone()["history_bytes"] == len("héllo".encode()) + 2


def test_messages_are_read_back_in_pages_newest_last(chat, fake):
    sid = named_session(chat)
    for i in range(5):
        turn(chat, sid, f"q{i}")
    page = chat.get(f"/api/llm/sessions/{sid}?include_messages=true&messages_limit=4").get_json()
    assert [m["content"] for m in page["messages"]] == ["q3", "Echo: q3", "q4", "Echo: q4"]
    assert page["messages_start"] == 6 and page["has_more_messages"] is True
    older = chat.get(f"/api/llm/sessions/{sid}?include_messages=true&messages_limit=4"
                     f"&messages_before={page['messages_start']}").get_json()
    assert [m["content"] for m in older["messages"]] == ["q1", "Echo: q1", "q2", "Echo: q2"]
    first = chat.get(f"/api/llm/sessions/{sid}?include_messages=true&messages_limit=4&messages_before=2").get_json()
    assert [m["content"] for m in first["messages"]] == ["q0", "Echo: q0"] and first["has_more_messages"] is False
    for bad in ("messages_limit=0", "messages_limit=1001", "messages_before=-1", "messages_limit=x"):
        r = chat.get(f"/api/llm/sessions/{sid}?include_messages=true&{bad}")
        assert r.status_code == 400, bad


def test_one_user_may_have_only_so_many_replies_at_once(make_app, fake, alice, bob):
    app = make_app(openai_base_url=fake.base_url, openai_api_key="k", chat_max_concurrent_per_user=2)
    client = client_for(app, alice)
    sids = [named_session(client) for _ in range(3)]
    with fake.hold_streams() as gate:
        held = [send(client, sid, "hold", buffered=False) for sid in sids[:2]]
        assert gate.wait_for_held(2)
        refused = send(client, sids[2], "one more")
        assert refused.status_code == 429 and refused.get_json()["error"]["code"] == "too_many_streams"
        assert refused.headers["Retry-After"] == "5"
        new_session = send(client, "brand-new-one", "and here?")  # the create-on-first-use path too
        assert new_session.status_code == 429
        bob_client = client_for(app, bob)
        others = send(bob_client, named_session(bob_client), "other user", buffered=False)
        assert others.status_code == 200  # the cap is per user
        gate.release()
        for r in [*held, others]:
            r.get_data()
            r.close()
    assert send(client, sids[2], "now").status_code == 200


def test_a_burst_of_starts_by_one_user_never_passes_the_cap(pool):
    # Each start counts the user's live replies under the user's lock, on a
    # snapshot taken after the lock (sql/017): ten at once, two may start.
    user, store, n = User(), RunStore(pool), 10
    sids = [f"burst-{i}" for i in range(n)]
    with pool.connection() as conn:
        for sid in sids:
            conn.execute("insert into chat_sessions (user_id, business_id, session_id, thread_id) values (%s, %s, %s, %s)",
                         (user.id, user.business_id, sid, user.thread_id(sid)))
    barrier, started = threading.Barrier(n), []

    def start(sid):
        barrier.wait()
        session, run_id, _ = store.start_run_in_session(user.id, sid, "test", 30, max_messages=100,
                                                        max_bytes=10**6, max_runs=2)
        started.append((session["session_id"], run_id))

    threads = [threading.Thread(target=start, args=(sid,)) for sid in sids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(started) == n  # every start answered, with its session
    assert sum(run_id is not None for _, run_id in started) == 2
    assert store.live_runs(user.id) == 2


def test_a_reply_past_the_turn_deadline_is_stopped(make_app, fake, alice, pool):
    app = make_app(openai_base_url=fake.base_url, openai_api_key="k", chat_turn_max_seconds=0.5,
                   run_renew_seconds=0.1, run_lease_seconds=1)
    client = client_for(app, alice)
    sid = named_session(client)
    with fake.hold_streams():  # a reply that never ends by itself
        events, _ = parse_sse(send(client, sid, "go on forever").get_data(as_text=True))
    assert events[-1].event == "error" and events[-1].data["code"] == "turn_too_long"
    assert client.get(f"/api/llm/sessions/{sid}").get_json()["data"]["message_count"] == 1


def test_one_user_may_keep_only_so_many_sessions(make_app, alice, bob):
    app = make_app(max_sessions_per_user=3)
    client = client_for(app, alice)
    for i in range(3):
        assert client.post("/api/llm/sessions", json={"session_id": f"quota-{i}"}).status_code == 201
    r = client.post("/api/llm/sessions", json={"session_id": "quota-3"})
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "quota_exceeded"
    assert client.post("/api/llm/sessions", json={"session_id": "quota-0"}).status_code == 200  # a retry still works
    assert client_for(app, bob).post("/api/llm/sessions", json={}).status_code == 201
    assert client.delete("/api/llm/sessions/quota-0").status_code == 200
    assert client.post("/api/llm/sessions", json={"session_id": "quota-3"}).status_code == 201


def _import(client, sid: str):
    return client.post("/api/llm/sessions/import", json={
        "format": "chat-session/v1", "session_id": sid,
        "messages": [{"role": "user", "content": "kept"}, {"role": "assistant", "content": "and answered"}]})


def _user_rows(pool, user: User) -> dict:
    """Every row a create, an import or a restore could write for this user."""
    with pool.connection() as conn:
        return {
            "sessions": rows_digest(conn, "select * from chat_sessions where user_id = %s", user.id),
            "backups": rows_digest(conn, "select * from session_backups where user_id = %s", user.id),
            **{table: rows_digest(conn, f"select * from {table} where thread_id like %s", f"user_{user.id}_%")
               for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes")},
        }


def test_imports_and_restores_past_the_session_cap_are_refused_and_write_nothing(make_app, alice, pool):
    app = make_app(max_sessions_per_user=2)
    client = client_for(app, alice)
    assert _import(client, "kept-0").status_code == 201
    backup_id = client.delete("/api/llm/sessions/kept-0?backup=true").get_json()["backup"]["backup_id"]
    assert _import(client, "kept-1").status_code == 201
    assert client.post("/api/llm/sessions", json={"session_id": "kept-2"}).status_code == 201  # at the cap
    before = _user_rows(pool, alice)
    r = _import(client, "one-too-many")
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "quota_exceeded", r.get_json()
    r = client.post("/api/llm/sessions/restore", json={"backup_id": backup_id})
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "quota_exceeded", r.get_json()
    r = send(client, "first-use", "hello")  # the chat turn's create-on-first-use
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "quota_exceeded", r.get_json()
    assert _user_rows(pool, alice) == before  # no session row, no checkpoint row, the recovery point kept
    # With room again, the refused recovery point still works, and puts the conversation back.
    assert client.delete("/api/llm/sessions/kept-2").status_code == 200
    assert client.post("/api/llm/sessions/restore", json={"backup_id": backup_id}).status_code == 201
    messages = client.get("/api/llm/sessions/kept-0?include_messages=true").get_json()["messages"]
    assert [m["content"] for m in messages] == ["kept", "and answered"]


def test_concurrent_creates_by_every_path_never_pass_the_session_cap(make_app, alice, pool):
    # Creates, first chat turns, imports and restores at once, by one user with no session:
    # each path claims its slot under the same per-user lock (sql/022), so exactly `cap` land.
    cap, each = 3, 4
    app = make_app(max_sessions_per_user=cap, chat_max_concurrent_per_user=20)
    client = client_for(app, alice)
    backups = []
    for i in range(each):
        assert _import(client, f"restorable-{i}").status_code == 201
        backups.append(client.delete(f"/api/llm/sessions/restorable-{i}?backup=true").get_json()["backup"]["backup_id"])
    attempts = (
        [lambda c, i=i: c.post("/api/llm/sessions", json={"session_id": f"created-{i}"}) for i in range(each)]
        + [lambda c, i=i: send(c, f"chatted-{i}", "hello") for i in range(each)]
        + [lambda c, i=i: _import(c, f"imported-{i}") for i in range(each)]
        + [lambda c, b=b: c.post("/api/llm/sessions/restore", json={"backup_id": b}) for b in backups]
    )
    barrier, statuses = threading.Barrier(len(attempts)), []

    def attempt(fn):
        own = client_for(app, alice)
        barrier.wait()
        r = fn(own)
        r.get_data()
        statuses.append((r.status_code, r.get_json()["error"]["code"] if r.status_code >= 400 else None))

    threads = [threading.Thread(target=attempt, args=(fn,)) for fn in attempts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(statuses) == len(attempts)
    refused = [s for s in statuses if s[0] >= 400]
    assert set(refused) == {(409, "quota_exceeded")} and len(statuses) - len(refused) == cap, statuses
    with pool.connection() as conn:
        assert conn.execute("select count(*) as n from chat_sessions where user_id = %s",
                            (alice.id,)).fetchone()["n"] == cap
        assert conn.execute("select sessions from chat_session_counts where user_id = %s",
                            (alice.id,)).fetchone()["sessions"] == cap

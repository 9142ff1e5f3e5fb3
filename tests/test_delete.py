"""DELETE leaves nothing behind: the session row and every LangGraph row of its thread, atomically."""

from __future__ import annotations

import threading

import pytest

from tests.checkpoints import NO_ROWS, seed_thread, session_row, thread_row_counts
from tests.helpers import client_for, failing_trigger, unique_session_id




def audit_rows(pool, user_id, session_id):
    with pool.connection() as conn:
        return conn.execute(
            "select * from session_deletions where user_id = %s and session_id = %s", (user_id, session_id)
        ).fetchall()


def make_session_with_history(api, pool, user, turns=3):
    sid = unique_session_id()
    assert api.post("/api/llm/sessions", json={"session_id": sid}).status_code == 201
    counts = seed_thread(pool, user.thread_id(sid), turns=turns)
    assert all(n > 0 for n in counts.values()), counts
    return sid, counts


def test_delete_removes_row_and_every_checkpoint_row(api, pool, alice):
    sid, before = make_session_with_history(api, pool, alice)
    other_sid, other_before = make_session_with_history(api, pool, alice)

    r = api.delete(f"/api/llm/sessions/{sid}")
    assert r.status_code == 200
    body = r.get_json()
    assert list(body)[0] == "success" and body["success"] is True
    assert body["deleted"] == {**before, "chat_sessions": 1}
    assert session_row(pool, alice.id, sid) is None
    assert thread_row_counts(pool, alice.thread_id(sid)) == NO_ROWS
    # the user's other session is untouched
    assert thread_row_counts(pool, alice.thread_id(other_sid)) == other_before
    assert session_row(pool, alice.id, other_sid) is not None

    assert api.get(f"/api/llm/sessions/{sid}").status_code == 404
    assert api.delete(f"/api/llm/sessions/{sid}").status_code == 404


def test_delete_writes_an_audit_row_without_content(api, pool, alice):
    sid, before = make_session_with_history(api, pool, alice)
    api.delete(f"/api/llm/sessions/{sid}")
    [audit] = audit_rows(pool, alice.id, sid)
    assert audit["thread_id"] == alice.thread_id(sid)
    assert audit["business_id"] == "biz-1"
    assert audit["had_session_row"] is True and audit["forced"] is False
    assert audit["rows_deleted"] == {**before, "chat_sessions": 1}
    assert "question" not in str(audit)  # no message content


def test_delete_session_without_checkpoints(api, pool, alice):
    sid = api.post("/api/llm/sessions", json={}).get_json()["session_id"]
    r = api.delete(f"/api/llm/sessions/{sid}")
    assert r.status_code == 200
    assert r.get_json()["deleted"] == {**NO_ROWS, "chat_sessions": 1}


def test_delete_local_storage_only_session_clears_its_checkpoints(api, pool, alice):
    # The browser made the id and chatted; no chat_sessions row was ever written.
    sid = unique_session_id()
    before = seed_thread(pool, alice.thread_id(sid), turns=2)
    r = api.delete(f"/api/llm/sessions/{sid}")
    assert r.status_code == 200
    assert r.get_json()["deleted"] == {**before, "chat_sessions": 0}
    assert thread_row_counts(pool, alice.thread_id(sid)) == NO_ROWS
    [audit] = audit_rows(pool, alice.id, sid)
    assert audit["had_session_row"] is False


def test_delete_nothing_under_that_id_is_404_and_audits_nothing(api, pool, alice):
    r = api.delete("/api/llm/sessions/never-existed")
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"
    assert audit_rows(pool, alice.id, "never-existed") == []


def test_delete_rejects_invalid_id(api):
    r = api.delete("/api/llm/sessions/bad'id")
    assert r.status_code == 400


def test_cannot_delete_another_users_session(app, api, bob_api, pool, alice, bob):
    sid, before = make_session_with_history(api, pool, alice)
    row_before = session_row(pool, alice.id, sid)

    r = bob_api.delete(f"/api/llm/sessions/{sid}")
    assert r.status_code == 404
    assert r.get_json() == api.delete("/api/llm/sessions/no-such-session").get_json()
    assert session_row(pool, alice.id, sid) == row_before
    assert thread_row_counts(pool, alice.thread_id(sid)) == before
    assert audit_rows(pool, bob.id, sid) == []


def test_cannot_delete_another_users_local_storage_thread(api, bob_api, pool, alice, bob):
    # Alice's thread exists only in the checkpoint tables; Bob names the same id.
    sid = unique_session_id()
    before = seed_thread(pool, alice.thread_id(sid), turns=1)
    assert bob_api.delete(f"/api/llm/sessions/{sid}").status_code == 404
    assert thread_row_counts(pool, alice.thread_id(sid)) == before


def test_same_session_id_for_two_users_is_two_sessions(api, bob_api, pool, alice, bob):
    sid = unique_session_id()
    assert api.post("/api/llm/sessions", json={"session_id": sid, "session_name": "Alice's"}).status_code == 201
    assert bob_api.post("/api/llm/sessions", json={"session_id": sid, "session_name": "Bob's"}).status_code == 201
    seed_thread(pool, alice.thread_id(sid), 1)
    bob_before = seed_thread(pool, bob.thread_id(sid), 1)

    assert api.delete(f"/api/llm/sessions/{sid}").status_code == 200
    assert bob_api.get(f"/api/llm/sessions/{sid}").get_json()["data"]["session_name"] == "Bob's"
    assert thread_row_counts(pool, bob.thread_id(sid)) == bob_before


@pytest.mark.parametrize(
    "table, event",
    [
        # fails after the checkpoint rows are already deleted in the transaction
        ("chat_sessions", "delete"),
        # fails at the very last statement
        ("session_deletions", "insert"),
    ],
)
def test_delete_failing_half_way_changes_nothing(api, pool, alice, table, event):
    sid = "fail-" + unique_session_id()
    api.post("/api/llm/sessions", json={"session_id": sid})
    before_counts = seed_thread(pool, alice.thread_id(sid), turns=2)
    before_row = session_row(pool, alice.id, sid)

    with failing_trigger(pool, table, event, "fail-"):
        r = api.delete(f"/api/llm/sessions/{sid}")
    assert r.status_code == 500
    assert r.get_json() == {
        "success": False,
        "error": {"code": "internal_error", "message": "Something went wrong on our side"},
    }
    assert "injected" not in r.get_data(as_text=True)  # no internals to the client
    assert thread_row_counts(pool, alice.thread_id(sid)) == before_counts
    assert session_row(pool, alice.id, sid) == before_row
    assert audit_rows(pool, alice.id, sid) == []

    # and once the fault is gone, the same delete goes through whole
    r = api.delete(f"/api/llm/sessions/{sid}")
    assert r.status_code == 200 and r.get_json()["deleted"] == {**before_counts, "chat_sessions": 1}


def test_concurrent_deletes_of_one_session_delete_it_once(app, pool, alice):
    api = client_for(app, alice)
    sid, before = make_session_with_history(api, pool, alice)
    results: list[int] = []
    start = threading.Barrier(4)

    def delete():
        client = client_for(app, alice)
        start.wait()
        results.append(client.delete(f"/api/llm/sessions/{sid}").status_code)

    threads = [threading.Thread(target=delete) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200, 404, 404, 404]
    assert len(audit_rows(pool, alice.id, sid)) == 1
    assert thread_row_counts(pool, alice.thread_id(sid)) == NO_ROWS

"""Deletes you can undo: DELETE ?backup=true keeps a recovery point, POST /restore puts it all back."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from backend.services import services_of
from tests.chat_support import named_session, turn
from tests.checkpoints import NO_ROWS, rows_digest, thread_row_counts
from tests.helpers import client_for, installed_trigger

THREAD_TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")


def thread_digest(pool, thread_id: str) -> dict:
    with pool.connection() as conn:
        return {t: rows_digest(conn, f"select * from {t} where thread_id = %s", thread_id) for t in THREAD_TABLES}


def everything_digest(pool, user_id: str) -> dict:
    """Every row a restore or a delete could touch for this user: equal digests, nothing changed."""
    with pool.connection() as conn:
        return {
            "sessions": rows_digest(conn, "select * from chat_sessions where user_id = %s", user_id),
            "backups": rows_digest(conn, "select * from session_backups where user_id = %s", user_id),
            "backup_rows": rows_digest(conn, "select r.* from session_backup_rows r join session_backups b "
                                             "using (backup_id) where b.user_id = %s", user_id),
            "audit": rows_digest(conn, "select * from session_deletions where user_id = %s", user_id),
            "threads": rows_digest(conn, "select thread_id, count(*) from checkpoints where thread_id like %s "
                                         "group by thread_id", f"user_{user_id}_%"),
        }


def delete_with_backup(client, sid: str) -> dict:
    r = client.delete(f"/api/llm/sessions/{sid}?backup=true")
    assert r.status_code == 200, r.get_json()
    return r.get_json()


@pytest.mark.parametrize("turns", [1, 10, 200])
def test_undo_round_trip_brings_back_messages_counts_name_and_memory(chat, fake, alice, pool, turns):
    sid = named_session(chat, f"Undo {turns}")
    for i in range(turns):
        assert turn(chat, sid, f"question {i}")[-1].event == "done"
    chat.put(f"/api/llm/sessions/{sid}", json={"is_archived": True})
    before = chat.get(f"/api/llm/sessions/{sid}?include_messages=true&messages_limit=1000").get_json()
    rows_before = thread_digest(pool, alice.thread_id(sid))

    body = delete_with_backup(chat, sid)
    assert body["deleted"]["chat_sessions"] == 1 and body["deleted"]["checkpoints"] >= 1
    assert set(body["backup"]) == {"backup_id", "expires_at"}
    assert thread_row_counts(pool, alice.thread_id(sid)) == NO_ROWS  # the delete itself left nothing
    assert chat.get(f"/api/llm/sessions/{sid}").status_code == 404

    restored = chat.post("/api/llm/sessions/restore", json={"backup_id": body["backup"]["backup_id"]})
    assert restored.status_code == 201, restored.get_json()
    assert restored.get_json()["data"] == before["data"]  # same ids, name, archive flag, counts, timestamps
    after = chat.get(f"/api/llm/sessions/{sid}?include_messages=true&messages_limit=1000").get_json()
    assert after == before
    assert len(after["messages"]) == 2 * turns
    assert thread_digest(pool, alice.thread_id(sid)) == rows_before  # byte for byte

    # The next turn continues the same memory.
    chat.put(f"/api/llm/sessions/{sid}", json={"is_archived": False})
    assert turn(chat, sid, "after the restore")[-1].data["message_count"] == 2 * turns + 2
    sent = fake.chat_requests[-1].json["messages"]
    assert [m["content"] for m in sent if m["role"] == "user"][-2:] == [f"question {turns - 1}", "after the restore"]
    assert len([m for m in sent if m["role"] == "user"]) == turns + 1

    with pool.connection() as conn:
        actions = [r["action"] for r in conn.execute(
            "select action from session_deletions where user_id = %s and session_id = %s order by id",
            (alice.id, sid))]
        assert actions == ["delete", "restore"]
        assert conn.execute("select count(*) as n from session_backups where user_id = %s and session_id = %s",
                            (alice.id, sid)).fetchone()["n"] == 0  # consumed


def test_a_plain_delete_keeps_nothing(chat, alice, pool):
    sid = named_session(chat)
    turn(chat, sid, "hello")
    r = chat.delete(f"/api/llm/sessions/{sid}")
    assert r.status_code == 200 and "backup" not in r.get_json()
    with pool.connection() as conn:
        assert conn.execute("select count(*) as n from session_backups where session_id = %s", (sid,)).fetchone()["n"] == 0


def test_restore_refusals_change_nothing(chat_app, chat, alice, bob, pool):
    sid = named_session(chat)
    turn(chat, sid, "hello")
    backup_id = delete_with_backup(chat, sid)["backup"]["backup_id"]
    bob_client = client_for(chat_app, bob)
    before = everything_digest(pool, alice.id)

    for client, body, status, code in [
        (bob_client, {"backup_id": backup_id}, 404, "not_found"),  # another user's
        (chat, {"backup_id": str(uuid.uuid4())}, 404, "not_found"),  # unknown
        (chat, {"backup_id": "not-a-uuid"}, 400, "validation_error"),
        (chat, {}, 400, "validation_error"),
        (chat, {"backup_id": backup_id, "extra": 1}, 400, "validation_error"),
    ]:
        r = client.post("/api/llm/sessions/restore", json=body)
        assert (r.status_code, r.get_json()["error"]["code"]) == (status, code), r.get_json()
    assert everything_digest(pool, alice.id) == before

    # The id was taken again meanwhile: 409, and the new session is untouched.
    assert chat.post("/api/llm/sessions", json={"session_id": sid, "session_name": "new one"}).status_code == 201
    before = everything_digest(pool, alice.id)
    r = chat.post("/api/llm/sessions/restore", json={"backup_id": backup_id})
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "session_exists"
    assert everything_digest(pool, alice.id) == before


def test_a_recovery_point_works_once_and_not_after_it_expires(chat, alice, pool):
    sid = named_session(chat)
    turn(chat, sid, "hello")
    first = delete_with_backup(chat, sid)["backup"]["backup_id"]
    assert chat.post("/api/llm/sessions/restore", json={"backup_id": first}).status_code == 201
    again = chat.post("/api/llm/sessions/restore", json={"backup_id": first})
    assert again.status_code == 404  # consumed

    second = delete_with_backup(chat, sid)["backup"]["backup_id"]
    with pool.connection() as conn:  # its retention has run out
        conn.execute("update session_backups set expires_at = now() - interval '1 second' where backup_id = %s",
                     (second,))
    assert chat.post("/api/llm/sessions/restore", json={"backup_id": second}).status_code == 404
    state = services_of(chat.application)
    assert state.sessions.purge_expired_recovery_points() >= 1
    with pool.connection() as conn:
        assert conn.execute("select count(*) as n from session_backup_rows where backup_id = %s",
                            (second,)).fetchone()["n"] == 0


def test_a_failure_inside_a_delete_with_backup_leaves_the_session_whole(chat, alice, pool):
    sid = named_session(chat)
    turn(chat, sid, "hello")
    before = everything_digest(pool, alice.id)
    with installed_trigger(pool, "test_fail_backup_rows", "session_backup_rows", "insert",
                           when="row.table_name = 'checkpoint_blobs'", then="raise exception 'injected failure'"):
        r = chat.delete(f"/api/llm/sessions/{sid}?backup=true")
    assert r.status_code == 500 and r.get_json()["error"]["code"] == "internal_error"
    assert everything_digest(pool, alice.id) == before
    assert chat.get(f"/api/llm/sessions/{sid}?include_messages=true").get_json()["messages"][0]["content"] == "hello"


def test_a_failure_inside_a_restore_restores_nothing(chat, alice, pool):
    sid = named_session(chat)
    turn(chat, sid, "hello")
    backup_id = delete_with_backup(chat, sid)["backup"]["backup_id"]
    before = everything_digest(pool, alice.id)
    with installed_trigger(pool, "test_fail_restore_writes", "checkpoint_blobs", "insert",
                           when=f"row.thread_id = '{alice.thread_id(sid)}'", then="raise exception 'injected failure'"):
        r = chat.post("/api/llm/sessions/restore", json={"backup_id": backup_id})
    assert r.status_code == 500
    assert everything_digest(pool, alice.id) == before  # no session, the recovery point still there
    assert chat.post("/api/llm/sessions/restore", json={"backup_id": backup_id}).status_code == 201


def test_recovery_points_are_closed_to_supabase_roles(pool):
    with pool.connection() as conn:
        for table in ("session_backups", "session_backup_rows"):
            assert conn.execute("select relrowsecurity as rls from pg_class where relname = %s",
                                (table,)).fetchone()["rls"]
            assert conn.execute("select count(*) as n from pg_policies where tablename = %s",
                                (table,)).fetchone()["n"] == 0
    with pytest.raises(psycopg.errors.CheckViolation):
        with pool.connection() as conn:
            conn.execute("insert into session_deletions (user_id, business_id, session_id, thread_id, "
                         "had_session_row, rows_deleted, action) values ('u', 'b', 's', 't', true, '{}', 'other')")

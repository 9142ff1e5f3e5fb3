"""Export a conversation as a document, import it as a new session whose memory the next turn continues."""

from __future__ import annotations

import json

import pytest

from tests.chat_support import named_session, turn
from tests.checkpoints import NO_ROWS, rows_digest, thread_row_counts
from tests.helpers import client_for, installed_trigger, unique_session_id


def user_rows_digest(pool, user_id: str) -> dict:
    with pool.connection() as conn:
        return {
            "sessions": rows_digest(conn, "select * from chat_sessions where user_id = %s", user_id),
            "checkpoints": rows_digest(conn, "select thread_id, checkpoint_id from checkpoints where thread_id like %s",
                                       f"user_{user_id}_%"),
            "blobs": rows_digest(conn, "select thread_id, channel, version from checkpoint_blobs where thread_id like %s",
                                 f"user_{user_id}_%"),
        }


def document(messages, **session) -> dict:
    return {"format": "chat-session/v1", "session": session, "messages": messages}


def test_export_is_the_users_own_view_as_an_attachment(chat, alice):
    sid = named_session(chat, "Exported")
    turn(chat, sid, "first question")
    r = chat.get(f"/api/llm/sessions/{sid}/export")
    assert r.status_code == 200
    assert r.headers["Content-Disposition"] == f'attachment; filename="{sid}.json"'
    doc = r.get_json()
    assert doc["format"] == "chat-session/v2"  # every branch (tests/test_branch_lifecycle.py); ?format=v1: the path
    assert doc["active_message_id"] == doc["messages"][-1]["id"]
    assert chat.get(f"/api/llm/sessions/{sid}/export?format=v1").get_json()["format"] == "chat-session/v1"
    assert set(doc["session"]) == {"session_id", "session_name", "is_archived", "message_count", "created_at",
                                   "updated_at", "last_message_at", "usage"}  # usage: tests/test_usage.py
    assert doc["session"]["session_name"] == "Exported" and doc["session"]["message_count"] == 2
    assert [(m["role"], m["content"]) for m in doc["messages"]] == [
        ("user", "first question"), ("assistant", "Echo: first question")]
    assert alice.id not in json.dumps(doc)  # no internal ids: the thread id carries the user's


def test_export_of_someone_elses_session_is_404(chat_app, chat, bob):
    sid = named_session(chat)
    assert client_for(chat_app, bob).get(f"/api/llm/sessions/{sid}/export").status_code == 404


def test_import_of_an_export_continues_the_conversation(chat, fake, alice, pool):
    sid = named_session(chat, "Original")
    for q in ("one", "two", "three"):
        turn(chat, sid, q)
    exported = chat.get(f"/api/llm/sessions/{sid}/export").get_json()
    copy_id = unique_session_id()
    r = chat.post("/api/llm/sessions/import", json={**exported, "session_id": copy_id})
    assert r.status_code == 201, r.get_json()
    data = r.get_json()["data"]
    assert data["session_id"] == copy_id and data["session_name"] == "Original" and data["message_count"] == 6
    copied = chat.get(f"/api/llm/sessions/{copy_id}?include_messages=true").get_json()["messages"]
    shown = ("id", "parent_id", "role", "content", "created_at")
    assert [{k: m[k] for k in shown} for m in copied] == [{k: m[k] for k in shown} for m in exported["messages"]]
    assert turn(chat, copy_id, "four")[-1].data["message_count"] == 8
    sent = [m["content"] for m in fake.chat_requests[-1].json["messages"] if m["role"] == "user"]
    assert sent == ["one", "two", "three", "four"]  # the model saw the imported memory
    # A user-given name stays; no naming request for it.
    assert chat.get(f"/api/llm/sessions/{copy_id}").get_json()["data"]["session_name"] == "Original"


def test_import_without_a_name_or_id_gets_defaults(chat):
    r = chat.post("/api/llm/sessions/import", json=document([{"role": "user", "content": "hi"}]))
    assert r.status_code == 201
    data = r.get_json()["data"]
    assert data["session_id"].startswith("chat-") and data["session_name"] == "New Chat" and data["message_count"] == 1


@pytest.mark.parametrize("body, field", [
    ({"format": "chat-session/v3", "messages": [{"role": "user", "content": "x"}]}, "format"),
    ({"messages": [{"role": "user", "content": "x"}]}, "format"),
    (document([{"role": "system", "content": "x"}]), "messages.0.role"),
    (document([{"role": "tool", "content": "x"}]), "messages.0.role"),
    (document([{"role": "user", "content": ""}]), "messages.0.content"),
    (document([{"role": "user", "content": "   "}]), "messages.0.content"),
    (document([{"role": "user", "content": "x" * 32_001}]), "messages.0.content"),
    (document([{"role": "user", "content": "a\x00b"}]), "messages.0.content"),
    (document([{"role": "user", "content": "x", "extra": 1}]), "messages.0.extra"),
    (document([]), "messages"),
    (document([{"role": "user", "content": "x"}], session_id="../x"), "session.session_id"),
    (document([{"role": "user", "content": "x"}], session_name="\u202eevil"), "session.session_name"),
    ({**document([{"role": "user", "content": "x"}]), "session_id": ".."}, "session_id"),
])
def test_bad_documents_are_400_with_fields_and_write_nothing(chat, alice, pool, body, field):
    before = user_rows_digest(pool, alice.id)
    r = chat.post("/api/llm/sessions/import", json=body)
    assert r.status_code == 400, r.get_json()
    error = r.get_json()["error"]
    assert error["code"] == "validation_error" and field in error["fields"], error
    assert user_rows_digest(pool, alice.id) == before


def test_too_many_messages_is_400_and_too_many_bytes_413(make_app, alice, pool):
    app = make_app(import_max_messages=3, max_request_bytes=4096)
    client = client_for(app, alice)
    before = user_rows_digest(pool, alice.id)
    r = client.post("/api/llm/sessions/import", json=document([{"role": "user", "content": "x"}] * 4))
    assert r.status_code == 400 and "messages" in r.get_json()["error"]["fields"]
    r = client.post("/api/llm/sessions/import", json=document([{"role": "user", "content": "x" * 5000}]))
    assert r.status_code == 413 and r.get_json()["error"]["code"] == "payload_too_large"
    assert user_rows_digest(pool, alice.id) == before


def test_importing_over_an_existing_id_is_409_and_changes_nothing(chat, alice, pool):
    sid = named_session(chat, "Here first")
    turn(chat, sid, "keep me")
    before = user_rows_digest(pool, alice.id)
    r = chat.post("/api/llm/sessions/import", json=document([{"role": "user", "content": "x"}], session_id=sid))
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "session_exists"
    assert user_rows_digest(pool, alice.id) == before


def test_a_failure_inside_an_import_writes_nothing(chat, alice, pool):
    sid = unique_session_id()
    before = user_rows_digest(pool, alice.id)
    with installed_trigger(pool, "test_fail_import_blobs", "checkpoint_blobs", "insert",
                           when=f"row.thread_id = '{alice.thread_id(sid)}'", then="raise exception 'injected failure'"):
        r = chat.post("/api/llm/sessions/import",
                      json=document([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
                                    session_id=sid))
    assert r.status_code == 500
    assert user_rows_digest(pool, alice.id) == before
    assert thread_row_counts(pool, alice.thread_id(sid)) == NO_ROWS
    assert chat.get(f"/api/llm/sessions/{sid}").status_code == 404


def test_an_import_past_either_history_cap_is_400_and_writes_nothing(make_app, alice, pool):
    # What a session may hold (CHAT_HISTORY_MAX_MESSAGES, CHAT_HISTORY_MAX_BYTES) binds an import too:
    # else one import makes a session no turn could, and every read of it decodes all of it.
    app = make_app(chat_history_max_messages=4, chat_history_max_bytes=1024)
    client = client_for(app, alice)
    before = user_rows_digest(pool, alice.id)
    for messages in ([{"role": "user", "content": "x"}] * 5,  # one message past the cap
                     [{"role": "user", "content": "é" * 300}, {"role": "assistant", "content": "x" * 425}]):  # 1,025 bytes
        r = client.post("/api/llm/sessions/import", json=document(messages, session_id="too-big"))
        assert r.status_code == 400, r.get_json()
        error = r.get_json()["error"]
        assert error["code"] == "validation_error" and "messages" in error["fields"], error
        assert user_rows_digest(pool, alice.id) == before
        assert thread_row_counts(pool, alice.thread_id("too-big")) == NO_ROWS
    # At the caps exactly, as a session may hold: accepted (and full: it takes no turn).
    at_caps = [{"role": "user", "content": "é" * 300}, {"role": "assistant", "content": "x" * 424}]
    assert client.post("/api/llm/sessions/import", json=document(at_caps)).status_code == 201
    assert client.post("/api/llm/sessions/import", json=document([{"role": "user", "content": "x"}] * 4)).status_code == 201


@pytest.mark.parametrize("stamp", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59"])
def test_an_import_with_a_date_past_what_utc_can_hold_is_400_and_writes_nothing(chat, alice, pool, stamp):
    # In UTC the first is in year 10,000 and the second in year 0: no datetime holds them, and once
    # stored every read and export of the session failed (answered 503 rate_limit_unavailable).
    before = user_rows_digest(pool, alice.id)
    r = chat.post("/api/llm/sessions/import", json=document(
        [{"role": "user", "content": "x", "created_at": "2026-01-01T00:00:00Z"},
         {"role": "assistant", "content": "y", "created_at": stamp}], session_id="far-future"))
    assert r.status_code == 400, r.get_json()
    error = r.get_json()["error"]
    assert error["code"] == "validation_error" and "messages.1.created_at" in error["fields"], error
    assert user_rows_digest(pool, alice.id) == before
    assert thread_row_counts(pool, alice.thread_id("far-future")) == NO_ROWS
    # The latest and earliest dates UTC can hold still import, and read back.
    edges = [{"role": "user", "content": "x", "created_at": "9999-12-31T23:59:59.999999+00:00"},
             {"role": "assistant", "content": "y", "created_at": "0001-01-01T00:00:00Z"}]
    assert chat.post("/api/llm/sessions/import", json=document(edges, session_id="edges")).status_code == 201
    assert [m["created_at"] for m in chat.get("/api/llm/sessions/edges/export").get_json()["messages"]] == [
        "9999-12-31T23:59:59.999999Z", "0001-01-01T00:00:00Z"]


def test_a_session_stored_with_such_a_date_before_the_check_still_reads(chat_app, chat, alice):
    # As an import made before the check left it: the message's time is shown as unknown (null).
    from datetime import datetime

    from backend.auth.service import AuthUser
    from backend.services import services_of

    services_of(chat_app).importer.import_session(
        AuthUser(id=alice.id, business_id=alice.business_id, email=None, via="token"),
        session_id="stored-far-future", session_name=None, is_archived=False,
        messages=[{"role": "user", "content": "x", "created_at": datetime.fromisoformat("9999-12-31T23:59:59-23:59")}])
    r = chat.get("/api/llm/sessions/stored-far-future?include_messages=true")
    assert r.status_code == 200
    assert [(m["content"], m["created_at"]) for m in r.get_json()["messages"]] == [("x", None)]
    assert chat.get("/api/llm/sessions/stored-far-future/export").status_code == 200

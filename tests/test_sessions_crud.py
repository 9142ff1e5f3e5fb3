"""Create, list, get and update sessions: the frontend's contract."""

from __future__ import annotations

import re
from datetime import datetime

import pytest

from tests.helpers import unique_session_id

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
SESSION_KEYS = {
    "session_id", "thread_id", "session_name", "is_archived",
    "message_count", "created_at", "updated_at", "last_message_at", "has_unread",
}


def create(api, **body):
    return api.post("/api/llm/sessions", json=body)


# --- create ---------------------------------------------------------------

def test_create_generates_id_and_thread_id(api, alice):
    r = create(api)
    assert r.status_code == 201
    body = r.get_json()
    assert list(body)[0] == "success" and body["success"] is True
    sid = body["session_id"]
    assert re.fullmatch(r"chat-\d{13}-[a-z0-9]{10}", sid)
    assert body["thread_id"] == alice.thread_id(sid)
    data = body["data"]
    assert set(data) == SESSION_KEYS
    assert data["session_name"] == "New Chat"
    assert data["is_archived"] is False and data["message_count"] == 0
    assert data["last_message_at"] is None
    assert ISO_UTC.match(data["created_at"]) and ISO_UTC.match(data["updated_at"])


def test_create_with_id_and_trimmed_name(api, alice):
    sid = unique_session_id()
    r = create(api, session_id=sid, session_name="  Highland valuation  ")
    assert r.status_code == 201
    assert r.get_json()["data"]["session_name"] == "Highland valuation"
    assert r.get_json()["thread_id"] == f"user_{alice.id}_business_biz-1_session_{sid}"


def test_create_existing_id_returns_it_unchanged(api):
    sid = unique_session_id()
    first = create(api, session_id=sid, session_name="Original").get_json()["data"]
    again = create(api, session_id=sid, session_name="Different")
    assert again.status_code == 200
    assert again.get_json()["data"] == first


def test_create_without_body_or_content_type(api):
    # fetch() without headers sends no Content-Type; an empty body is an empty object.
    r = api.post("/api/llm/sessions", data="")
    assert r.status_code == 201
    r = api.post("/api/llm/sessions", data='{"session_name": "plain text body"}', content_type="text/plain")
    assert r.status_code == 201 and r.get_json()["data"]["session_name"] == "plain text body"


@pytest.mark.parametrize(
    "session_id",
    ["", "has space", "slash/inside", "x" * 129, "semi;colon", "quote'", "émoji😀", "new\nline"],
)
def test_create_rejects_bad_ids(api, session_id):
    r = create(api, session_id=session_id)
    assert r.status_code == 400
    err = r.get_json()["error"]
    assert err["code"] == "validation_error" and "session_id" in err["fields"]


def test_create_accepts_every_allowed_id_character(api):
    sid = "Az09_.:-" + unique_session_id()
    assert create(api, session_id=sid).status_code == 201
    assert create(api, session_id="x" * 128).status_code in (200, 201)


@pytest.mark.parametrize(
    "name, reason",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("x" * 201, "200"),
        ("tab\there", "control"),
        ("nul\x00byte", "control"),
        ("evil\u202eoverride", "bidirectional"),
    ],
)
def test_create_rejects_bad_names(api, name, reason):
    r = create(api, session_name=name)
    assert r.status_code == 400
    assert reason in r.get_json()["error"]["fields"]["session_name"]


@pytest.mark.parametrize("body", [{"session_name": None}, {"session_id": None}, {"session_name": 5}, {"session_name": ["a"]}, {"session_name": {"a": 1}}])
def test_create_rejects_wrong_types_and_nulls(api, body):
    r = create(api, **body)
    assert r.status_code == 400
    assert set(r.get_json()["error"]["fields"]) == set(body)


def test_create_accepts_unicode_names(api):
    for name in ["Évaluation du bien", "日本語のチャット", "Rocket 🚀 plans", "\u200fשלום"]:
        r = create(api, session_name=name)
        assert r.status_code == 201 and r.get_json()["data"]["session_name"] == name


def test_create_rejects_unknown_and_server_fields(api):
    r = create(api, message_count=3)
    assert r.status_code == 400
    assert "maintained by the server" in r.get_json()["error"]["fields"]["message_count"]
    r = create(api, colour="red")
    assert r.get_json()["error"]["fields"] == {"colour": "colour is not a known field"}


# --- list -----------------------------------------------------------------

def test_list_newest_activity_first_and_hides_archived(api, pool, alice):
    ids = [create(api, session_id=unique_session_id()).get_json()["session_id"] for _ in range(3)]
    api.put(f"/api/llm/sessions/{ids[1]}", json={"is_archived": True})
    # a message in the oldest session makes it the most recently active
    with pool.connection() as conn:
        conn.execute("select increment_session_message_count(%s, %s, 2)", (alice.id, ids[0]))

    body = api.get("/api/llm/sessions").get_json()
    assert [s["session_id"] for s in body["data"]] == [ids[0], ids[2]]
    assert body["count"] == 2 and body["total"] == 2
    assert body["limit"] == 50 and body["offset"] == 0 and body["next_cursor"] is None

    body = api.get("/api/llm/sessions?include_archived=true").get_json()
    assert [s["session_id"] for s in body["data"]] == [ids[0], ids[2], ids[1]]
    assert body["total"] == 3


def test_list_pages_by_offset_and_by_cursor(api):
    ids = [create(api, session_id=f"page-{i:02d}").get_json()["session_id"] for i in range(7)]
    newest_first = list(reversed(ids))

    first = api.get("/api/llm/sessions?limit=3").get_json()
    assert [s["session_id"] for s in first["data"]] == newest_first[:3]
    assert first["count"] == 3 and first["total"] == 7 and first["next_cursor"]

    second = api.get(f"/api/llm/sessions?limit=3&cursor={first['next_cursor']}").get_json()
    assert [s["session_id"] for s in second["data"]] == newest_first[3:6]
    third = api.get(f"/api/llm/sessions?limit=3&cursor={second['next_cursor']}").get_json()
    assert [s["session_id"] for s in third["data"]] == newest_first[6:]
    assert third["next_cursor"] is None

    by_offset = api.get("/api/llm/sessions?limit=3&offset=3").get_json()
    assert [s["session_id"] for s in by_offset["data"]] == newest_first[3:6]
    beyond = api.get("/api/llm/sessions?offset=100").get_json()
    assert beyond["data"] == [] and beyond["count"] == 0 and beyond["total"] == 7


def test_list_cursor_survives_ties_in_activity_time(api, pool, alice):
    # Rows created in one transaction share now(): the id breaks the tie.
    with pool.connection() as conn, conn.transaction():
        for i in range(5):
            conn.execute(
                "insert into chat_sessions (user_id, business_id, session_id, thread_id) values (%s, 'biz-1', %s, %s)",
                (alice.id, f"tie-{i}", alice.thread_id(f"tie-{i}")),
            )
    seen, cursor = [], None
    while True:
        url = "/api/llm/sessions?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = api.get(url).get_json()
        seen += [s["session_id"] for s in page["data"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == [f"tie-{i}" for i in range(5)] and len(seen) == 5


@pytest.mark.parametrize(
    "query, field",
    [
        ("limit=0", "limit"), ("limit=201", "limit"), ("limit=-1", "limit"), ("limit=abc", "limit"),
        ("limit=99999999999999999999999", "limit"), ("offset=-1", "offset"), ("offset=x", "offset"),
        ("offset=99999999999999999999", "offset"), ("include_archived=maybe", "include_archived"),
        ("cursor=not-a-cursor", "cursor"), ("cursor=W10", "cursor"),
        # ["2026-01-01T00:00:00+00:00", 10**30]: well-formed, but no bigint
        ("cursor=WyIyMDI2LTAxLTAxVDAwOjAwOjAwKzAwOjAwIiwgMTAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMF0", "cursor"),
    ],
)
def test_list_rejects_bad_parameters(api, query, field):
    r = api.get(f"/api/llm/sessions?{query}")
    assert r.status_code == 400
    assert field in r.get_json()["error"]["fields"]


def test_list_rejects_cursor_with_offset(api):
    create(api)
    create(api)
    cursor = api.get("/api/llm/sessions?limit=1").get_json()["next_cursor"]
    r = api.get(f"/api/llm/sessions?limit=1&offset=1&cursor={cursor}")
    assert r.status_code == 400 and "cursor" in r.get_json()["error"]["fields"]


def test_list_limit_bounds_are_inclusive(api):
    assert api.get("/api/llm/sessions?limit=1").status_code == 200
    assert api.get("/api/llm/sessions?limit=200").status_code == 200


# --- get ------------------------------------------------------------------

def test_get_session(api):
    created = create(api, session_name="Get me").get_json()
    r = api.get(f"/api/llm/sessions/{created['session_id']}")
    assert r.status_code == 200
    body = r.get_json()
    assert body == {"success": True, "data": created["data"]}
    assert "messages" not in body


def test_get_session_with_messages_of_a_new_session(api):
    sid = create(api).get_json()["session_id"]
    body = api.get(f"/api/llm/sessions/{sid}?include_messages=true").get_json()
    assert body["messages"] == []


def test_get_unknown_and_invalid_ids(api):
    r = api.get("/api/llm/sessions/never-made")
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"
    r = api.get("/api/llm/sessions/bad%20id")
    assert r.status_code == 400 and "session_id" in r.get_json()["error"]["fields"]


# --- update ---------------------------------------------------------------

def test_rename_and_archive(api):
    created = create(api).get_json()["data"]
    sid = created["session_id"]
    r = api.put(f"/api/llm/sessions/{sid}", json={"session_name": "  Highland Property Valuation "})
    assert r.status_code == 200
    renamed = r.get_json()["data"]
    assert renamed["session_name"] == "Highland Property Valuation"
    assert renamed["is_archived"] is False
    assert datetime.fromisoformat(renamed["updated_at"]) >= datetime.fromisoformat(created["updated_at"])

    archived = api.put(f"/api/llm/sessions/{sid}", json={"is_archived": True}).get_json()["data"]
    assert archived["is_archived"] is True and archived["session_name"] == "Highland Property Valuation"
    both = api.put(f"/api/llm/sessions/{sid}", json={"is_archived": False, "session_name": "Back"}).get_json()["data"]
    assert both["is_archived"] is False and both["session_name"] == "Back"


def test_a_change_written_after_another_commits_has_the_later_updated_at(api, pool):
    """updated_at is when the row version was written (sql/019), not when its transaction began: of two
    versions of a session, the later committed one is the newer, so a client keeps the right one."""
    sid = create(api).get_json()["session_id"]
    rename = "update chat_sessions set session_name = %s where session_id = %s returning updated_at"
    with pool.connection() as early, pool.connection() as late:
        with early.transaction():
            early.execute("select 1")  # begun first
            with late.transaction():
                first = late.execute(rename, ("first", sid)).fetchone()["updated_at"]
            second = early.execute(rename, ("second", sid)).fetchone()["updated_at"]
    assert second > first
    got = api.get(f"/api/llm/sessions/{sid}").get_json()["data"]
    assert got["session_name"] == "second" and datetime.fromisoformat(got["updated_at"]) == second


def test_update_refuses_message_count(api):
    sid = create(api).get_json()["session_id"]
    r = api.put(f"/api/llm/sessions/{sid}", json={"session_name": "x", "message_count": 99})
    assert r.status_code == 400
    err = r.get_json()["error"]
    assert err["fields"]["message_count"] == "message_count is maintained by the server and cannot be set"
    assert "message_count" in err["message"]
    assert api.get(f"/api/llm/sessions/{sid}").get_json()["data"]["session_name"] == "New Chat"


@pytest.mark.parametrize(
    "body", [{}, {"is_archived": "yes"}, {"is_archived": 1}, {"is_archived": None}, {"session_name": None}, {"session_name": ""}],
)
def test_update_rejects_bad_bodies(api, body):
    sid = create(api).get_json()["session_id"]
    before = api.get(f"/api/llm/sessions/{sid}").get_json()["data"]
    r = api.put(f"/api/llm/sessions/{sid}", json=body)
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "validation_error"
    assert api.get(f"/api/llm/sessions/{sid}").get_json()["data"] == before


def test_update_unknown_session(api):
    r = api.put("/api/llm/sessions/never-made", json={"session_name": "x"})
    assert r.status_code == 404

"""The lifecycle keeps every branch (issue 28, items 8 and 9): delete leaves nothing of any branch
behind (a scan of every table), backup/restore brings the whole tree back byte for byte, export
writes chat-session/v2 (v1 on request: the active path) and import takes both, whole or not at
all; the caps count every branch; a switch, an edit and a rating are session.updated; the
feedback export; MCP. On a real PostgreSQL, in both history modes, with the fake model."""

from __future__ import annotations

import json
import uuid

import pytest

from backend.events.store import EventStore
from backend.services import services_of
from tests.checkpoints import NO_ROWS, thread_row_counts
from tests.helpers import User, client_for, installed_trigger, unique_session_id
from tests.test_branches import conversation, edit, path_of, regenerate, sent_to_model, stream, switch
from tests.test_export_import import user_rows_digest


@pytest.fixture(scope="module", params=["latest", "full"])
def lifecycle_app(request, module_make_app, fake_model):
    return module_make_app(
        openai_base_url=fake_model.base_url, openai_api_key="test-key", openai_model="fake-chat",
        naming_model="fake-naming", openai_timeout_seconds=2, openai_max_retries=1,
        checkpoint_history=request.param,
    )


@pytest.fixture
def client(lifecycle_app, alice):
    return client_for(lifecycle_app, alice)


@pytest.fixture
def db(lifecycle_app):
    return services_of(lifecycle_app).db.pool


def rate(client, sid: str, message_id: str, rating: str | None, comment: str | None = None):
    response = client.put(f"/api/llm/sessions/{sid}/messages/{message_id}/feedback",
                          json={"rating": rating, **({"comment": comment} if comment else {})})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["data"]


def branched_session(client, marker: str = "", comment_marker: str = "") -> str:
    """q0 a0 q1 a1 q2 a2, then q1 edited (a branch whose reply is rated, then regenerated), then
    back to the first branch (a switch no turn has followed yet), whose a0 is rated too."""
    sid = conversation(client, 3)
    first = path_of(client, sid)
    stream(edit(client, sid, first[2]["id"], f"edited {marker}"))
    edited = path_of(client, sid)
    rate(client, sid, edited[3]["id"], "down", f"wrong {comment_marker}")
    stream(regenerate(client, sid, edited[3]["id"]))
    assert switch(client, sid, first[4]["id"]).status_code == 200
    rate(client, sid, first[1]["id"], "up", "good")
    return sid


def session_row(pool, user_id: str, sid: str) -> dict | None:
    with pool.connection() as conn:
        return conn.execute("select * from chat_sessions where user_id = %s and session_id = %s",
                            (user_id, sid)).fetchone()


def message_rows(pool, row_id: int) -> list[str]:
    """The session's chat_messages rows, each as PostgreSQL writes it out: equal lists, equal bytes."""
    with pool.connection() as conn:
        return [r["m"] for r in conn.execute(
            "select m::text as m from chat_messages m where session_row_id = %s order by message_id", (row_id,))]


def branch_counts_of_rows(pool, row_id: int) -> tuple[int, int]:
    with pool.connection() as conn:
        row = conn.execute("select count(*)::int as n, coalesce(sum(octet_length(content)), 0)::bigint as b "
                           "from chat_messages where session_row_id = %s and not on_path", (row_id,)).fetchone()
    return row["n"], row["b"]


def found_anywhere(pool, *markers: str) -> dict[str, int]:
    """Rows of every table of the database that hold any of the markers: as text, or as UTF-8 inside
    bytes (LangGraph's blobs and writes are msgpack, which PostgreSQL writes out as hex)."""
    needles = [n for m in markers for n in (m, m.encode().hex())]
    found: dict[str, int] = {}
    with pool.connection() as conn:
        tables = [r["t"] for r in conn.execute(
            "select schemaname || '.' || quote_ident(tablename) as t from pg_tables "
            "where schemaname not in ('pg_catalog', 'information_schema')")]
        for table in tables:
            n = conn.execute(f"select count(*) as n from {table} x where exists "
                             f"(select 1 from unnest(%s::text[]) needle where strpos(x::text, needle) > 0)",
                             (needles,)).fetchone()["n"]
            if n:
                found[table] = n
    return found


def tree_of(client, sid: str) -> dict:
    exported = client.get(f"/api/llm/sessions/{sid}/export")
    assert exported.status_code == 200, exported.get_json()
    return exported.get_json()


# --- delete leaves nothing of any branch ------------------------------------------------


def test_a_delete_leaves_nothing_of_any_branch_or_rating(client, db, alice):
    branch, comment = f"branch-{uuid.uuid4().hex}", f"comment-{uuid.uuid4().hex}"
    sid = branched_session(client, branch, comment)
    row = session_row(db, alice.id, sid)
    assert row["branch_messages"] > 0
    before = found_anywhere(db, branch, comment)
    assert before.get("public.chat_messages", 0) >= 3, before  # the edit, its reply, the rating's comment
    assert found_anywhere(db, comment) == {"public.chat_messages": 1}
    assert client.delete(f"/api/llm/sessions/{sid}").status_code == 200
    assert found_anywhere(db, branch, comment) == {}
    assert thread_row_counts(db, alice.thread_id(sid)) == NO_ROWS
    with db.connection() as conn:
        assert conn.execute("select count(*) as n from chat_messages where session_row_id = %s",
                            (row["id"],)).fetchone()["n"] == 0


def test_bulk_delete_and_retention_delete_branched_sessions_whole(client, lifecycle_app, db, alice):
    markers = [f"bulk-{uuid.uuid4().hex}" for _ in range(3)]
    sids = [branched_session(client, m, m) for m in markers]
    bulk = client.post("/api/llm/sessions/bulk-delete", json={"session_ids": sids[:2]})
    assert bulk.status_code == 200 and bulk.get_json()["deleted_count"] == 2
    assert found_anywhere(db, *markers[:2]) == {}
    assert found_anywhere(db, markers[2])  # the third is still whole
    # Retention (flask purge-sessions): the third, once inactive, goes the same way.
    with db.connection() as conn:
        conn.execute("update chat_sessions set created_at = now() - interval '100 days', "
                     "last_message_at = now() - interval '100 days' where user_id = %s and session_id = %s",
                     (alice.id, sids[2]))
    result = lifecycle_app.test_cli_runner().invoke(
        args=["purge-sessions", "--inactive-days", "90", "--user-id", alice.id])
    assert result.exit_code == 0, result.output
    assert session_row(db, alice.id, sids[2]) is None
    assert found_anywhere(db, markers[2]) == {}


# --- backup and restore: the whole tree, byte for byte --------------------------------------


def test_delete_with_backup_then_restore_is_byte_exact(client, db, alice, fake):
    sid = branched_session(client, "kept", "kept too")
    row = session_row(db, alice.id, sid)
    rows_before = message_rows(db, row["id"])
    with db.connection() as conn:
        session_before = conn.execute("select s::text as s from chat_sessions s where id = %s", (row["id"],)
                                      ).fetchone()["s"]
    path_before, tree_before = path_of(client, sid), tree_of(client, sid)
    assert row["switched_to"] is not None and row["branch_messages"] == 3  # the edit and its two replies

    deleted = client.delete(f"/api/llm/sessions/{sid}?backup=true").get_json()
    assert set(deleted["deleted"]) == {"checkpoints", "checkpoint_blobs", "checkpoint_writes", "chat_sessions"}
    with db.connection() as conn:
        kept = conn.execute("select count(*) as n from session_backup_rows where backup_id = %s "
                            "and table_name = 'chat_messages'", (deleted["backup"]["backup_id"],)).fetchone()["n"]
        assert conn.execute("select count(*) as n from chat_messages where session_row_id = %s",
                            (row["id"],)).fetchone()["n"] == 0
    assert kept == len(rows_before)

    restored = client.post("/api/llm/sessions/restore", json={"backup_id": deleted["backup"]["backup_id"]})
    assert restored.status_code == 201, restored.get_json()
    assert message_rows(db, row["id"]) == rows_before  # ratings, places, times: every byte
    with db.connection() as conn:
        assert conn.execute("select s::text as s from chat_sessions s where id = %s", (row["id"],)
                            ).fetchone()["s"] == session_before  # counts not doubled, updated_at unmoved
    assert branch_counts_of_rows(db, row["id"]) == (row["branch_messages"], row["branch_bytes"])
    assert path_of(client, sid) == path_before and tree_of(client, sid) == tree_before
    # The switch no turn had followed still holds: the next turn continues the path shown.
    done = stream(client.post("/api/llm/query/stream", json={"session_id": sid, "query": "next"}))
    assert sent_to_model(fake) == [(m["role"], m["content"]) for m in path_before] + [("user", "next")]
    assert done["message_count"] == len(path_before) + 2


def test_a_recovery_point_from_before_messages_had_rows_restores_as_a_legacy_session(client, db, alice):
    sid = conversation(client, 2)
    path_before = path_of(client, sid)
    backup_id = client.delete(f"/api/llm/sessions/{sid}?backup=true").get_json()["backup"]["backup_id"]
    with db.connection() as conn:  # as a delete made before sql/025 kept it
        conn.execute("delete from session_backup_rows where backup_id = %s and table_name = 'chat_messages'",
                     (backup_id,))
        conn.execute("update session_backups set session_row = session_row - 'branch_messages' - 'branch_bytes' "
                     "- 'switched_to' - 'messages_indexed' where backup_id = %s", (backup_id,))
    assert client.post("/api/llm/sessions/restore", json={"backup_id": backup_id}).status_code == 201
    row = session_row(db, alice.id, sid)
    assert row["messages_indexed"] is False and row["branch_messages"] == 0 and row["branch_bytes"] == 0
    assert path_of(client, sid) == path_before  # indexed from its checkpoint when read, the same ids
    assert session_row(db, alice.id, sid)["messages_indexed"] is True
    assert stream(edit(client, sid, path_before[2]["id"], "edited after"))["message_count"] == 4


# --- export and import ------------------------------------------------------------------


def test_v2_export_then_import_reproduces_the_tree_path_pickers_and_ratings(client, db, alice, fake):
    sid = branched_session(client)
    document = tree_of(client, sid)
    assert document["format"] == "chat-session/v2"
    ids = [m["id"] for m in document["messages"]]
    assert len(ids) == len(set(ids)) == 9  # six, then an edit with its reply, then another reply
    seen: set[str] = set()
    for message in document["messages"]:  # parents before children
        assert message["parent_id"] is None or message["parent_id"] in seen
        seen.add(message["id"])
    path = path_of(client, sid)
    assert document["active_message_id"] == path[-1]["id"]
    rated = {m["id"]: m["feedback"] for m in document["messages"] if m.get("feedback")}
    assert sorted(f["rating"] for f in rated.values()) == ["down", "up"]

    copy = unique_session_id()
    imported = client.post("/api/llm/sessions/import", json={**document, "session_id": copy})
    assert imported.status_code == 201, imported.get_json()
    assert imported.get_json()["data"]["message_count"] == len(path)
    assert path_of(client, copy) == path  # ids, parents, sibling pickers, ratings
    again = tree_of(client, copy)
    assert again["messages"] == document["messages"] and again["active_message_id"] == document["active_message_id"]
    original, copied = session_row(db, alice.id, sid), session_row(db, alice.id, copy)
    for column in ("message_count", "history_bytes", "branch_messages", "branch_bytes"):
        assert copied[column] == original[column], column
    assert copied["messages_indexed"] is True and copied["switched_to"] is None
    # The copy's memory is its active path, and every branch can be switched to.
    stream(client.post("/api/llm/query/stream", json={"session_id": copy, "query": "go on"}))
    assert sent_to_model(fake) == [(m["role"], m["content"]) for m in path] + [("user", "go on")]
    other = next(m for m in document["messages"] if m["content"].startswith("edited"))
    assert switch(client, copy, other["id"]).status_code == 200
    assert [m["content"] for m in path_of(client, copy)][2] == other["content"]


def test_a_v1_export_of_a_branched_session_is_its_path_and_imports_as_a_line(client, db, alice):
    sid = branched_session(client)
    path = path_of(client, sid)
    document = client.get(f"/api/llm/sessions/{sid}/export?format=v1").get_json()
    assert document["format"] == "chat-session/v1" and "active_message_id" not in document
    assert document["messages"] == path
    copy = unique_session_id()
    assert client.post("/api/llm/sessions/import", json={**document, "session_id": copy}).status_code == 201
    copied = path_of(client, copy)
    assert [(m["id"], m["role"], m["content"], m["created_at"], m["feedback"]) for m in copied] == [
        (m["id"], m["role"], m["content"], m["created_at"], m["feedback"]) for m in path]
    assert all(m["sibling_ids"] == [m["id"]] for m in copied)
    assert [m["parent_id"] for m in copied] == [None] + [m["id"] for m in copied[:-1]]
    assert session_row(db, alice.id, copy)["branch_messages"] == 0
    # A v1 document without ids (as exported before messages had them) gets new ones.
    bare = {"format": "chat-session/v1", "messages": [{"role": m["role"], "content": m["content"]} for m in path]}
    response = client.post("/api/llm/sessions/import", json=bare)
    assert response.status_code == 201
    fresh = path_of(client, response.get_json()["data"]["session_id"])
    assert [m["content"] for m in fresh] == [m["content"] for m in path]
    assert len({m["id"] for m in fresh}) == len(path)


def v2(messages: list[dict], active: str | None = "b", **extra) -> dict:
    document = {"format": "chat-session/v2", "messages": messages, **extra}
    if active is not None:
        document["active_message_id"] = active
    return document


A = {"id": "a", "role": "user", "content": "question"}
B = {"id": "b", "parent_id": "a", "role": "assistant", "content": "answer"}


@pytest.mark.parametrize("document, field", [
    (v2([{"role": "user", "content": "x"}], active=None), "messages.0.id"),
    (v2([A, {**B, "id": "a"}], active="a"), "messages.1.id"),
    (v2([A, {**B, "parent_id": "nowhere"}]), "messages.1.parent_id"),
    (v2([{**B, "parent_id": "a"}, A]), "messages.0.parent_id"),  # a parent after its reply
    (v2([{**A, "parent_id": "a"}, B]), "messages.0.parent_id"),  # its own parent: a cycle
    (v2([A, B], active=None), "active_message_id"),
    (v2([A, B], active="zzz"), "active_message_id"),
    (v2([{**A, "id": "not an id!"}, B]), "messages.0.id"),
    (v2([{**A, "feedback": {"rating": "up"}}, B]), "messages.0.feedback"),
    (v2([A, {**B, "role": "system"}]), "messages.1.role"),
    (v2([A, {**B, "feedback": {"rating": "meh"}}]), "messages.1.feedback.rating"),
])
def test_invalid_v2_documents_are_400_with_fields_and_write_nothing(client, db, alice, document, field):
    before = user_rows_digest(db, alice.id)
    sid = unique_session_id()
    response = client.post("/api/llm/sessions/import", json={**document, "session_id": sid})
    assert response.status_code == 400, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "validation_error" and field in error["fields"], error
    assert user_rows_digest(db, alice.id) == before
    assert thread_row_counts(db, alice.thread_id(sid)) == NO_ROWS


def test_an_import_failing_at_its_last_branch_writes_nothing(client, db, alice):
    # The off-path row, last of the tree, fails: the session row, its checkpoint and the rows before go too.
    document = v2([A, B, {**B, "id": "c", "content": "doomed"}])
    sid = unique_session_id()
    before = user_rows_digest(db, alice.id)
    with installed_trigger(db, "test_fail_import_messages", "chat_messages", "insert",
                           when="row.content = 'doomed'", then="raise exception 'injected failure'"):
        response = client.post("/api/llm/sessions/import", json={**document, "session_id": sid})
    assert response.status_code == 500
    assert user_rows_digest(db, alice.id) == before
    assert thread_row_counts(db, alice.thread_id(sid)) == NO_ROWS
    assert session_row(db, alice.id, sid) is None


def test_every_problem_of_a_document_is_named_at_once(client):
    response = client.post("/api/llm/sessions/import",
                           json=v2([A, {**B, "id": "a"}, {**B, "id": "c", "parent_id": "x"}], active="q"))
    assert set(response.get_json()["error"]["fields"]) == {"messages.1.id", "messages.2.parent_id",
                                                           "active_message_id"}


def test_the_caps_count_every_branch_of_an_import(make_app, alice, fake_model):
    app = make_app(chat_history_max_messages=4, chat_history_max_bytes=1024,
                   openai_base_url=fake_model.base_url, openai_api_key="k", openai_model="fake-chat")
    client = client_for(app, alice)
    pool = services_of(app).db.pool
    # Five messages, an active path of two: past the cap, as a session with those branches is.
    tree = [A, B, {**B, "id": "c"}, {**B, "id": "d"}, {**B, "id": "e"}]
    before = user_rows_digest(pool, alice.id)
    response = client.post("/api/llm/sessions/import", json=v2(tree))
    assert response.status_code == 400 and "messages" in response.get_json()["error"]["fields"]
    heavy = [A, B, {**B, "id": "c", "content": "x" * 1011}]  # 1,025 bytes, 14 of them on the path
    response = client.post("/api/llm/sessions/import", json=v2(heavy))
    assert response.status_code == 400 and "messages" in response.get_json()["error"]["fields"]
    assert user_rows_digest(pool, alice.id) == before
    # At the cap: accepted, and full (a turn is refused: its branches count).
    sid = unique_session_id()
    response = client.post("/api/llm/sessions/import", json=v2(tree[:4], session_id=sid))
    assert response.status_code == 201, response.get_json()
    row = session_row(pool, alice.id, sid)
    assert (row["message_count"], row["branch_messages"]) == (2, 2)
    turn = client.post("/api/llm/query/stream", json={"session_id": sid, "query": "more"})
    assert turn.status_code == 409 and turn.get_json()["error"]["code"] == "session_full"


# --- events, feedback export, MCP --------------------------------------------------------


def test_a_switch_an_edit_and_a_rating_are_each_session_updated(client, db, alice):
    sid = conversation(client, 2)
    path = path_of(client, sid)
    events = EventStore(db)

    def updates_after(action) -> list[dict]:
        cursor = events.latest_id_for(alice.id)
        action()
        return [e for e in events.read_after(alice.id, cursor) if e["session_id"] == sid
                and e["type"] == "session.updated"]

    edited = updates_after(lambda: stream(edit(client, sid, path[2]["id"], "again")))
    assert edited and edited[-1]["payload"]["message_count"] == 4
    switched = updates_after(lambda: switch(client, sid, path[2]["id"]))
    assert len(switched) == 1 and switched[0]["payload"]["message_count"] == 4
    rated = updates_after(lambda: rate(client, sid, path[3]["id"], "up"))
    assert len(rated) == 1 and rated[0]["payload"]["session_id"] == sid
    # An edit at the last question leaves the count as it was: still announced.
    last = updates_after(lambda: stream(edit(client, sid, path[2]["id"], "once more")))
    assert last and last[-1]["payload"]["message_count"] == 4


def test_export_feedback_writes_each_rating_with_its_conversation(client, lifecycle_app, alice, tmp_path):
    sid = branched_session(client, comment_marker="cli")
    tree = {m["id"]: m for m in tree_of(client, sid)["messages"]}
    runner = lifecycle_app.test_cli_runner()
    result = runner.invoke(args=["export-feedback", "--since", "2000-01-01"])
    assert result.exit_code == 0, result.output
    mine = [json.loads(line) for line in result.output.splitlines() if json.loads(line)["session_id"] == sid]
    assert [r["rating"] for r in mine] == ["down", "up"]  # oldest rating first
    down, up = mine
    assert down["comment"] == "wrong cli" and down["user_id"] == alice.id
    # The conversation up to the rated reply, on its own branch (not the active one).
    assert [m["content"] for m in down["messages"]] == ["q0", "Echo: q0", "edited ", tree[down["message_id"]]["content"]]
    assert down["messages"][-1]["id"] == down["message_id"]
    assert [m["role"] for m in up["messages"]] == ["user", "assistant"]
    out = tmp_path / "feedback.jsonl"
    result = runner.invoke(args=["export-feedback", "--since", "2000-01-01", "--until", "2000-01-02",
                                 "--out", str(out)])
    assert result.exit_code == 0 and out.read_text() == ""
    result = runner.invoke(args=["export-feedback", "--since", "2000-01-01T00:00:00", "--out", str(out)])
    assert result.exit_code == 0
    assert sum(json.loads(line)["session_id"] == sid for line in out.read_text().splitlines()) == 2
    assert runner.invoke(args=["export-feedback"]).exit_code != 0  # --since is required
    assert runner.invoke(args=["export-feedback", "--since", "yesterday"]).exit_code != 0


def test_mcp_get_session_has_ids_and_branches_and_export_is_v2(client, lifecycle_app, alice):
    from support.net import served_on_loopback
    from tests.test_mcp import http_session, run

    sid = branched_session(client)
    shown = client.get(f"/api/llm/sessions/{sid}?include_messages=true").get_json()
    exported = tree_of(client, sid)

    async def main():
        with served_on_loopback(lifecycle_app) as port:
            async with http_session(f"http://127.0.0.1:{port}/mcp", alice.token) as mcp:
                got = await mcp.call_tool("get_session", {"session_id": sid, "include_messages": True})
                document = await mcp.call_tool("export_session", {"session_id": sid})
                return got.structured_content, document.structured_content

    got, document = run(main)
    assert got["messages"] == shown["messages"]
    assert all(m["id"] and "sibling_ids" in m and "sibling_index" in m for m in got["messages"])
    assert len(got["messages"][2]["sibling_ids"]) == 2  # q1 and its edit
    assert document == exported and document["format"] == "chat-session/v2"


def test_another_users_import_with_the_same_ids_is_its_own(client, lifecycle_app, db):
    document = v2([A, B])
    stranger = client_for(lifecycle_app, User())
    for who in (client, stranger, client):  # ids are per session: the same document, three sessions
        response = who.post("/api/llm/sessions/import", json=document)
        assert response.status_code == 201, response.get_json()
        assert [m["id"] for m in path_of(who, response.get_json()["data"]["session_id"])] == ["a", "b"]

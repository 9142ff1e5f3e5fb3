"""The MCP server (backend/mcp_server): the SDK's own client over stdio and streamable HTTP, on the real database.

stdio: `flask --app backend mcp --user-id U` as a subprocess, as a desktop client
launches it. HTTP: the app on a real werkzeug server on loopback (and, once, on
the production gunicorn + gevent command), with the API's bearer tokens.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator

import anyio
import httpx2
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from backend.config import PROJECT_ROOT
from backend.services import services_of
from support.net import served_on_loopback
from tests.chat_support import named_session, send, turn
from tests.checkpoints import NO_ROWS, thread_row_counts
from tests.helpers import (
    JWT_SECRET,
    SECRET_KEY,
    User,
    client_for,
    in_thread,
    make_token,
    moving_queue,
    unique_session_id,
)
from tests.test_undo import everything_digest

TOOLS = {"list_sessions", "get_session", "rename_session", "archive_session", "export_session", "delete_session",
         "restore_session", "get_usage", "search_messages"}
PHASES = ["checking for a reply in progress", "creating the recovery point", "deleting checkpoints",
          "deleting the session", "done"]


# --- clients ------------------------------------------------------------------------


def stdio_params(database_url: str, user: User) -> StdioServerParameters:
    env = {
        **os.environ,
        "APP_ENV": "test",
        "DATABASE_URL": database_url,
        "SECRET_KEY": SECRET_KEY,
        "SUPABASE_JWT_SECRET": JWT_SECRET,
        "MAINTENANCE_INTERVAL_SECONDS": "0",
        "LOG_LEVEL": "WARNING",
    }
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "flask", "--app", "backend", "mcp", "--user-id", user.id, "--business-id", user.business_id],
        env=env, cwd=str(PROJECT_ROOT),
    )


@contextlib.asynccontextmanager
async def stdio_session(params: StdioServerParameters) -> AsyncIterator[ClientSession]:
    async with stdio_client(params) as (read, write), ClientSession(read, write, read_timeout_seconds=60) as session:
        await session.initialize()
        yield session


@contextlib.asynccontextmanager
async def http_session(url: str, token: str) -> AsyncIterator[ClientSession]:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as client, \
            streamable_http_client(url, http_client=client) as (read, write), \
            ClientSession(read, write, read_timeout_seconds=60) as session:
        await session.initialize()
        yield session


def run(fn, *args):
    return anyio.run(fn, *args)


@pytest.fixture(scope="module")
def mcp_url(app) -> str:
    """The app on a real HTTP server on loopback (werkzeug, a thread per request)."""
    with served_on_loopback(app) as port:
        yield f"http://127.0.0.1:{port}/mcp"


@pytest.fixture(scope="module")
def chat_mcp_url(chat_app) -> str:
    with served_on_loopback(chat_app) as port:
        yield f"http://127.0.0.1:{port}/mcp"


class Progress:
    def __init__(self) -> None:
        self.seen: list[tuple[float, float | None, str | None]] = []

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        self.seen.append((progress, total, message))


def error_of(result) -> dict:
    assert result.is_error, result
    return result.structured_content["error"]


def audit_rows(pool, user_id: str, session_id: str) -> list[dict]:
    with pool.connection() as conn:
        return conn.execute(
            "select id, action, forced, rows_deleted from session_deletions where user_id = %s and session_id = %s "
            "order by id", (user_id, session_id)).fetchall()


def session_row(pool, user_id: str, session_id: str):
    with pool.connection() as conn:
        return conn.execute("select * from chat_sessions where user_id = %s and session_id = %s",
                            (user_id, session_id)).fetchone()


# --- stdio ----------------------------------------------------------------------------


def test_stdio_server_serves_every_tool_and_the_session_resource(database_url, chat, fake, alice, pool):
    sid = named_session(chat, "Highland Property Valuation")
    turn(chat, sid, "What's the value of the Highland property?")
    other = named_session(chat, "Groceries")
    before = chat.get(f"/api/llm/sessions/{sid}?include_messages=true&include_usage=true").get_json()

    async def main():
        async with stdio_session(stdio_params(database_url, alice)) as mcp:
            tools = {tool.name: tool for tool in (await mcp.list_tools()).tools}
            assert set(tools) == TOOLS
            for tool in tools.values():
                assert tool.input_schema["additionalProperties"] is False and tool.output_schema
                assert "user_id" not in tool.input_schema["properties"]
            assert tools["delete_session"].annotations.destructive_hint is True

            listed = await mcp.call_tool("list_sessions", {})
            assert not listed.is_error
            assert {s["session_id"] for s in listed.structured_content["sessions"]} == {sid, other}
            assert sid in listed.content[0].text
            found = await mcp.call_tool("list_sessions", {"query": "hIGHland"})
            assert [s["session_id"] for s in found.structured_content["sessions"]] == [sid]
            assert found.structured_content["total"] == 1
            page = await mcp.call_tool("list_sessions", {"limit": 1})
            assert page.structured_content["count"] == 1 and page.structured_content["next_cursor"]
            rest = await mcp.call_tool("list_sessions", {"limit": 1, "cursor": page.structured_content["next_cursor"]})
            assert {page.structured_content["sessions"][0]["session_id"],
                    rest.structured_content["sessions"][0]["session_id"]} == {sid, other}

            got = await mcp.call_tool("get_session", {"session_id": sid, "include_messages": True})
            assert got.structured_content["session"] == before["data"]
            assert got.structured_content["messages"] == before["messages"]

            renamed = await mcp.call_tool("rename_session", {"session_id": sid, "name": "  Highland, renamed  "})
            assert renamed.structured_content["session"]["session_name"] == "Highland, renamed"
            archived = await mcp.call_tool("archive_session", {"session_id": sid, "archived": True})
            assert archived.structured_content["session"]["is_archived"] is True
            hidden = await mcp.call_tool("list_sessions", {})
            assert [s["session_id"] for s in hidden.structured_content["sessions"]] == [other]

            exported = await mcp.call_tool("export_session", {"session_id": sid})
            assert exported.structured_content == chat.get(f"/api/llm/sessions/{sid}/export").get_json()

            templates = (await mcp.list_resource_templates()).resource_templates
            assert [t.uri_template for t in templates] == ["session://{session_id}"]
            resource = await mcp.read_resource(f"session://{sid}")
            document = json.loads(resource.contents[0].text)
            assert resource.contents[0].mime_type == "application/json"
            assert document["messages"] == before["messages"] and document["session"]["is_archived"] is True

            progress = Progress()
            deleted = await mcp.call_tool("delete_session", {"session_id": sid}, progress_callback=progress)
            assert not deleted.is_error, deleted
            restored = await mcp.call_tool("restore_session", {"backup_id": deleted.structured_content["backup_id"]})
            assert not restored.is_error, restored
            return progress, deleted.structured_content, restored.structured_content

    progress, deleted, restored = run(main)
    assert [message for _, _, message in progress.seen] == PHASES
    assert deleted["deleted"]["chat_sessions"] == 1 and deleted["deleted"]["checkpoints"] >= 1
    assert audit_rows(pool, alice.id, sid)[0]["id"] == deleted["audit_id"]
    assert restored["session"]["session_name"] == "Highland, renamed"
    after = chat.get(f"/api/llm/sessions/{sid}?include_messages=true").get_json()
    assert after["messages"] == before["messages"]
    assert [r["action"] for r in audit_rows(pool, alice.id, sid)] == ["delete", "restore"]


def test_stdio_refuses_an_invalid_user_id(database_url):
    import subprocess

    user = User()
    params = stdio_params(database_url, user)
    args = ["../../etc" if a == user.id else a for a in params.args]
    done = subprocess.run([params.command, *args], env=params.env, cwd=params.cwd, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and "--user-id must be" in done.stderr
    assert done.stdout == ""


# --- streamable HTTP -------------------------------------------------------------------


def test_http_delete_reports_progress_leaves_nothing_and_its_backup_restores_through_the_api(
        chat_mcp_url, chat, fake, alice, pool):
    sid = named_session(chat, "To be deleted")
    for i in range(3):
        turn(chat, sid, f"question {i}")
    before = chat.get(f"/api/llm/sessions/{sid}?include_messages=true").get_json()
    assert thread_row_counts(pool, alice.thread_id(sid)) != NO_ROWS

    async def main():
        async with http_session(chat_mcp_url, alice.token) as mcp:
            progress = Progress()
            result = await mcp.call_tool("delete_session", {"session_id": sid, "create_backup": True},
                                         progress_callback=progress)
            return progress, result

    progress, result = run(main)
    assert not result.is_error, result
    values = [p for p, _, _ in progress.seen]
    assert values == sorted(values) and values[-1] == 100 and len(values) == len(set(values))
    assert [m for _, _, m in progress.seen] == PHASES and {t for _, t, _ in progress.seen} == {100}
    body = result.structured_content
    assert body["forced"] is False and body["dry_run"] is False
    assert body["deleted"]["chat_sessions"] == 1 and body["deleted"]["checkpoints"] >= 1
    assert "Undo with restore_session" in result.content[0].text

    # Nothing left behind: the row and every checkpoint row of its thread; the audit row written.
    assert session_row(pool, alice.id, sid) is None
    assert thread_row_counts(pool, alice.thread_id(sid)) == NO_ROWS
    [audit] = audit_rows(pool, alice.id, sid)
    assert audit["id"] == body["audit_id"] and audit["action"] == "delete" and audit["forced"] is False
    assert audit["rows_deleted"] == body["deleted"]

    restored = chat.post("/api/llm/sessions/restore", json={"backup_id": body["backup_id"]})
    assert restored.status_code == 201, restored.get_json()
    assert chat.get(f"/api/llm/sessions/{sid}?include_messages=true").get_json() == before


async def delete_behind_a_lock(mcp: ClientSession, database_url: str, pool, user: User, sid: str):
    """delete_session while this test holds the session row's lock, let go of only when the first progress
    notification has arrived: were progress held back until the result, the call could never finish."""
    import psycopg

    seen: list[str] = []
    with psycopg.connect(database_url) as blocker:
        blocker.execute("select 1 from chat_sessions where user_id = %s and session_id = %s for update",
                        (user.id, sid))

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            if not seen:
                assert session_row(pool, user.id, sid) is not None  # the delete is still waiting
                blocker.commit()  # lets the delete go on
            seen.append(message)

        with anyio.fail_after(30):
            result = await mcp.call_tool("delete_session", {"session_id": sid}, progress_callback=on_progress)
    return seen, result


def test_http_progress_arrives_while_the_delete_is_still_running(mcp_url, database_url, api, alice, pool):
    sid = named_session(api, "Locked for a moment")

    async def main():
        async with http_session(mcp_url, alice.token) as mcp:
            return await delete_behind_a_lock(mcp, database_url, pool, alice, sid)

    seen, result = run(main)
    assert not result.is_error, result
    assert seen == PHASES
    assert session_row(pool, alice.id, sid) is None


def test_http_restore_session_tool_and_a_used_backup(mcp_url, api, alice, pool):
    sid = named_session(api, "Undo me")

    async def main():
        async with http_session(mcp_url, alice.token) as mcp:
            deleted = await mcp.call_tool("delete_session", {"session_id": sid})
            backup_id = deleted.structured_content["backup_id"]
            restored = await mcp.call_tool("restore_session", {"backup_id": backup_id})
            again = await mcp.call_tool("restore_session", {"backup_id": backup_id})
            no_backup = await mcp.call_tool("delete_session", {"session_id": sid, "create_backup": False})
            return restored, again, no_backup

    restored, again, no_backup = run(main)
    assert restored.structured_content["session"]["session_name"] == "Undo me"
    assert error_of(again)["code"] == "not_found"
    assert "No recovery point has this backup_id" in again.content[0].text  # not "No such session"
    assert "backup_id" not in no_backup.structured_content and "No backup" in no_backup.content[0].text
    assert [r["action"] for r in audit_rows(pool, alice.id, sid)] == ["delete", "restore", "delete"]


def _raw_post(url: str, body: dict, headers: dict) -> http.client.HTTPResponse:
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", "/mcp", body=json.dumps(body), headers={
        "Content-Type": "application/json", "Accept": "application/json, text/event-stream", **headers})
    return conn.getresponse()


def test_http_refuses_requests_without_a_valid_token_before_any_tool_runs(mcp_url, api, alice, pool):
    sid = named_session(api, "Keep me")
    before = everything_digest(pool, alice.id)
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "delete_session", "arguments": {"session_id": sid, "force": True}}}
    forged = make_token(alice.id, business_id=alice.business_id, secret="not-the-secret-" + "z" * 32)
    expired = make_token(alice.id, business_id=alice.business_id, exp=1)
    for headers, code in [({}, "unauthorized"), ({"Authorization": f"Bearer {forged}"}, "invalid_token"),
                          ({"Authorization": f"Bearer {expired}"}, "invalid_token"),
                          ({"Authorization": f"Basic {alice.token}"}, "unauthorized"),
                          ({"Authorization": "Bearer "}, "unauthorized")]:
        r = _raw_post(mcp_url, call, headers)
        assert r.status == 401, headers
        assert r.getheader("WWW-Authenticate", "").startswith("Bearer")
        assert json.loads(r.read())["error"]["code"] == code
    assert everything_digest(pool, alice.id) == before

    async def main():
        async with http_session(mcp_url, forged):
            pass

    with pytest.raises(BaseExceptionGroup) as refused:  # the SDK client fails on the 401
        run(main)
    assert refused.group_contains(MCPError, depth=None)
    assert everything_digest(pool, alice.id) == before

    # Stateless: no stream to GET (it would never end), no session to DELETE.
    host, port = mcp_url.removeprefix("http://").split("/")[0].split(":")
    for method in ("GET", "DELETE"):
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request(method, "/mcp", headers={"Authorization": f"Bearer {alice.token}", "Accept": "text/event-stream"})
        assert conn.getresponse().status == 405

    # The same call with the real token does run.
    r = _raw_post(mcp_url, call, {"Authorization": f"Bearer {alice.token}"})
    assert r.status == 200
    assert session_row(pool, alice.id, sid) is None


def test_dry_run_reports_counts_and_changes_nothing_busy_needs_force(chat_mcp_url, chat_app, chat, fake, alice, pool):
    sid = named_session(chat)
    turn(chat, sid, "earlier turn")
    counts = thread_row_counts(pool, alice.thread_id(sid))

    async def call(name, arguments):
        async with http_session(chat_mcp_url, alice.token) as mcp:
            return await mcp.call_tool(name, arguments)

    before = everything_digest(pool, alice.id)
    dry = run(call, "delete_session", {"session_id": sid, "dry_run": True})
    assert dry.structured_content["deleted"] == {**counts, "chat_sessions": 1}
    assert dry.structured_content["reply_running"] is False and dry.structured_content["dry_run"] is True
    assert run(call, "get_session", {"session_id": sid}).structured_content["reply_running"] is False
    assert "Nothing was changed" in dry.content[0].text
    assert everything_digest(pool, alice.id) == before

    with fake.hold_streams() as gate:
        streaming = send(chat, sid, "a reply to be interrupted", buffered=False)
        assert gate.wait_for_held(1)
        busy_dry = run(call, "delete_session", {"session_id": sid, "dry_run": True, "force": True})
        assert busy_dry.structured_content["reply_running"] is True
        assert run(call, "get_session", {"session_id": sid}).structured_content["reply_running"] is True
        refused = run(call, "delete_session", {"session_id": sid})
        error = error_of(refused)
        assert error["code"] == "session_busy" and "force=true" in error["message"]
        assert "session_busy" in refused.content[0].text
        assert session_row(pool, alice.id, sid) is not None and audit_rows(pool, alice.id, sid) == []

        forced = run(call, "delete_session", {"session_id": sid, "force": True})
        assert not forced.is_error, forced
        assert forced.structured_content["forced"] is True
        streaming.get_data()
    assert session_row(pool, alice.id, sid) is None
    assert thread_row_counts(pool, alice.thread_id(sid)) == NO_ROWS
    assert [r["forced"] for r in audit_rows(pool, alice.id, sid)] == [True]
    missing = run(call, "delete_session", {"session_id": sid, "dry_run": True})
    assert error_of(missing)["code"] == "not_found"


def test_one_users_tools_never_see_or_change_another_users_sessions(mcp_url, api, bob_api, alice, bob, pool):
    mine = named_session(api, "Alice's secret")
    shared = unique_session_id()  # both have a session with this id
    assert api.post("/api/llm/sessions", json={"session_id": shared, "session_name": "Alice's"}).status_code == 201
    assert bob_api.post("/api/llm/sessions", json={"session_id": shared, "session_name": "Bob's"}).status_code == 201
    deleted = api.delete(f"/api/llm/sessions/{named_session(api)}?backup=true").get_json()
    alice_backup = deleted["backup"]["backup_id"]
    before = everything_digest(pool, alice.id)

    async def main():
        async with http_session(mcp_url, bob.token) as mcp:
            listed = await mcp.call_tool("list_sessions", {"include_archived": True, "query": "alice"})
            everything = await mcp.call_tool("list_sessions", {"include_archived": True})
            refusals = [
                await mcp.call_tool("get_session", {"session_id": mine, "include_messages": True}),
                await mcp.call_tool("rename_session", {"session_id": mine, "name": "pwned"}),
                await mcp.call_tool("archive_session", {"session_id": mine, "archived": True}),
                await mcp.call_tool("export_session", {"session_id": mine}),
                await mcp.call_tool("delete_session", {"session_id": mine, "force": True}),
                await mcp.call_tool("delete_session", {"session_id": mine, "dry_run": True}),
                await mcp.call_tool("restore_session", {"backup_id": alice_backup}),
            ]
            # By thread id, or with a user id argument: no such session / not an argument.
            by_thread = await mcp.call_tool("get_session", {"session_id": alice.thread_id(mine)})
            with_user = await mcp.call_tool("delete_session", {"session_id": mine, "user_id": alice.id})
            with pytest.raises(MCPError):
                await mcp.read_resource(f"session://{mine}")
            own = await mcp.call_tool("delete_session", {"session_id": shared, "create_backup": False})
            return listed, everything, refusals, by_thread, with_user, own

    listed, everything, refusals, by_thread, with_user, own = run(main)
    assert listed.structured_content["sessions"] == [] and listed.structured_content["total"] == 0
    assert [s["session_name"] for s in everything.structured_content["sessions"]] == ["Bob's"]
    assert [error_of(r)["code"] for r in refusals] == ["not_found"] * len(refusals)
    assert error_of(by_thread)["code"] == "not_found"
    assert error_of(with_user)["code"] == "invalid_input" and "user_id" in error_of(with_user)["fields"]
    assert own.structured_content["deleted"]["chat_sessions"] == 1
    assert everything_digest(pool, alice.id) == before  # Alice's rows, backups and audit: untouched
    assert api.get(f"/api/llm/sessions/{shared}").get_json()["data"]["session_name"] == "Alice's"
    assert session_row(pool, bob.id, shared) is None


HOSTILE = [
    ("get_session", {"session_id": 123}),
    ("get_session", {}),
    ("get_session", {"session_id": ".."}),
    ("get_session", {"session_id": "../chat-1"}),
    ("get_session", {"session_id": "chat/1"}),
    ("get_session", {"session_id": "x" * 10_000}),
    ("get_session", {"session_id": "chat-1\x00"}),
    ("get_session", {"session_id": "chat-1", "include_messages": "yes"}),
    ("get_session", {"session_id": "chat-1", "messages_limit": 10**9}),
    ("list_sessions", {"limit": 0}),
    ("list_sessions", {"limit": "10"}),
    ("list_sessions", {"limit": 10.5}),
    ("list_sessions", {"query": "q" * 10_000}),
    ("list_sessions", {"query": "nul\x00byte"}),  # the API's q refuses control characters: so does the tool
    ("list_sessions", {"query": "\x1b[31m"}),
    ("list_sessions", {"cursor": "not-a-cursor"}),
    ("list_sessions", {"cursor": "x" * 100_000}),
    ("rename_session", {"session_id": "{sid}", "name": "x" * 10_000}),
    ("rename_session", {"session_id": "{sid}", "name": "bad\x00name"}),
    ("rename_session", {"session_id": "{sid}", "name": "evil\u202etxt.exe"}),
    ("rename_session", {"session_id": "{sid}", "name": "   "}),
    ("rename_session", {"session_id": "{sid}", "name": None}),
    ("rename_session", {"session_id": "{sid}", "name": ["a"]}),
    ("archive_session", {"session_id": "{sid}", "archived": "true"}),
    ("archive_session", {"session_id": "{sid}", "archived": 1}),
    ("delete_session", {"session_id": "{sid}", "force": "false"}),
    ("delete_session", {"session_id": "{sid}", "dry_run": 0}),
    ("delete_session", {"session_id": "{sid}/../x"}),
    ("delete_session", {"session_id": "{sid}", "user_id": "someone-else"}),
    ("delete_session", {"session_id": "{sid}'; drop table chat_sessions; --"}),
    ("restore_session", {"backup_id": "../../etc/passwd"}),
    ("restore_session", {"backup_id": 42}),
    ("export_session", {"session_id": ["{sid}"]}),
    ("get_usage", {"limit": "10"}),
    ("get_usage", {"since": "2026-02-30"}),
    ("get_usage", {"group_by": "week"}),
    ("get_usage", {"user_id": "someone-else"}),
]


def test_hostile_arguments_are_invalid_input_and_change_nothing(mcp_url, api, alice, pool):
    sid = named_session(api, "Stays as it is")
    before = everything_digest(pool, alice.id)

    def fill(value):
        if isinstance(value, str):
            return value.replace("{sid}", sid)
        if isinstance(value, list):
            return [fill(v) for v in value]
        return value

    async def main():
        async with http_session(mcp_url, alice.token) as mcp:
            results = [await mcp.call_tool(name, {k: fill(v) for k, v in args.items()}) for name, args in HOSTILE]
            unknown = await mcp.call_tool("drop_everything", {})
            return results, unknown

    results, unknown = run(main)
    for (name, args), result in zip(HOSTILE, results):
        error = error_of(result)
        assert error["code"] == "invalid_input", (name, args, error)
        assert result.content[0].text.startswith("invalid_input: ")
        assert len(result.content[0].text) < 2_000  # the hostile value is not echoed back whole
        assert "(?:" not in result.content[0].text and "pattern" not in result.content[0].text  # words, no regex
    assert error_of(unknown)["code"] == "unknown_tool"
    assert everything_digest(pool, alice.id) == before
    assert api.get(f"/api/llm/sessions/{sid}").get_json()["data"]["session_name"] == "Stays as it is"


def test_session_resource_rejects_bad_uris(mcp_url, alice):
    async def main():
        codes = []
        async with http_session(mcp_url, alice.token) as mcp:
            for uri in ["session://..", "session://a%2Fb", "file:///etc/passwd", f"session://{uuid.uuid4()}"]:
                with pytest.raises(MCPError) as refused:
                    await mcp.read_resource(uri)
                codes.append(refused.value.code)
        return codes

    assert set(run(main)) == {-32602}  # invalid params: not a session of this user


# --- the production server command ---------------------------------------------------------


def test_http_transport_under_the_production_gevent_server(database_url, fake_model, tmp_path, app, alice, pool):
    from tests.test_server_model import production_server

    api = client_for(app, alice)
    sid = named_session(api, "Served by gevent")
    with production_server(database_url, fake_model, tmp_path) as (port, _, log_path):
        url = f"http://127.0.0.1:{port}/mcp"

        async def main():
            async with http_session(url, alice.token) as mcp:
                names = {t.name for t in (await mcp.list_tools()).tools}
                listed = await mcp.call_tool("list_sessions", {})
                progress, deleted = await delete_behind_a_lock(mcp, database_url, pool, alice, sid)
                restored = await mcp.call_tool("restore_session",
                                               {"backup_id": deleted.structured_content["backup_id"]})
                return names, listed, progress, deleted, restored

        async def concurrently():
            results = []

            async def one():
                async with http_session(url, alice.token) as mcp:
                    results.append(await mcp.call_tool("get_session", {"session_id": sid}))

            async with anyio.create_task_group() as tg:
                for _ in range(8):
                    tg.start_soon(one)
            return results

        names, listed, progress, deleted, restored = run(main)
        parallel = run(concurrently)
        refused = _raw_post(url, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, {})
        assert refused.status == 401
    assert names == TOOLS
    assert [s["session_id"] for s in listed.structured_content["sessions"]] == [sid]
    assert progress == PHASES  # streamed live, under gevent too
    assert deleted.structured_content["deleted"]["chat_sessions"] == 1
    assert restored.structured_content["session"]["session_name"] == "Served by gevent"
    assert [r.structured_content["session"]["session_id"] for r in parallel] == [sid] * 8
    assert [r["action"] for r in audit_rows(pool, alice.id, sid)] == ["delete", "restore"]


def test_write_tools_share_the_apis_session_write_rate_limit(make_app, alice):
    """A second way to write counts against the same per-user budget (SESSION_WRITE_RATE_LIMIT); reads do not."""
    limited = make_app(rate_limits_enabled=True, session_write_rate_limit="3 per minute")
    with served_on_loopback(limited) as port:
        url = f"http://127.0.0.1:{port}/mcp"
        api = client_for(limited, alice)
        sid = named_session(api, "Limited")  # 1st write, through the API
        auth = {"Authorization": f"Bearer {alice.token}"}

        def call(name, arguments):
            r = _raw_post(url, {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                "params": {"name": name, "arguments": arguments}}, auth)
            r.read()
            return r.status

        assert [call("list_sessions", {}) for _ in range(5)] == [200] * 5  # reads are not session writes
        assert call("rename_session", {"session_id": sid, "name": "one"}) == 200
        assert call("archive_session", {"session_id": sid, "archived": True}) == 200
        assert call("rename_session", {"session_id": sid, "name": "three"}) == 429
        assert api.put(f"/api/llm/sessions/{sid}", json={"session_name": "api"}).status_code == 429
        assert api.get(f"/api/llm/sessions/{sid}").get_json()["data"]["session_name"] == "one"

        # A body nested too deeply for a JSON parser is refused as a bad request, not a crash.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/mcp", body=b"[" * 50_000 + b"]" * 50_000, headers={
            **auth, "Content-Type": "application/json", "Accept": "application/json, text/event-stream"})
        assert 400 <= conn.getresponse().status < 500


def test_http_serves_a_client_of_the_newest_protocol_too(mcp_url, api, alice):
    """The SDK's high-level Client (mode "auto": discovery, no initialize handshake) on the same endpoint."""
    from mcp import Client

    sid = named_session(api, "Newest protocol")

    async def main():
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {alice.token}"}, timeout=60) as http, \
                Client(streamable_http_client(mcp_url, http_client=http)) as client:
            got = await client.call_tool("get_session", {"session_id": sid})
            refused = await client.call_tool("get_session", {"session_id": "../x"})
            return client.protocol_version, got, refused

    from mcp_types.version import MODERN_PROTOCOL_VERSIONS

    version, got, refused = run(main)
    assert version in MODERN_PROTOCOL_VERSIONS  # the per-request protocol, not the initialize handshake
    assert got.structured_content["session"]["session_name"] == "Newest protocol"
    assert error_of(refused)["code"] == "invalid_input"


def test_a_tool_tells_a_busy_server_from_a_database_that_stopped_answering(make_app, alice):
    app = make_app(db_pool_timeout_seconds=1.0, db_pool_queue_seconds=1.5, db_pool_min_size=1, db_pool_max_size=1)
    pool = services_of(app).db.pool
    with served_on_loopback(app) as port:
        url = f"http://127.0.0.1:{port}/mcp"

        async def list_sessions():
            async with http_session(url, alice.token) as mcp:
                return await mcp.call_tool("list_sessions", {})

        assert not run(list_sessions).is_error  # a connection came back in working order
        with moving_queue(pool) as start:  # connections keep coming back, too slowly for this call
            thread, out = in_thread(lambda: run(list_sessions))
            start()
            thread.join(30)
        assert error_of(out["value"])["code"] == "overloaded"

        held = pool.getconn()  # nothing comes back at all
        try:
            stuck = run(list_sessions)
        finally:
            pool.putconn(held)
        assert error_of(stuck)["code"] == "database_unavailable"


# --- usage -----------------------------------------------------------------------------------------


def test_agents_see_usage_as_the_api_gives_it(chat_mcp_url, chat, fake, alice, bob):
    sid = named_session(chat, "Costly")
    turn(chat, sid, "what will this cost")
    turn(chat, sid, "and this")
    idle = named_session(chat, "Idle")

    async def main(user):
        async with http_session(chat_mcp_url, user.token) as mcp:
            return [await mcp.call_tool("get_usage", {}),
                    await mcp.call_tool("get_usage", {"group_by": "session", "limit": 1}),
                    await mcp.call_tool("get_session", {"session_id": sid}),
                    await mcp.call_tool("get_session", {"session_id": idle, "include_messages": True})]

    by_day, by_session, got, got_idle = run(main, alice)
    for result, query in ((by_day, ""), (by_session, "?group_by=session&limit=1")):
        assert not result.is_error, result
        api = chat.get(f"/api/llm/usage{query}").get_json()
        assert api.pop("success") is True
        assert result.structured_content == api
    assert by_session.structured_content["data"][0]["key"] == sid
    assert by_day.structured_content["total"]["calls"] == 2 and "2 call(s)" in by_day.content[0].text

    usage = chat.get(f"/api/llm/sessions/{sid}?include_usage=true").get_json()["data"]["usage"]
    assert usage["calls"] == 2 and usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert got.structured_content["session"]["usage"] == usage and "2 model call(s)" in got.content[0].text
    assert got_idle.structured_content["session"]["usage"]["calls"] == 0

    # Another user's agent sees none of it.
    other_day, _, missing, _ = run(main, bob)
    assert other_day.structured_content["total"]["calls"] == 0 and other_day.structured_content["data"] == []
    assert error_of(missing)["code"] == "not_found"


# --- tool arguments take exactly what the API takes ------------------------------------------------

_TEXTS = ["", "plain", "  padded  ", "日本語 🚀", "nul\x00byte", "\x00", "tab\there", "line\nbreak", "\x1b[31m",
          "a\x85b", "del\x7f", "evil\u202etxt", "%_", "x" * 200, "x" * 201, "x" * 512, "x" * 513]
_INTS = [1, 50, 200, 201, 1000, 1001, 0, -1]
_BOOLS = [True, False]
# ("chat/1" is not among them: in a URL it is two path segments, an API 404 before any validation.)
_IDS = ["chat-1", "a", "x" * 128, "x" * 129, "a b", "a\x00b", "a%b", "é", ".x", "..x", "x'; drop table t; --"]
_UUIDS = ["00000000-0000-0000-0000-000000000000", str(uuid.uuid4()), "not-a-uuid", ""]
_DAYS = ["2026-01-31", "2026-02-30", "0001-01-02", "9999-12-31", "yesterday", "0", "20260101", "2026-1-1", "",
         "2026-01-01T00:00:00", "2026-13-01"]


def _query(value) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _path_id(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


# (tool, its argument, the tool's other arguments, values to try, how the API takes the same value:
#  value -> (method, path, query string, JSON body)). "{sid}" is a session of the caller's.
COUNTERPARTS = [
    ("list_sessions", "query", {}, _TEXTS, lambda v: ("get", "/api/llm/sessions", {"q": v}, None)),
    ("list_sessions", "limit", {}, _INTS, lambda v: ("get", "/api/llm/sessions", {"limit": _query(v)}, None)),
    ("list_sessions", "cursor", {}, ["", "not-a-cursor", "x" * 512, "x" * 513, "a\x00"],
     lambda v: ("get", "/api/llm/sessions", {"cursor": v}, None)),
    ("list_sessions", "include_archived", {}, _BOOLS,
     lambda v: ("get", "/api/llm/sessions", {"include_archived": _query(v)}, None)),
    ("get_session", "session_id", {}, _IDS, lambda v: ("get", f"/api/llm/sessions/{_path_id(v)}", {}, None)),
    ("get_session", "messages_limit", {"session_id": "{sid}", "include_messages": True}, _INTS,
     lambda v: ("get", "/api/llm/sessions/{sid}", {"include_messages": "true", "messages_limit": _query(v)}, None)),
    ("get_session", "include_messages", {"session_id": "{sid}"}, _BOOLS,
     lambda v: ("get", "/api/llm/sessions/{sid}", {"include_messages": _query(v)}, None)),
    ("rename_session", "name", {"session_id": "{sid}"}, _TEXTS,
     lambda v: ("put", "/api/llm/sessions/{sid}", {}, {"session_name": v})),
    ("rename_session", "session_id", {"name": "Renamed"}, _IDS,
     lambda v: ("put", f"/api/llm/sessions/{_path_id(v)}", {}, {"session_name": "Renamed"})),
    ("archive_session", "archived", {"session_id": "{sid}"}, [True, False, None, "true", 1],
     lambda v: ("put", "/api/llm/sessions/{sid}", {}, {"is_archived": v})),
    ("export_session", "session_id", {}, _IDS, lambda v: ("get", f"/api/llm/sessions/{_path_id(v)}/export", {}, None)),
    ("delete_session", "session_id", {"dry_run": True}, _IDS,
     lambda v: ("delete", f"/api/llm/sessions/{_path_id(v)}", {}, None)),
    ("delete_session", "force", {"session_id": "nothing-here"}, _BOOLS,
     lambda v: ("delete", "/api/llm/sessions/nothing-here", {"force": _query(v)}, None)),
    ("delete_session", "create_backup", {"session_id": "nothing-here"}, _BOOLS,
     lambda v: ("delete", "/api/llm/sessions/nothing-here", {"backup": _query(v)}, None)),
    ("restore_session", "backup_id", {}, _UUIDS, lambda v: ("post", "/api/llm/sessions/restore", {}, {"backup_id": v})),
    ("get_usage", "group_by", {}, ["day", "model", "session", "week", "", "DAY"],
     lambda v: ("get", "/api/llm/usage", {"group_by": v}, None)),
    ("get_usage", "since", {}, _DAYS, lambda v: ("get", "/api/llm/usage", {"since": v}, None)),
    ("get_usage", "until", {}, _DAYS, lambda v: ("get", "/api/llm/usage", {"until": v}, None)),
    ("get_usage", "limit", {}, [1, 400, 4000, 4001, 0, -1],
     lambda v: ("get", "/api/llm/usage", {"limit": _query(v)}, None)),
    ("search_messages", "query", {}, ["tomato", "", " ", "-only", '"a phrase"', "x" * 200, "x" * 201, "a\x00",
                                      " ".join(f"w{i}" for i in range(13))],
     lambda v: ("get", "/api/llm/search", {"q": v}, None)),
    ("search_messages", "limit", {"query": "tomato"}, [1, 50, 51, 0, -1],
     lambda v: ("get", "/api/llm/search", {"q": "tomato", "limit": _query(v)}, None)),
    ("search_messages", "cursor", {"query": "tomato"}, ["not-a-cursor", "x" * 513],
     lambda v: ("get", "/api/llm/search", {"q": "tomato", "cursor": v}, None)),
    ("search_messages", "session_id", {"query": "tomato"}, _IDS,
     lambda v: ("get", "/api/llm/search", {"q": "tomato", "session_id": v}, None)),
    ("search_messages", "order", {"query": "tomato"}, ["rank", "recent", "best", ""],
     lambda v: ("get", "/api/llm/search", {"q": "tomato", "order": v}, None)),
]


@pytest.mark.parametrize("tool, argument, others, values, api_call", COUNTERPARTS,
                         ids=[f"{c[0]}.{c[1]}" for c in COUNTERPARTS])
def test_tool_arguments_are_validated_exactly_as_the_api_validates_them(mcp_url, api, alice, tool, argument, others,
                                                                         values, api_call):
    sid = named_session(api, "Parity")

    def fill(value):
        return value.replace("{sid}", sid) if isinstance(value, str) else value

    def api_refuses(value) -> bool:
        method, path, query, body = api_call(value)
        kwargs = {"query_string": query} if query else {}
        if body is not None:
            kwargs["json"] = body
        r = getattr(api, method)(fill(path), **kwargs)
        assert r.status_code < 500, (value, r.get_json())
        return r.status_code == 400

    async def main():
        async with http_session(mcp_url, alice.token) as mcp:
            return [await mcp.call_tool(tool, {**{k: fill(v) for k, v in others.items()}, argument: value})
                    for value in values]

    for value, result in zip(values, run(main)):
        error = result.structured_content.get("error") if result.is_error else None
        assert error is None or error["code"] in ("invalid_input", "not_found", "session_busy"), (value, error)
        tool_refuses = error is not None and error["code"] == "invalid_input"
        assert tool_refuses == api_refuses(value), (tool, argument, value, error)


# --- search -----------------------------------------------------------------------------------------


def test_agents_search_messages_as_the_api_does(chat_mcp_url, chat, fake, alice, bob):
    sid = named_session(chat, "Searchable")
    turn(chat, sid, "where do penguins nest")
    turn(chat, sid, "and do penguins migrate")

    async def main(user, arguments):
        async with http_session(chat_mcp_url, user.token) as mcp:
            return await mcp.call_tool("search_messages", arguments)

    for arguments, query in (({"query": "penguins"}, {"q": "penguins"}),
                             ({"query": "penguins", "role": "user", "order": "recent", "limit": 1},
                              {"q": "penguins", "role": "user", "order": "recent", "limit": 1})):
        result = run(main, alice, arguments)
        assert not result.is_error, result
        api = chat.get("/api/llm/search", query_string=query).get_json()
        assert result.structured_content == {"hits": api["data"], "next_cursor": api["next_cursor"]}
    assert len(run(main, alice, {"query": "penguins"}).structured_content["hits"]) == 4
    assert "Searchable" in run(main, alice, {"query": "nest"}).content[0].text
    # Another user's agent finds none of it, under any filter.
    for arguments in ({"query": "penguins"}, {"query": "penguins", "session_id": sid},
                      {"query": "penguins", "include_archived": True}):
        assert run(main, bob, arguments).structured_content["hits"] == []

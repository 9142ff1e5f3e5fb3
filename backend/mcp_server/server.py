"""The MCP server: the session tools and the `session://{session_id}` resource, on the SDK's low-level `Server`.

One server object serves every user: who is acting is `acting_user`, a
context variable the transport sets for the connection (stdio: the CLI's
`--user-id`) or for the request (HTTP: the bearer token's user), so no tool
ever takes a user id as an argument, and without a user nothing runs.

The low-level server (not `MCPServer`'s decorators) so that this module owns
argument validation: a bad argument is an `isError` result with the code
`invalid_input` and the fields at fault, like the API's 400, and never
reaches a service; and every `ApiError` a service raises becomes an `isError`
result with the API's code and a hint for an agent on how to go on.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import mcp_types as types
import psycopg
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError
from psycopg_pool import PoolTimeout
from pydantic import BaseModel, ValidationError

from backend.auth.service import AuthUser
from backend.errors import ApiError, database_failure, validation_fields
from backend.mcp_server import tools as t
from backend.sessions.models import SESSION_ID_PATTERN, SessionPath

log = logging.getLogger(__name__)

SERVER_NAME = "chat-sessions"
RESOURCE_TEMPLATE = "session://{session_id}"
RESOURCE_PREFIX = "session://"
RESOURCE_LIST_LIMIT = 50

# Who the tools act as: set by the transport, per connection (stdio) or per request (HTTP).
acting_user: ContextVar[AuthUser | None] = ContextVar("mcp_acting_user", default=None)

# What an agent should do next, per API error code (the API's own messages speak of HTTP).
_HINTS = {
    "not_found": "No such session for this user. Call list_sessions to see the session ids you can use.",
    "session_busy": "A reply is still being written in this session. Call delete_session again with force=true "
                    "to stop the reply and delete, or wait until the reply has finished.",
    "session_exists": "A session with this id exists again. Delete or rename that session, then call "
                      "restore_session again.",
}


@dataclass(frozen=True)
class ToolSpec:
    name: str
    title: str
    description: str
    args: type[BaseModel]
    result: type[BaseModel]
    run: Callable[..., BaseModel]
    summary: Callable[[Any], str]
    annotations: types.ToolAnnotations
    reports_progress: bool = False

    def definition(self) -> types.Tool:
        return types.Tool(
            name=self.name, title=self.title, description=self.description,
            input_schema=self.args.model_json_schema(), output_schema=self.result.model_json_schema(),
            annotations=self.annotations,
        )


def _read_only() -> types.ToolAnnotations:
    return types.ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True,
                                 open_world_hint=False)


def _write(*, destructive: bool = False, idempotent: bool = True) -> types.ToolAnnotations:
    return types.ToolAnnotations(read_only_hint=False, destructive_hint=destructive, idempotent_hint=idempotent,
                                 open_world_hint=False)


def _session_line(s) -> str:
    flags = " (archived)" if s.is_archived else ""
    return f"- {s.session_id}: {s.session_name!r}, {s.message_count} messages{flags}"


def _list_summary(r: t.SessionList) -> str:
    total = f"{r.total}" if r.total_exact else f"{r.total}+"
    lines = [f"{r.count} of {total} session(s)" + (" (more: pass next_cursor)" if r.next_cursor else "")]
    return "\n".join(lines + [_session_line(s) for s in r.sessions])


def _detail_summary(r: t.SessionDetail) -> str:
    text = _session_line(r.session).removeprefix("- ")
    if r.session.usage is not None:
        u = r.session.usage
        text += (f"; {u.calls} model call(s) so far, {u.input_tokens} input + {u.output_tokens} output tokens, "
                 f"{u.cost_micros / 1_000_000:.6f} {u.currency}")
    if r.messages is not None:
        text += f"; {len(r.messages)} message(s) included" + (", older ones exist" if r.has_more_messages else "")
    return text


def _delete_summary(r: t.DeleteResult) -> str:
    rows = ", ".join(f"{table}: {n}" for table, n in r.deleted.items())
    if r.dry_run:
        busy = "; a reply is being written (a delete needs force=true)" if r.reply_running else ""
        return f"Dry run: deleting {r.session_id} would remove {rows}{busy}. Nothing was changed."
    undo = f" Undo with restore_session(backup_id={r.backup_id}) until {r.expires_at.isoformat()}." \
        if r.backup_id else " No backup was kept."
    return f"Deleted {r.session_id} ({rows}){' by force' if r.forced else ''}.{undo}"


def _usage_summary(r: t.UsageReport) -> str:
    def spent(u) -> str:
        return (f"{u.calls} call(s), {u.input_tokens} input + {u.output_tokens} output tokens, "
                f"{u.cost_micros / 1_000_000:.6f} {r.currency}")

    lines = [f"Usage {r.since} to {r.until} by {r.group_by}: {spent(r.total)}"
             + (" (more groups than limit)" if r.more else "")]
    lines += [f"- {g.key}: {spent(g)}" for g in r.data[:SUMMARY_GROUPS]]
    if len(r.data) > SUMMARY_GROUPS:
        lines.append(f"- ... {len(r.data) - SUMMARY_GROUPS} more in the structured result")
    for q in r.quotas:
        left = ", ".join(part for part in (
            f"{q.tokens_left} tokens" if q.tokens_left is not None else "",
            f"{q.cost_left_micros / 1_000_000:.6f} {r.currency}" if q.cost_left_micros is not None else "") if part)
        lines.append(f"Quota ({q.scope}, {q.period}): {left} left; resets {q.resets_at.isoformat()}")
    return "\n".join(lines)


SUMMARY_GROUPS = 50


def _search_summary(r: t.SearchResult) -> str:
    if not r.hits:
        return "No message matches."
    lines = [f"- {h.session_name} ({h.session_id}), {h.role}, {h.message_id}: {h.snippet}" for h in r.hits]
    return f"{len(r.hits)} hit(s){' (more: pass next_cursor)' if r.next_cursor else ''}:\n" + "\n".join(lines)


def tool_specs(tools: t.SessionTools) -> list[ToolSpec]:
    return [
        ToolSpec("list_sessions", "List sessions",
                 "The user's chat sessions, newest activity first, a page at a time (archived ones only with "
                 "include_archived). `query` keeps those whose name contains it, case-insensitively.",
                 t.ListSessionsArgs, t.SessionList, tools.list_sessions, _list_summary, _read_only()),
        ToolSpec("get_session", "Get a session",
                 "One session by id, with its usage (calls, tokens, cost so far); with include_messages, its "
                 "conversation too (the newest messages_limit).",
                 t.GetSessionArgs, t.SessionDetail, tools.get_session, _detail_summary, _read_only()),
        ToolSpec("get_usage", "Get usage and quotas",
                 "What this user's model calls used and cost between two UTC days (since, until: YYYY-MM-DD; "
                 "default the last 30 days), grouped by day, model or session (most costly first), with the "
                 "quotas that hold and what each leaves. The same as the API's GET /api/llm/usage.",
                 t.GetUsageArgs, t.UsageReport, tools.get_usage, _usage_summary, _read_only()),
        ToolSpec("search_messages", "Search messages",
                 "Search every message of the user's conversations (every branch, unless branch=active): hits "
                 "with their session, message id, role, time and a plain-text snippet with highlight offsets. "
                 "The same as the API's GET /api/llm/search.",
                 t.SearchMessagesArgs, t.SearchResult, tools.search_messages, _search_summary, _read_only()),
        ToolSpec("rename_session", "Rename a session",
                 "Give a session a new name (auto-naming never replaces it afterwards).",
                 t.RenameSessionArgs, t.SessionResult, tools.rename_session,
                 lambda r: f"Renamed {r.session.session_id} to {r.session.session_name!r}", _write()),
        ToolSpec("archive_session", "Archive or unarchive a session",
                 "archived=true hides the session from default lists (and stops new messages); false brings it back.",
                 t.ArchiveSessionArgs, t.SessionResult, tools.archive_session,
                 lambda r: f"{r.session.session_id} is {'archived' if r.session.is_archived else 'not archived'}",
                 _write()),
        ToolSpec("export_session", "Export a session",
                 "The session and every message of every branch as an export document (format chat-session/v2: "
                 "each message with its parent_id, and active_message_id, the active branch's last message), as "
                 "the API's export gives it.",
                 t.ExportSessionArgs, t.SessionExportV2, tools.export_session,
                 lambda r: f"Export of {r.session.session_id}: {len(r.messages)} message(s)", _read_only()),
        ToolSpec("delete_session", "Delete a session",
                 "Delete a session and every row of its conversation memory, in one transaction, with an audit "
                 "row. By default a backup (recovery point) is kept first: restore_session(backup_id) undoes the "
                 "delete until expires_at. A session whose reply is still being written is refused with "
                 "session_busy unless force=true. dry_run=true only reports what would be deleted. Reports "
                 "progress when the call carries a progress token.",
                 t.DeleteSessionArgs, t.DeleteResult, tools.delete_session, _delete_summary,
                 _write(destructive=True, idempotent=False), reports_progress=True),
        ToolSpec("restore_session", "Restore a deleted session",
                 "Undo a delete that kept a backup: the same session, name, messages and memory. Uses up the backup.",
                 t.RestoreSessionArgs, t.SessionResult, tools.restore_session,
                 lambda r: f"Restored {r.session.session_id} ({r.session.message_count} messages)",
                 _write(idempotent=False)),
    ]


def tool_error(code: str, message: str, fields: dict[str, str] | None = None) -> types.CallToolResult:
    error: dict[str, Any] = {"code": code, "message": message}
    if fields:
        error["fields"] = fields
    text = f"{code}: {message}" + (f" ({json.dumps(fields)})" if fields else "")
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)],
                                structured_content={"error": error}, is_error=True)


# Where a tool's error means something else than the code's usual hint.
_TOOL_HINTS = {
    ("restore_session", "not_found"): "No recovery point has this backup_id: it expired, was used already, or "
                                      "never existed. A backup_id comes from delete_session with backup=true.",
}


def api_error_result(exc: ApiError, tool: str | None = None) -> types.CallToolResult:
    code = "invalid_input" if exc.code == "validation_error" else exc.code
    return tool_error(code, _TOOL_HINTS.get((tool, code)) or _HINTS.get(code, exc.message), exc.fields)


def _require_user() -> AuthUser:
    user = acting_user.get()
    if user is None:  # a transport that forgot to say who is acting: refuse, never guess
        raise MCPError(code=types.INTERNAL_ERROR, message="No user is acting on this connection")
    return user


class SyncCalls:
    """How the tools run the (synchronous) services off the event loop, and how that
    synchronous code calls back into the loop (to send a progress notification).

    By default: anyio's worker threads (stdio). The HTTP transport substitutes
    the request's own thread or greenlet (backend/mcp_server/http.py).
    """

    async def run(self, fn: Callable[[], Any]) -> Any:
        return await anyio.to_thread.run_sync(fn)

    def call_async(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        return anyio.from_thread.run(fn)


sync_calls: ContextVar[SyncCalls] = ContextVar("mcp_sync_calls", default=SyncCalls())


async def _in_worker(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The services are synchronous (psycopg pool): run them off the event loop."""
    return await sync_calls.get().run(functools.partial(fn, *args, **kwargs))


def build_server(tools: t.SessionTools) -> Server:
    specs = {spec.name: spec for spec in tool_specs(tools)}
    definitions = [spec.definition() for spec in specs.values()]

    async def list_tools(ctx: ServerRequestContext, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=definitions)

    async def call_tool(ctx: ServerRequestContext, params: types.CallToolRequestParams) -> types.CallToolResult:
        user = _require_user()
        spec = specs.get(params.name)
        if spec is None:
            return tool_error("unknown_tool", f"There is no tool {params.name!r}; call tools/list to see them")
        try:
            args = spec.args.model_validate(params.arguments or {})
        except ValidationError as exc:
            fields = validation_fields(exc)
            name, problem = next(iter(fields.items()))
            return tool_error("invalid_input", f"Invalid {name}: {problem}. Correct the arguments and call again.",
                              fields)
        try:
            if spec.reports_progress:
                result = await _run_with_progress(ctx, spec, user, args)
            else:
                result = await _in_worker(spec.run, user, args)
        except ApiError as exc:
            log.info("mcp tool refused", extra={"tool": spec.name, "user_id": user.id, "code": exc.code})
            return api_error_result(exc, spec.name)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            event, code, message = database_failure(exc)
            log.warning(event, extra={"tool": spec.name, "error_class": type(exc).__name__})
            return tool_error(code, message)
        except Exception as exc:  # noqa: BLE001 - a bug: logged here, never its internals to the client
            log.exception("mcp tool failed", extra={"tool": spec.name, "error_class": type(exc).__name__})
            return tool_error("internal_error", "Something went wrong on our side")
        structured = _structured(result)
        log.info("mcp tool called", extra={"tool": spec.name, "user_id": user.id})
        return types.CallToolResult(content=[types.TextContent(type="text", text=spec.summary(result))],
                                    structured_content=structured)

    async def list_resource_templates(
        ctx: ServerRequestContext, params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=[types.ResourceTemplate(
            name="session", title="Chat session", uri_template=RESOURCE_TEMPLATE, mime_type="application/json",
            description="A chat session with its messages (JSON: {session, messages})",
        )])

    async def list_resources(
        ctx: ServerRequestContext, params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        page = await _in_worker(tools.list_sessions, _require_user(), t.ListSessionsArgs(limit=RESOURCE_LIST_LIMIT))
        return types.ListResourcesResult(resources=[
            types.Resource(name=s.session_id, title=s.session_name, uri=f"{RESOURCE_PREFIX}{s.session_id}",
                           mime_type="application/json") for s in page.sessions
        ])

    async def read_resource(ctx: ServerRequestContext, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        user = _require_user()
        uri = str(params.uri)
        session_id = uri.removeprefix(RESOURCE_PREFIX) if uri.startswith(RESOURCE_PREFIX) else None
        try:
            if session_id is None:
                raise ValueError
            SessionPath(session_id=session_id)
        except (ValueError, ValidationError):
            raise MCPError(code=types.INVALID_PARAMS, message=f"Not a session resource: expected {RESOURCE_TEMPLATE} "
                           f"with an id matching {SESSION_ID_PATTERN}", data={"uri": uri[:300]}) from None
        try:
            document = await _in_worker(tools.session_document, user, session_id)
        except ApiError as exc:
            code = types.INVALID_PARAMS if exc.status == 404 else types.INTERNAL_ERROR
            raise MCPError(code=code, message=_HINTS.get(exc.code, exc.message), data={"uri": uri, "code": exc.code})
        return types.ReadResourceResult(contents=[types.TextResourceContents(
            uri=uri, mime_type="application/json", text=json.dumps(document, ensure_ascii=False),
        )])

    return Server(
        SERVER_NAME,
        version="0.1.0",
        instructions="Manage this user's chat sessions: list, read, rename, archive, export, delete (with a backup "
                     "to undo, a dry run, and force for a session still answering) and restore; and see what "
                     "they cost (get_usage, and each session's usage in get_session).",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_resource_templates,
        on_read_resource=read_resource,
    )


def _structured(result: BaseModel) -> dict[str, Any]:
    """The result as JSON, leaving out optional fields that are null (`backup_id?`)."""
    required = {name for name, field in type(result).model_fields.items() if field.is_required()}
    return {k: v for k, v in result.model_dump(mode="json").items() if v is not None or k in required}


async def _run_with_progress(ctx: ServerRequestContext, spec: ToolSpec, user: AuthUser, args: BaseModel) -> BaseModel:
    """Run a tool in a worker thread, relaying its phases as MCP progress notifications
    (0-100, in order, ending at 100 once it has finished); a no-op for clients
    that sent no progress token."""

    calls = sync_calls.get()

    def progress(phase: str, fraction: float) -> None:
        calls.call_async(functools.partial(ctx.session.report_progress, round(fraction * 100), 100, phase))

    result = await _in_worker(spec.run, user, args, progress)
    await ctx.session.report_progress(100, 100, "done")
    return result

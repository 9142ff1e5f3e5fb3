"""The session tools an agent may call, as plain functions of one user over the services.

Each tool has an argument model (its JSON schema is what `tools/list`
publishes, and it validates every call before anything else runs) and a
result model. The work is the services' own: `SessionService` for reads,
renames, archives, deletes (with their transaction, audit row, recovery point
and events) and restores, so a tool can do nothing the HTTP API would refuse.
Failures are `ApiError`s with the API's codes; `backend.mcp_server.server`
turns them into MCP tool errors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StrictBool, Strict

from backend.auth.service import AuthUser
from backend.search.models import SearchHit, SearchLimit, SearchQueryText
from backend.search.service import SearchService
from backend.sessions.models import (
    MessageOut,
    MessagesLimit,
    PageCursor,
    PageLimit,
    SearchText,
    SessionId,
    SessionName,
    SessionOut,
)
from backend.sessions.documents import SessionExportV2, export_document
from backend.sessions.service import SessionService
from backend.usage.models import (
    GROUP_BY_DESCRIPTION,
    LIMIT_DESCRIPTION,
    SINCE_DESCRIPTION,
    UNTIL_DESCRIPTION,
    UsageDay,
    UsageGroupBy,
    UsageLimit,
    UsageReport,
)
from backend.usage.service import UsageService


class ToolArgs(BaseModel):
    # Unknown arguments (a user_id above all) are refused, not ignored.
    model_config = ConfigDict(extra="forbid")


# Every argument with an HTTP counterpart has the API's own type (backend/sessions/models.py:
# SessionId, SessionName, PageLimit, PageCursor, SearchText, MessagesLimit), so a tool refuses
# exactly what the API refuses; only strictness differs (JSON has real types, a query string
# has none): a number or a boolean must be one, not a string of one.
class ListSessionsArgs(ToolArgs):
    include_archived: StrictBool = Field(default=False, description="Include archived sessions")
    limit: Annotated[PageLimit, Strict()] = Field(default=50, description="Page size, 1-200")
    cursor: PageCursor | None = Field(default=None, description="next_cursor from the previous page")
    query: SearchText | None = Field(
        default=None, description="Only sessions whose name contains this text (case-insensitive); "
                                   "at most 200 characters, no control characters; empty: no filter"
    )


class GetSessionArgs(ToolArgs):
    session_id: SessionId
    include_messages: StrictBool = Field(default=False, description="Include the conversation")
    messages_limit: Annotated[MessagesLimit, Strict()] = Field(
        default=200, description="At most this many messages, the newest (1-1,000)"
    )


class RenameSessionArgs(ToolArgs):
    session_id: SessionId
    name: SessionName = Field(description="The new name: trimmed; 1-200 characters, no control characters")


class ArchiveSessionArgs(ToolArgs):
    session_id: SessionId
    archived: StrictBool = Field(description="true to archive, false to unarchive")


class ExportSessionArgs(ToolArgs):
    session_id: SessionId


class DeleteSessionArgs(ToolArgs):
    session_id: SessionId
    create_backup: StrictBool = Field(
        default=True, description="Keep a recovery point that restore_session can put back (until it expires)"
    )
    force: StrictBool = Field(default=False, description="Stop a reply still being written, then delete")
    dry_run: StrictBool = Field(default=False, description="Only report what would be deleted; change nothing")


class RestoreSessionArgs(ToolArgs):
    backup_id: UUID = Field(description="backup_id from delete_session")


# GET /api/llm/usage's parameters, with its types (backend/usage/models.py).
class GetUsageArgs(ToolArgs):
    group_by: UsageGroupBy = Field(default="day", description=GROUP_BY_DESCRIPTION)
    since: UsageDay | None = Field(default=None, description=SINCE_DESCRIPTION)
    until: UsageDay | None = Field(default=None, description=UNTIL_DESCRIPTION)
    limit: Annotated[UsageLimit, Strict()] = Field(default=400, description=LIMIT_DESCRIPTION)


# GET /api/llm/search's parameters, with its types (backend/search/models.py).
class SearchMessagesArgs(ToolArgs):
    query: SearchQueryText = Field(description=(
        "Words (all must match), \"exact phrases\", -excluded words; at most 200 characters and 12 terms"))
    session_id: SessionId | None = Field(default=None, description="Only this session's messages")
    role: Literal["user", "assistant"] | None = Field(default=None, description="Only the user's or the replies")
    include_archived: StrictBool = Field(default=False, description="Archived sessions' messages too")
    branch: Literal["all", "active"] = Field(default="all", description=(
        "all: every branch of each conversation; active: only what each conversation shows"))
    order: Literal["rank", "recent"] = Field(default="rank", description="Best matches first, or newest first")
    limit: Annotated[SearchLimit, Strict()] = Field(default=20, description="Hits per page, 1-50")
    cursor: PageCursor | None = Field(default=None, description="next_cursor from the previous page")


# --- results ---------------------------------------------------------------------


class SearchResult(BaseModel):
    hits: list[SearchHit]
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null on the last page")


class SessionList(BaseModel):
    sessions: list[SessionOut]
    count: int = Field(description="Sessions in this page")
    total: int = Field(description="Sessions that match; with a query, counted up to 100 (see total_exact)")
    total_exact: bool = Field(description="False when a query matched more than total")
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null on the last page")


class SessionDetail(BaseModel):
    session: SessionOut
    messages: list[MessageOut] | None = Field(default=None, description="With include_messages: newest last")
    has_more_messages: bool | None = Field(default=None, description="Older messages exist before these")
    reply_running: bool = Field(default=False, description="A reply is being written in the session now")


class SessionResult(BaseModel):
    session: SessionOut


class DeleteResult(BaseModel):
    session_id: str
    dry_run: bool
    deleted: dict[str, int] = Field(description="Rows removed per table (on a dry run: rows that would be)")
    reply_running: bool | None = Field(
        default=None, description="Dry run only: a reply is being written (a delete would need force=true)"
    )
    backup_id: UUID | None = Field(default=None, description="Pass to restore_session to undo")
    expires_at: datetime | None = Field(default=None, description="Until when the backup can be restored")
    forced: bool
    audit_id: int | None = Field(default=None, description="The audit row (session_deletions) of the delete")


Progress = Callable[[str, float], None]


@dataclass
class SessionTools:
    """The tools' work, on explicit services; every method acts as `user` only."""

    sessions: SessionService
    usage: UsageService | None = None  # get_usage, and get_session's `usage`
    search: SearchService | None = None  # search_messages

    def list_sessions(self, user: AuthUser, args: ListSessionsArgs) -> SessionList:
        page = self.sessions.list(
            user, include_archived=args.include_archived, limit=args.limit, offset=0, cursor=args.cursor,
            search=args.query,
        )
        return SessionList(
            sessions=[SessionOut.model_validate(r) for r in page.rows], count=len(page.rows), total=page.total,
            total_exact=page.total_exact, next_cursor=page.next_cursor,
        )

    def get_session(self, user: AuthUser, args: GetSessionArgs) -> SessionDetail:
        row = self.sessions.get(user, args.session_id, include_usage=True)
        running = self.sessions.reply_running(user, args.session_id)
        if not args.include_messages:
            return SessionDetail(session=SessionOut.model_validate(row), reply_running=running)
        messages, start = self.sessions.messages_page(row, limit=args.messages_limit, before=None)
        return SessionDetail(session=SessionOut.model_validate(row), messages=messages, has_more_messages=start > 0,
                             reply_running=running)

    def get_usage(self, user: AuthUser, args: GetUsageArgs) -> UsageReport:
        """The caller's totals, as GET /api/llm/usage gives them."""
        if self.usage is None:
            raise RuntimeError("get_usage needs the usage service")
        since, until = (date.fromisoformat(d) if d else None for d in (args.since, args.until))
        return UsageReport.model_validate(self.usage.totals(user, args.group_by, since, until, args.limit))

    def search_messages(self, user: AuthUser, args: SearchMessagesArgs) -> SearchResult:
        """The caller's messages that match, as GET /api/llm/search gives them."""
        if self.search is None:
            raise RuntimeError("search_messages needs the search service")
        filters = {"session_id": args.session_id, "role": args.role, "include_archived": args.include_archived,
                   "since": None, "until": None, "branch": args.branch}
        hits, next_cursor = self.search.search(user, args.query, filters=filters, order=args.order,
                                               cursor=args.cursor, limit=args.limit)
        return SearchResult(hits=[SearchHit.model_validate(h) for h in hits], next_cursor=next_cursor)

    def rename_session(self, user: AuthUser, args: RenameSessionArgs) -> SessionResult:
        row = self.sessions.update(user, args.session_id, session_name=args.name, is_archived=None)
        return SessionResult(session=SessionOut.model_validate(row))

    def archive_session(self, user: AuthUser, args: ArchiveSessionArgs) -> SessionResult:
        row = self.sessions.update(user, args.session_id, session_name=None, is_archived=args.archived)
        return SessionResult(session=SessionOut.model_validate(row))

    def export_session(self, user: AuthUser, args: ExportSessionArgs) -> SessionExportV2:
        return export_document(self.sessions.export(user, args.session_id, branches=True))

    def delete_session(self, user: AuthUser, args: DeleteSessionArgs, progress: Progress | None = None) -> DeleteResult:
        if args.dry_run:
            preview = self.sessions.delete_preview(user, args.session_id)
            return DeleteResult(session_id=args.session_id, dry_run=True, deleted=preview["deleted"],
                                reply_running=preview["run_live"], forced=False)
        outcome = self.sessions.delete(
            user, args.session_id, force=args.force, backup=args.create_backup, progress=progress
        )
        backup = outcome.backup or {}
        return DeleteResult(
            session_id=args.session_id, dry_run=False, deleted=outcome.deleted, backup_id=backup.get("backup_id"),
            expires_at=backup.get("expires_at"), forced=args.force, audit_id=outcome.audit_id,
        )

    def restore_session(self, user: AuthUser, args: RestoreSessionArgs) -> SessionResult:
        return SessionResult(session=SessionOut.model_validate(self.sessions.restore(user, args.backup_id)))

    def session_document(self, user: AuthUser, session_id: str) -> dict[str, Any]:
        """The `session://{session_id}` resource: the session and its whole conversation."""
        row = self.sessions.get(user, session_id)
        return {
            "session": SessionOut.model_validate(row).model_dump(mode="json"),
            "messages": [MessageOut.model_validate(m).model_dump(mode="json") for m in self.sessions.messages(row)],
        }

"""/api/llm/sessions: thin handlers that parse, call the service and shape the response."""

from __future__ import annotations

from flask_login import current_user
from flask_openapi3 import APIBlueprint, Tag

from backend.auth.routes import SECURITY, require_user
from backend.http import error_responses, ok
from backend.rate_limits import SESSION_WRITES, rate_limited
from backend.sessions.models import (
    BulkDeleteBody,
    BulkDeleteResponse,
    CreateSessionBody,
    DeleteSessionQuery,
    GetSessionQuery,
    ListSessionsQuery,
    RestoreSessionBody,
    SessionCreatedResponse,
    SessionDeletedResponse,
    SessionDetailResponse,
    SessionListResponse,
    SessionOut,
    SessionPath,
    SessionResponse,
    UpdateSessionBody,
    trusted_messages,
)
from backend.sessions.cleanup import SessionCleanup
from backend.sessions.documents import ExportQuery, SessionExportDocument, export_document
from backend.sessions.service import SessionService


def session_out(row: dict) -> SessionOut:
    return SessionOut.model_validate(row, from_attributes=False)


def sessions_api(sessions: SessionService, cleanup: SessionCleanup) -> APIBlueprint:
    bp = APIBlueprint(
        "sessions", __name__, url_prefix="/api/llm/sessions",
        abp_tags=[Tag(name="sessions")], abp_security=SECURITY,
    )
    bp.before_request(require_user)

    @bp.post(
        "",
        responses={200: SessionCreatedResponse, 201: SessionCreatedResponse, **error_responses(400, 401, 403, 409, 413, 429, 500, 503)},
    )
    @rate_limited(SESSION_WRITES)
    def create_session(body: CreateSessionBody):
        """Create a session; an id the caller already has returns that session unchanged (200)."""
        row, created = sessions.create(current_user, body.session_id, body.session_name)
        response = SessionCreatedResponse(data=session_out(row), session_id=row["session_id"], thread_id=row["thread_id"])
        return ok(response, 201 if created else 200)

    @bp.get("", responses={200: SessionListResponse, **error_responses(400, 401, 500, 503)})
    def list_sessions(query: ListSessionsQuery):
        """The caller's sessions, newest activity first; archived ones only when asked; ?q= searches names."""
        page = sessions.list(
            current_user,
            include_archived=query.include_archived,
            limit=query.limit,
            offset=query.offset,
            cursor=query.cursor,
            unread=query.unread,
            search=query.q,
            include_usage=query.include_usage,
        )
        return ok(
            SessionListResponse(
                data=[session_out(r) for r in page.rows],
                count=len(page.rows),
                total=page.total,
                total_exact=page.total_exact,
                limit=page.limit,
                offset=page.offset,
                next_cursor=page.next_cursor,
            )
        )

    @bp.post("/bulk-delete", responses={200: BulkDeleteResponse, **error_responses(400, 401, 403, 413, 429, 500, 503)})
    @rate_limited(SESSION_WRITES)
    def bulk_delete_sessions(body: BulkDeleteBody):
        """Delete many sessions, each exactly as a single delete (own transaction, audit row, event); safe to retry."""
        flt = body.filter
        results, more = cleanup.bulk_delete(
            current_user._get_current_object(), session_ids=body.session_ids,
            archived=flt.archived if flt else None, inactive_days=flt.inactive_days if flt else None,
            backup=body.backup, force=body.force,
        )
        deleted_count = sum(r["status"] == "deleted" for r in results)
        # `deleted` and `backup` only where a session went (and was kept for undo).
        return ok(BulkDeleteResponse(results=results, deleted_count=deleted_count, more=more), exclude_none=True)

    @bp.get("/<session_id>", responses={200: SessionDetailResponse, **error_responses(400, 401, 404, 500, 503)})
    def get_session(path: SessionPath, query: GetSessionQuery):
        """One session; with include_messages=true, its conversation too; with include_usage=true, its cost."""
        row = sessions.get(current_user, path.session_id, include_usage=query.include_usage)
        if not query.include_messages:
            return ok(SessionDetailResponse(data=session_out(row)),
                      exclude={"messages", "messages_start", "has_more_messages"})
        messages, start = sessions.messages_page(row, limit=query.messages_limit, before=query.messages_before)
        return ok(SessionDetailResponse(data=session_out(row), messages=trusted_messages(messages), messages_start=start,
                                        has_more_messages=start > 0))

    @bp.get("/<session_id>/export",
            responses={200: SessionExportDocument, **error_responses(400, 401, 404, 500, 503)})
    def export_session(path: SessionPath, query: ExportQuery):
        """The session as a JSON document to keep, or to import again: chat-session/v2 (every branch
        of the conversation and the active one's last message), or with ?format=v1 chat-session/v1
        (the active path only)."""
        document = export_document(sessions.export(current_user, path.session_id, branches=query.format == "v2"))
        response = ok(document)
        response.headers["Content-Disposition"] = f'attachment; filename="{path.session_id}.json"'
        return response

    @bp.post("/<session_id>/read", responses={200: SessionResponse, **error_responses(400, 401, 403, 404, 429, 500, 503)})
    @rate_limited(SESSION_WRITES)
    def mark_session_read(path: SessionPath):
        """Mark the session's replies read: clears has_unread on every tab (idempotent)."""
        return ok(SessionResponse(data=session_out(sessions.mark_read(current_user, path.session_id))))

    @bp.put("/<session_id>", responses={200: SessionResponse, **error_responses(400, 401, 403, 404, 413, 429, 500, 503)})
    @rate_limited(SESSION_WRITES)
    def update_session(path: SessionPath, body: UpdateSessionBody):
        """Rename and/or archive. message_count belongs to the server."""
        row = sessions.update(
            current_user, path.session_id, session_name=body.session_name, is_archived=body.is_archived
        )
        return ok(SessionResponse(data=session_out(row)))

    @bp.delete("/<session_id>", responses={200: SessionDeletedResponse, **error_responses(400, 401, 403, 404, 409, 429, 500, 503)})
    @rate_limited(SESSION_WRITES)
    def delete_session(path: SessionPath, query: DeleteSessionQuery):
        """Delete the session and every LangGraph row of its thread, atomically; with backup=true, undoable."""
        outcome = sessions.delete(current_user, path.session_id, force=query.force, backup=query.backup)
        response = SessionDeletedResponse(session_id=path.session_id, deleted=outcome.deleted, backup=outcome.backup)
        return ok(response, exclude=None if query.backup else {"backup"})

    @bp.post("/restore", responses={201: SessionResponse, **error_responses(400, 401, 403, 404, 409, 413, 429, 500, 503)})
    @rate_limited(SESSION_WRITES)
    def restore_session(body: RestoreSessionBody):
        """Undo a delete made with backup=true: the same session, messages and memory. Consumes the recovery point."""
        row = sessions.restore(current_user, body.backup_id)
        return ok(SessionResponse(data=session_out(row)), 201)

    return bp

"""/api/llm/query/stream: one chat turn, streamed as Server-Sent Events; and the import of a session."""

from __future__ import annotations

from flask import Response
from flask_login import current_user
from flask_openapi3 import APIBlueprint, Tag

from backend.auth.routes import SECURITY, require_user
from backend.chat.importer import SessionImporter
from backend.chat.models import STREAM_DESCRIPTION, STREAM_RESPONSE, EditBody, QueryBody, RegenerateBody
from backend.chat.service import ChatService, QueuedTurn, Turn
from backend.messages.models import MessagePath
from backend.http import error_responses, ok
from backend.rate_limits import CHAT, SESSION_WRITES, rate_limited
from backend.sessions.documents import ImportSessionBody
from backend.sessions.models import SessionResponse
from backend.sessions.routes import session_out


def chat_api(chat: ChatService, importer: SessionImporter) -> APIBlueprint:
    bp = APIBlueprint("chat", __name__, url_prefix="/api/llm", abp_tags=[Tag(name="chat")], abp_security=SECURITY)
    bp.before_request(require_user)

    @bp.post(
        "/query/stream",
        responses={200: STREAM_RESPONSE, **error_responses(400, 401, 403, 404, 409, 413, 429, 500, 503)},
        description=STREAM_DESCRIPTION,
    )
    @rate_limited(CHAT)
    def query_stream(body: QueryBody):
        """Send a message and stream the reply. The session is created on first use."""
        turn = chat.start_turn(current_user._get_current_object(), body.session_id, body.query, body.multitask_strategy)
        return streamed(turn)

    @bp.post(
        "/sessions/<session_id>/messages/<message_id>/edit",
        responses={200: STREAM_RESPONSE, **error_responses(400, 401, 403, 404, 409, 413, 429, 500, 503)},
        description=STREAM_DESCRIPTION,
    )
    @rate_limited(CHAT)
    def edit_message(path: MessagePath, body: EditBody):
        """Ask a user message again with new text: a new branch (the message's sibling), answered
        and streamed as a chat turn. The branch it leaves stays intact."""
        return streamed(chat.start_branch_turn(current_user._get_current_object(), path.session_id, path.message_id,
                                               query=body.query, strategy=body.multitask_strategy))

    @bp.post(
        "/sessions/<session_id>/messages/<message_id>/regenerate",
        responses={200: STREAM_RESPONSE, **error_responses(400, 401, 403, 404, 409, 413, 429, 500, 503)},
        description=STREAM_DESCRIPTION,
    )
    @rate_limited(CHAT)
    def regenerate_message(path: MessagePath, body: RegenerateBody):
        """Answer the same question again: a new reply beside this one, streamed as a chat turn."""
        return streamed(chat.start_branch_turn(current_user._get_current_object(), path.session_id, path.message_id,
                                               query=None, strategy=body.multitask_strategy))

    def streamed(turn: Turn | QueuedTurn) -> Response:
        # No stream_with_context: the stream needs nothing from the request, and
        # keeping its context pushed would let it leak into other requests (and
        # their flask-login user) in the same thread. Bytes passed straight
        # through: no wrapper between the server and the stream per chunk.
        return Response(
            chat.stream(turn),
            mimetype="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            direct_passthrough=True,
        )

    @bp.post(
        "/sessions/import",
        responses={201: SessionResponse, **error_responses(400, 401, 403, 409, 413, 429, 500, 503)},
    )
    @rate_limited(SESSION_WRITES)
    def import_session(body: ImportSessionBody):
        """A new session from an export document (chat-session/v2: every branch, the active one
        continued; or chat-session/v1: one line); the next turn continues its memory."""
        row = importer.import_session(
            current_user._get_current_object(),
            session_id=body.session_id or body.session.session_id,
            session_name=body.session.session_name,
            is_archived=body.session.is_archived,
            messages=[m.model_dump() for m in body.messages],
            document_format=body.format,
            active_message_id=body.active_message_id,
        )
        return ok(SessionResponse(data=session_out(row)), 201)

    return bp

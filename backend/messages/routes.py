"""/api/llm/sessions/<id>/branch and .../messages/<message_id>/feedback: thin handlers over
MessageService. (Edit and regenerate stream a reply: they are chat turns, in backend/chat/routes.py.)"""

from __future__ import annotations

from flask_login import current_user
from flask_openapi3 import APIBlueprint, Tag

from backend.auth.routes import SECURITY, require_user
from backend.http import error_responses, ok
from backend.messages.models import (
    BranchResponse,
    FeedbackBody,
    MessagePath,
    MessageResponse,
    SessionBranchPath,
    SwitchBranchBody,
)
from backend.messages.service import MessageService
from backend.rate_limits import SESSION_WRITES, rate_limited
from backend.sessions.models import MessageOut, trusted_messages
from backend.sessions.routes import session_out
from backend.sessions.service import SessionService

# What a switch answers with: the new path's newest messages, as a get with include_messages would.
BRANCH_PAGE = 200


def messages_api(sessions: SessionService, messages: MessageService) -> APIBlueprint:
    bp = APIBlueprint("messages", __name__, url_prefix="/api/llm/sessions", abp_tags=[Tag(name="messages")],
                      abp_security=SECURITY)
    bp.before_request(require_user)

    @bp.put("/<session_id>/branch",
            responses={200: BranchResponse, **error_responses(400, 401, 403, 404, 409, 413, 429, 500, 503)})
    @rate_limited(SESSION_WRITES)
    def switch_branch(path: SessionBranchPath, body: SwitchBranchBody):
        """Make the path through a message (down to its newest reply) the active one: what the
        session shows, counts and continues from. 409 session_busy while a reply is being written."""
        user = current_user._get_current_object()
        row = messages.switch(user, sessions.get(user, path.session_id), body.message_id)
        page, start = messages.page(row, limit=BRANCH_PAGE, before=None)
        return ok(BranchResponse(data=session_out(row), messages=trusted_messages(page), messages_start=start,
                                 has_more_messages=start > 0))

    @bp.put("/<session_id>/messages/<message_id>/feedback",
            responses={200: MessageResponse, **error_responses(400, 401, 403, 404, 413, 429, 500, 503)})
    @rate_limited(SESSION_WRITES)
    def rate_message(path: MessagePath, body: FeedbackBody):
        """Rate a reply up or down (null clears), with an optional comment; idempotent. A rating
        does not move the session in the list."""
        user = current_user._get_current_object()
        rated = messages.rate(user, sessions.get(user, path.session_id), path.message_id, body.rating, body.comment)
        return ok(MessageResponse(data=MessageOut.model_validate(rated)))

    return bp

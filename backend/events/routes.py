"""/api/llm/events: the caller's session events as Server-Sent Events."""

from __future__ import annotations

from collections.abc import Callable

import jwt
from flask import Response, request
from flask_login import current_user
from flask_openapi3 import APIBlueprint, Tag

from backend.auth.routes import SECURITY, require_user
from backend.auth.service import AuthService
from backend.errors import ApiError
from backend.events.models import EVENTS_DESCRIPTION, EVENTS_RESPONSE, EventsQuery
from backend.events.service import EventService
from backend.http import error_responses

EVENTS_PATH = "/api/llm/events"


def _credentials_valid_until(auth: AuthService, user) -> Callable[[], float | None]:
    """Until when this request's credentials hold: a bearer token's `exp` (already
    verified), or a cookie sign-in's lifetime and idle limit, asked of the
    database again when it comes (a sign-out ends it)."""
    if user.via == "cookie":
        return lambda: auth.cookie_valid_until(user.id, user.session_id)
    _, _, token = request.headers.get("Authorization", "").partition(" ")
    exp = jwt.decode(token.strip(), options={"verify_signature": False}).get("exp")
    expires = float(exp) if isinstance(exp, (int, float)) else float("inf")
    return lambda: expires


def events_api(events_service: EventService | None, auth: AuthService) -> APIBlueprint:
    """`events_service` None: EVENTS_ENABLED=false, and the route says so (503)."""
    prefix, _, path = EVENTS_PATH.rpartition("/")
    bp = APIBlueprint("events", __name__, url_prefix=prefix, abp_tags=[Tag(name="events")], abp_security=SECURITY)
    bp.before_request(require_user)

    @bp.get("/" + path, responses={200: EVENTS_RESPONSE, **error_responses(400, 401, 429, 500, 503)},
            description=EVENTS_DESCRIPTION)
    def events(query: EventsQuery):
        """Live changes to the caller's sessions, resumable with Last-Event-ID."""
        if events_service is None:
            raise ApiError(503, "events_disabled", "Live events are turned off on this server (EVENTS_ENABLED=false)")
        last_event_id = request.headers.get("Last-Event-ID") or query.last_event_id
        user = current_user._get_current_object()
        valid_until = _credentials_valid_until(auth, user)
        # The cap's check and the stream's place are taken in one step (EventService.open_stream).
        body = events_service.open_stream(user.id, last_event_id, valid_until)
        if body is None:
            raise ApiError(429, "too_many_streams", "Too many event streams are open for this account; close a tab",
                           headers={"Retry-After": "30"})
        try:
            return Response(
                body,
                mimetype="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                direct_passthrough=True,  # bytes, straight to the server: the least an idle stream can hold
            )
        except BaseException:
            body.close()
            raise

    return bp

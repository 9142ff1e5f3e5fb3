"""/api/llm/sessions/<id>/runs: thin handlers over RunService (list, join, cancel)."""

from __future__ import annotations

from flask import Response, request
from flask_login import current_user
from flask_openapi3 import APIBlueprint, Tag

from backend.auth.routes import SECURITY, require_user
from backend.errors import ApiError
from backend.http import error_responses, ok
from backend.rate_limits import SESSION_WRITES, rate_limited
from backend.runs.models import (
    RUN_STREAM_DESCRIPTION,
    RUN_STREAM_RESPONSE,
    RunListResponse,
    RunOut,
    RunPath,
    RunResponse,
    RunStreamQuery,
    SessionRunsPath,
)
from backend.runs.service import RunService

MAX_CURSOR_DIGITS = 20


def _cursor(query: RunStreamQuery) -> int | None:
    """Last-Event-ID (the header, as EventSource sends it, wins over ?last_event_id=)."""
    value = request.headers.get("Last-Event-ID") or query.last_event_id
    if value is None or value == "":
        return None
    if not value.isascii() or not value.isdigit() or len(value) > MAX_CURSOR_DIGITS:
        raise ApiError(400, "invalid_cursor", "Last-Event-ID must be an event id of this run's stream",
                       fields={"last_event_id": "an event id of this run's stream"})
    return int(value)


def runs_api(runs: RunService) -> APIBlueprint:
    bp = APIBlueprint("runs", __name__, url_prefix="/api/llm/sessions", abp_tags=[Tag(name="runs")],
                      abp_security=SECURITY)
    bp.before_request(require_user)

    @bp.get("/<session_id>/runs", responses={200: RunListResponse, **error_responses(400, 401, 404, 500, 503)})
    def list_runs(path: SessionRunsPath):
        """The session's runs: being written, and ended within RUN_REPLAY_SECONDS; oldest first."""
        rows = runs.list(current_user._get_current_object(), path.session_id)
        return ok(RunListResponse(data=[RunOut.model_validate(r) for r in rows]))

    @bp.get(
        "/<session_id>/runs/<run_id>/stream",
        responses={200: RUN_STREAM_RESPONSE, **error_responses(400, 401, 404, 500, 503)},
        description=RUN_STREAM_DESCRIPTION,
    )
    def join_run(path: RunPath, query: RunStreamQuery):
        """Follow a run from any tab or process: the reply so far (or after Last-Event-ID), then live."""
        body = runs.join(current_user._get_current_object(), path.session_id, path.run_id, _cursor(query))
        return Response(body, mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}, direct_passthrough=True)

    @bp.post("/<session_id>/runs/<run_id>/cancel",
             responses={200: RunResponse, **error_responses(400, 401, 403, 404, 409, 429, 500, 503)})
    @rate_limited(SESSION_WRITES)
    def cancel_run(path: RunPath):
        """Stop the run from any tab or process; its text so far is kept, marked stopped. 409 run_finished once it ended."""
        row = runs.cancel(current_user._get_current_object(), path.session_id, path.run_id)
        return ok(RunResponse(data=RunOut.model_validate(row)))

    return bp

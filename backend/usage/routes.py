"""/api/llm/usage and /api/llm/sessions/<id>/usage: thin handlers over UsageService."""

from __future__ import annotations

from datetime import date

from flask_login import current_user
from flask_openapi3 import APIBlueprint, Tag

from backend.auth.routes import SECURITY, require_user
from backend.errors import ApiError
from backend.http import error_responses, ok
from backend.usage.models import SessionUsage, SessionUsagePath, SessionUsageResponse, UsageQuery, UsageResponse
from backend.usage.service import UsageService


def _day(value: str | None, name: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ApiError(400, "bad_request", f"{name} is not a day", fields={name: "a day as YYYY-MM-DD"}) from None


def usage_api(usage: UsageService) -> APIBlueprint:
    bp = APIBlueprint("usage", __name__, url_prefix="/api/llm", abp_tags=[Tag(name="usage")],
                      abp_security=SECURITY)
    bp.before_request(require_user)

    @bp.get("/usage", responses={200: UsageResponse, **error_responses(400, 401, 500, 503)})
    def usage_totals(query: UsageQuery):
        """The caller's usage between two UTC days, grouped by day, model or session, with their quotas."""
        result = usage.totals(current_user._get_current_object(), query.group_by,
                              _day(query.since, "since"), _day(query.until, "until"), query.limit)
        return ok(UsageResponse.model_validate(result))

    @bp.get("/sessions/<session_id>/usage",
            responses={200: SessionUsageResponse, **error_responses(400, 401, 404, 500, 503)})
    def session_usage(path: SessionUsagePath):
        """What the session cost: every run (every branch) and its naming calls."""
        row = usage.session_usage(current_user._get_current_object(), path.session_id)
        return ok(SessionUsageResponse(data=SessionUsage.model_validate(row)))

    return bp

"""/api/llm/search: a thin handler over SearchService."""

from __future__ import annotations

from flask_login import current_user
from flask_openapi3 import APIBlueprint, Tag

from backend.auth.routes import SECURITY, require_user
from backend.http import error_responses, ok
from backend.search.models import SearchHit, SearchQuery, SearchResponse
from backend.search.service import SearchService


def search_filters(query: SearchQuery) -> dict:
    return {"session_id": query.session_id, "role": query.role, "include_archived": query.include_archived,
            "since": query.since, "until": query.until, "branch": query.branch}


def search_api(search: SearchService) -> APIBlueprint:
    bp = APIBlueprint("search", __name__, url_prefix="/api/llm", abp_tags=[Tag(name="search")],
                      abp_security=SECURITY)
    bp.before_request(require_user)

    @bp.get("/search", responses={200: SearchResponse, **error_responses(400, 401, 500, 503)})
    def search_messages(query: SearchQuery):
        """Search the caller's messages, every conversation and branch: hits with plain-text snippets."""
        hits, next_cursor = search.search(current_user._get_current_object(), query.q, filters=search_filters(query),
                                          order=query.order, cursor=query.cursor, limit=query.limit)
        return ok(SearchResponse(data=[SearchHit.model_validate(h) for h in hits], next_cursor=next_cursor))

    return bp

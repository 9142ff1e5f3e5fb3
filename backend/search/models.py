"""The search route's query and response; the MCP tool's arguments use the same types."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, Field

from backend.http import QueryModel, SuccessModel, UtcDatetime
from backend.search.query import MAX_QUERY_CHARS
from backend.sessions.models import MESSAGE_PATTERN, PageCursor, SessionId, check_message_text

MAX_SEARCH_PAGE = 50

SearchLimit = Annotated[int, Field(ge=1, le=MAX_SEARCH_PAGE)]
# Not blank, no control characters: what a message may hold, at most 200 characters.
SearchQueryText = Annotated[
    str,
    Field(min_length=1, max_length=MAX_QUERY_CHARS, json_schema_extra={"pattern": MESSAGE_PATTERN}),
    AfterValidator(check_message_text),
]


class SearchQuery(QueryModel):
    q: SearchQueryText = Field(description=(
        "Words (all must match), \"exact phrases\", -excluded words; a word of a script written without "
        "spaces (Chinese, Japanese, Thai...) matches as a substring, and a lone word found as no word "
        "is looked for as a substring. At most 200 characters and 12 terms"))
    session_id: SessionId | None = Field(default=None, description="Only this session's messages")
    role: Literal["user", "assistant"] | None = None
    include_archived: bool = Field(default=False, description="Archived sessions' messages too")
    since: AwareDatetime | None = Field(default=None, description="Messages written at or after (ISO 8601, with a zone)")
    until: AwareDatetime | None = Field(default=None, description="Messages written before (ISO 8601, with a zone)")
    branch: Literal["all", "active"] = Field(default="all", description=(
        "all: every branch of each conversation; active: only what each conversation shows"))
    order: Literal["rank", "recent"] = Field(default="rank", description=(
        "rank: best matches first (among the newest 5,000 messages when a page matches there); "
        "recent: newest first"))
    limit: SearchLimit = 20
    cursor: PageCursor | None = Field(default=None, description="next_cursor of the previous page, same q and order")


class SearchHit(BaseModel):
    session_id: str
    session_name: str
    message_id: str
    role: Literal["user", "assistant"]
    created_at: UtcDatetime | None
    on_active_branch: bool = Field(description="The message is on the path its conversation shows")
    snippet: str = Field(description="Plain text around the match (never markup)")
    highlights: list[list[int]] = Field(description="[start, end) character offsets of the matches in snippet")


class SearchResponse(SuccessModel):
    data: list[SearchHit]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page")

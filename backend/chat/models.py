"""Request model for /api/llm/query/stream, and the stream's documented events."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from backend.http import ApiModel
from backend.sessions.models import SessionId

MAX_QUERY_CHARS = 32_000
# Tabs and newlines are text; other C0 controls (NUL above all) are not.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class QueryBody(ApiModel):
    session_id: SessionId
    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, description="The user's message")

    @field_validator("query")
    @classmethod
    def _readable(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        if _CONTROL.search(value):
            raise ValueError("must not contain control characters")
        return value


STREAM_DESCRIPTION = """Server-Sent Events, in order:

- `event: token` with `data: {"content": "..."}`, one per piece of the reply;
- then `event: done` with `data: {"session_id", "message_count", "session_name"}`;
- or, if the turn fails after streaming began, `event: error` with `data: {"code", "message"}`,
  and the stream ends. Codes: `upstream_error`, `upstream_timeout`, `upstream_rate_limited`,
  `cancelled`, `session_deleted`, `internal_error`.

Lines starting with `:` are heartbeats; ignore them."""

STREAM_RESPONSE = {
    "description": "The reply, streamed",
    "content": {"text/event-stream": {"schema": {"type": "string", "description": STREAM_DESCRIPTION}}},
}

"""Request model for /api/llm/query/stream, and the stream's documented events."""

from __future__ import annotations

from pydantic import Field

from backend.http import ApiModel, json_object, sse_event_schema
from backend.sessions.models import MessageText, SessionId

class QueryBody(ApiModel):
    session_id: SessionId
    query: MessageText = Field(description="The user's message; not blank, no control characters")


STREAM_DESCRIPTION = """Server-Sent Events, in order:

- `event: token` with `data: {"content": "..."}`, one per piece of the reply;
- then `event: done` with `data: {"session_id", "message_count", "session_name"}`;
- or, if the turn fails after streaming began, `event: error` with `data: {"code", "message"}`,
  and the stream ends. Codes: `upstream_error`, `upstream_timeout`, `upstream_rate_limited`,
  `cancelled`, `session_deleted`, `slow_client` (the client stopped reading), `turn_too_long`, `internal_error`.

Lines starting with `:` are heartbeats; ignore them."""

_STRING, _INTEGER = {"type": "string"}, {"type": "integer"}

# OpenAPI's itemSchema: the schema of each event in the stream, not of the whole body.
STREAM_RESPONSE = {
    "description": "The reply, streamed",
    "content": {
        "text/event-stream": {
            "itemSchema": {
                "oneOf": [
                    sse_event_schema("token", json_object(content=_STRING)),
                    sse_event_schema("done", json_object(session_id=_STRING, message_count=_INTEGER, session_name=_STRING)),
                    sse_event_schema("error", json_object(code=_STRING, message=_STRING)),
                ]
            }
        }
    },
}

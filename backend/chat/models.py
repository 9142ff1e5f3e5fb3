"""Request model for /api/llm/query/stream, and the stream's documented events."""

from __future__ import annotations

from pydantic import Field

from backend.http import ApiModel
from backend.sessions.models import MessageText, SessionId

class QueryBody(ApiModel):
    session_id: SessionId
    query: MessageText = Field(description="The user's message; not blank, no control characters")


STREAM_DESCRIPTION = """Server-Sent Events, in order:

- `event: token` with `data: {"content": "..."}`, one per piece of the reply;
- then `event: done` with `data: {"session_id", "message_count", "session_name"}`;
- or, if the turn fails after streaming began, `event: error` with `data: {"code", "message"}`,
  and the stream ends. Codes: `upstream_error`, `upstream_timeout`, `upstream_rate_limited`,
  `cancelled`, `session_deleted`, `slow_client` (the client stopped reading), `internal_error`.

Lines starting with `:` are heartbeats; ignore them."""

def _event(name: str, data: dict) -> dict:
    """One SSE event: its name, and a JSON `data` line of the given shape."""
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"const": name},
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": data},
        },
    }


def _object(**properties: dict) -> dict:
    return {"type": "object", "required": list(properties), "properties": properties}


_STRING, _INTEGER = {"type": "string"}, {"type": "integer"}

# OpenAPI's itemSchema: the schema of each event in the stream, not of the whole body.
STREAM_RESPONSE = {
    "description": "The reply, streamed",
    "content": {
        "text/event-stream": {
            "itemSchema": {
                "oneOf": [
                    _event("token", _object(content=_STRING)),
                    _event("done", _object(session_id=_STRING, message_count=_INTEGER, session_name=_STRING)),
                    _event("error", _object(code=_STRING, message=_STRING)),
                ]
            }
        }
    },
}

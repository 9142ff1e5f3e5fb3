"""Request model for /api/llm/query/stream, and the stream's documented events."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from backend.http import ApiModel
from backend.sessions.models import STRIPPED_CHARS, SessionId

MAX_QUERY_CHARS = 32_000
# Tabs and newlines are text; other C0 controls (NUL above all) are not.
_CONTROL_CHARS = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f"
_CONTROL = re.compile(f"[{_CONTROL_CHARS}]")
# The validator below, as a JSON Schema pattern for the document: no control
# characters, and at least one that strip() keeps (not blank).
QUERY_PATTERN = f"^[^{_CONTROL_CHARS}]*[^{_CONTROL_CHARS}{STRIPPED_CHARS}][^{_CONTROL_CHARS}]*$"


class QueryBody(ApiModel):
    session_id: SessionId
    query: str = Field(
        min_length=1, max_length=MAX_QUERY_CHARS, description="The user's message; not blank, no control characters",
        json_schema_extra={"pattern": QUERY_PATTERN},
    )

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

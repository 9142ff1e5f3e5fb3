"""Request model for /api/llm/query/stream, and the stream's documented events."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from backend.http import ApiModel, json_object, sse_event_schema
from backend.sessions.models import MessageText, SessionId

class EditBody(ApiModel):
    query: MessageText = Field(description="The message's new text; not blank, no control characters")
    multitask_strategy: Literal["reject", "interrupt"] = Field(
        default="reject",
        description="While a reply runs in the session: reject (409 session_busy) or interrupt (stop that "
                    "reply, keeping its text, then run)",
    )


class RegenerateBody(ApiModel):
    multitask_strategy: Literal["reject", "interrupt"] = Field(
        default="reject",
        description="While a reply runs in the session: reject (409 session_busy) or interrupt (stop that "
                    "reply, keeping its text, then run)",
    )


class QueryBody(ApiModel):
    session_id: SessionId
    query: MessageText = Field(description="The user's message; not blank, no control characters")
    multitask_strategy: Literal["reject", "enqueue", "interrupt", "rollback"] = Field(
        default="reject",
        description="While a reply runs in the session: reject (409 session_busy), enqueue (wait its turn; the "
                    "stream starts with a `run` event of status queued), interrupt (stop that reply, keeping its "
                    "text, then run) or rollback (stop it and discard it with its message, then run)",
    )


STREAM_DESCRIPTION = """Server-Sent Events, in order, each with an `id:` cursor (opaque, increasing):

- `event: run` with `data: {"run_id", "session_id", "status"}`: the run this reply is (join it again
  at `/api/llm/sessions/{session_id}/runs/{run_id}/stream`, from the last `id:` seen, to resume);
- `event: token` with `data: {"content": "..."}`, one per piece of the reply;
- then `event: done` with `data: {"session_id", "message_count", "session_name", "run_id",
  "user_message_id", "assistant_message_id"}` (the ids of the message answered and of the reply, as
  `include_messages` gives them: edit, regenerate and rate them by these);
- or, if the turn fails after streaming began, `event: error` with `data: {"code", "message", "run_id"}`,
  and the stream ends. Codes: `upstream_error`, `upstream_timeout`, `upstream_rate_limited`,
  `cancelled`, `session_deleted`, `slow_client` (the client stopped reading), `turn_too_long`,
  `interrupted`, `internal_error`.

Closing the connection leaves the reply running to its end (RUN_ON_DISCONNECT=continue; `cancel`
stops it). Lines starting with `:` are heartbeats; ignore them."""

_STRING, _INTEGER = {"type": "string"}, {"type": "integer"}

_DONE = json_object(session_id=_STRING, message_count=_INTEGER, session_name=_STRING, run_id=_STRING)
# Not required: a custom graph whose state keeps no message list names none.
_DONE["properties"].update(user_message_id={"type": ["string", "null"]}, assistant_message_id={"type": ["string", "null"]})

# The events of a run's stream: the turn's own, and a join's (backend/runs).
STREAM_EVENTS = [
    sse_event_schema("run", json_object(run_id=_STRING, session_id=_STRING, status=_STRING)),
    sse_event_schema("token", json_object(content=_STRING)),
    sse_event_schema("done", _DONE),
    sse_event_schema("error", json_object(code=_STRING, message=_STRING, run_id=_STRING)),
]

# OpenAPI's itemSchema: the schema of each event in the stream, not of the whole body.
STREAM_RESPONSE = {
    "description": "The reply, streamed",
    "content": {"text/event-stream": {"itemSchema": {"oneOf": STREAM_EVENTS}}},
}

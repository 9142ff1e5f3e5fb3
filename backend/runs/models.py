"""The runs routes' paths, query, responses and the run stream's documented events."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, Field

from backend.chat.models import STREAM_EVENTS
from backend.http import QueryModel, SuccessModel, UtcDatetime
from backend.sessions.models import SessionId

RunStatus = Literal["queued", "running", "done", "error", "cancelled", "interrupted"]


class SessionRunsPath(BaseModel):
    session_id: SessionId


class RunPath(BaseModel):
    session_id: SessionId
    run_id: uuid.UUID


class RunStreamQuery(QueryModel):
    last_event_id: str | None = Field(
        default=None, max_length=20, pattern=r"^[0-9]+$",
        description="Resume after this event id (as the Last-Event-ID header does; the header wins)",
    )


class RunOut(BaseModel):
    run_id: uuid.UUID
    status: RunStatus
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    ended_at: UtcDatetime | None


class RunListResponse(SuccessModel):
    data: list[RunOut]


class RunResponse(SuccessModel):
    data: RunOut


RUN_STREAM_DESCRIPTION = """Server-Sent Events of one run, each with an `id:` cursor (opaque, increasing):

- `event: run` with `data: {"run_id", "session_id", "status"}` (id 0);
- `event: token` with `data: {"content"}`: without a cursor, the reply so far, then live text;
  with `Last-Event-ID` (or `?last_event_id=`), exactly the text after that cursor;
- then the terminal event the original stream got: `done` with `{"session_id", "message_count",
  "session_name", "run_id"}`, or `error` with `{"code", "message", "run_id"}` (codes as the chat
  stream's, and `interrupted`: the server writing the reply stopped).

The text of the `token` events equals the reply saved in the session. Lines starting with `:` are
heartbeats."""

RUN_STREAM_RESPONSE = {
    "description": "The run's reply, streamed",
    "content": {"text/event-stream": {"itemSchema": {"oneOf": STREAM_EVENTS}}},
}

"""The events stream's query and its documented events."""

from __future__ import annotations

from pydantic import Field

from backend.http import QueryModel, json_object, sse_event_schema
from backend.sessions.models import DELETED_ROWS_SCHEMA

_STRING, _BOOLEAN, _INTEGER = {"type": "string"}, {"type": "boolean"}, {"type": "integer"}
_SESSION = {"$ref": "#/components/schemas/SessionOut"}
_COUNTS = DELETED_ROWS_SCHEMA  # the same fixed set of tables as the delete's response


class EventsQuery(QueryModel):
    last_event_id: str | None = Field(
        default=None, max_length=32,
        description="Resume after this event id (as the Last-Event-ID header does; the header wins)",
    )


def _with_session(**properties: dict) -> dict:
    schema = json_object(type=_STRING, session_id=_STRING, at=_STRING, **properties)
    schema["properties"]["session"] = _SESSION  # where the session still exists
    return schema


EVENTS_DESCRIPTION = """Server-Sent Events for the caller's sessions, from every server process, after commit.

Each event has an `id:` (an opaque, increasing cursor), an `event:` name and `data:` JSON with
`type`, `session_id`, `at` and, where the session still exists, `session` (exactly as the sessions
API returns it):

- `session.created` (a create, a first chat turn, an import, a restore), `session.updated` (rename,
  archive, the auto name, a new message count, the unread flag);
- `session.deleted` with `deleted` (rows removed per table) and `forced`;
- `run.started` with `run_id`, `run.finished` with `run_id` and `outcome` (`done`, `error`,
  `cancelled`): a reply in that session (join it at `/api/llm/sessions/{id}/runs/{run_id}/stream`);
  `run.queued` with `run_id`: a message waits behind that reply (multitask_strategy=enqueue);
- `usage.updated` with `run_id` (null for a naming call), `kind` (`chat`, `naming`) and `usage`:
  the session's totals after that model call (`calls`, `input_tokens`, `output_tokens`,
  `cost_micros`, `currency`), sent after the turn's `run.finished`.

Reconnect with `Last-Event-ID` (or `?last_event_id=`) to receive every event missed, then live ones.
A cursor older than the retention (or unknown) gets one `event: reset`: reload the list. Lines
starting with `:` are heartbeats. `event: auth_expired` ends the stream when the access token expires."""

EVENTS_RESPONSE = {
    "description": "The caller's session events, streamed",
    "content": {
        "text/event-stream": {
            "itemSchema": {
                "oneOf": [
                    sse_event_schema("session.created", _with_session()),
                    sse_event_schema("session.updated", _with_session()),
                    sse_event_schema("session.deleted", _with_session(deleted=_COUNTS, forced=_BOOLEAN)),
                    sse_event_schema("run.started", _with_session(run_id=_STRING)),
                    sse_event_schema("run.queued", _with_session(run_id=_STRING)),
                    sse_event_schema("run.finished", _with_session(
                        run_id=_STRING, outcome={"type": "string", "enum": ["done", "error", "cancelled"]})),
                    sse_event_schema("usage.updated", json_object(
                        type=_STRING, session_id=_STRING, at=_STRING, run_id={"type": ["string", "null"]},
                        kind={"type": "string", "enum": ["chat", "naming"]},
                        usage=json_object(calls=_INTEGER, input_tokens=_INTEGER, output_tokens=_INTEGER,
                                          cost_micros=_INTEGER, currency=_STRING))),
                    sse_event_schema("reset", json_object(type=_STRING)),
                    sse_event_schema("auth_expired", json_object(type=_STRING)),
                ]
            }
        }
    },
}

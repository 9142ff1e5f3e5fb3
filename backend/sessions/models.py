"""Request and response models for /api/llm/sessions: they validate and they document."""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    WithJsonSchema,
    model_serializer,
    model_validator,
)

from backend.http import (
    NO_CONTROL_CHARS_PATTERN,
    ApiModel,
    DocumentedModel,
    QueryModel,
    SuccessModel,
    UtcDatetime,
    in_utc,
)

# 1-128 of [A-Za-z0-9_.:-], but not "." or "..": URL clients (fetch, urllib3)
# remove such path segments, so a session with that id could never be opened
# or deleted. Written without lookahead, which pydantic's regex engine lacks.
SESSION_ID_PATTERN = (
    r"^(?:[A-Za-z0-9_:-][A-Za-z0-9_.:-]{0,127}"
    r"|\.[A-Za-z0-9_:-][A-Za-z0-9_.:-]{0,126}"
    r"|\.\.[A-Za-z0-9_.:-]{1,126})$"
)
MAX_SESSION_NAME = 200
# Bidi embeddings, overrides and isolates can make a name display as something
# else ("Trojan Source"); plain LRM/RLM marks stay allowed for RTL text.
_BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")

SessionId = Annotated[
    str,
    StringConstraints(pattern=SESSION_ID_PATTERN, min_length=1, max_length=128),
    Field(description="1-128 characters of A-Z a-z 0-9 _ . : - (but not '.' or '..')"),
]


def validate_session_name(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    if len(value) > MAX_SESSION_NAME:
        raise ValueError(f"must be at most {MAX_SESSION_NAME} characters")
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise ValueError("must not contain control characters")
    if _BIDI_CONTROLS.search(value):
        raise ValueError("must not contain bidirectional override characters")
    return value


# The same rules as validate_session_name, as a JSON Schema pattern for the document
# (clients and schema fuzzers): whitespace that strip() removes (some of it
# control characters), then 1-200 characters that start and end with something
# else, with no control characters (Cc) or bidi controls, then whitespace again.
# Not enforced by pydantic: the validator above is the rule, and
# tests/test_fuzz_schema.py keeps the two equal.
STRIPPED_CHARS = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"  # what str.strip() removes
_FORBIDDEN = r"\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069"
SESSION_NAME_PATTERN = (
    f"^[{STRIPPED_CHARS}]*[^{STRIPPED_CHARS}{_FORBIDDEN}]"
    f"(?:[^{_FORBIDDEN}]{{0,{MAX_SESSION_NAME - 2}}}[^{STRIPPED_CHARS}{_FORBIDDEN}])?[{STRIPPED_CHARS}]*$"
)

SessionName = Annotated[
    str,
    # Checked after trimming, so the schema documents it without enforcing it;
    # no maxLength: surrounding whitespace does not count.
    Field(
        description="Trimmed; then 1-200 characters, no control or bidi override characters",
        json_schema_extra={"minLength": 1, "pattern": SESSION_NAME_PATTERN},
    ),
    AfterValidator(validate_session_name),
]


MAX_MESSAGE_CHARS = 32_000
# Tabs and newlines are text; other C0 controls (NUL above all) are not.
CONTROL_CHARS_CLASS = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f"
_CONTROL_CHARS = CONTROL_CHARS_CLASS
_CONTROL = re.compile(f"[{_CONTROL_CHARS}]")
# The validator below, as a JSON Schema pattern for the document: no control
# characters, and at least one that strip() keeps (not blank).
MESSAGE_PATTERN = f"^[^{_CONTROL_CHARS}]*[^{_CONTROL_CHARS}{STRIPPED_CHARS}][^{_CONTROL_CHARS}]*$"


def check_message_text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


# A message's text, as sent in a chat turn or brought by an import.
MessageText = Annotated[
    str,
    Field(min_length=1, max_length=MAX_MESSAGE_CHARS, json_schema_extra={"pattern": MESSAGE_PATTERN}),
    AfterValidator(check_message_text),
]


class CreateSessionBody(ApiModel):
    # No body at all is an empty object (fetch without a body), so the document
    # must not call the body required.
    model_config = ConfigDict(extra="forbid", openapi_extra={"required": False})

    # Optional but not nullable: a missing field takes the default, a null is an error.
    session_name: SessionName = Field(default=None, description="Defaults to 'New Chat'")  # type: ignore[assignment]
    session_id: SessionId = Field(default=None, description="Generated as chat-<epoch ms>-<random> when missing")  # type: ignore[assignment]


class UpdateSessionBody(ApiModel):
    # At least one of the two; the document says so too.
    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    session_name: SessionName = None  # type: ignore[assignment]
    is_archived: StrictBool = None  # type: ignore[assignment]

    @model_validator(mode="after")
    def _something_to_change(self) -> "UpdateSessionBody":
        if self.session_name is None and self.is_archived is None:
            raise ValueError("send session_name and/or is_archived")
        return self


class SessionPath(BaseModel):
    session_id: SessionId


# What the list and get parameters take: the API's queries below, and the MCP tools'
# arguments (backend/mcp_server/tools.py), which use these same types.
MAX_PAGE = 200
MAX_MESSAGES_PAGE = 1000
MAX_CURSOR = 512


def check_search_text(value: str) -> str | None:
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise ValueError("must not contain control characters")
    return value or None  # empty: no filter


PageLimit = Annotated[int, Field(ge=1, le=MAX_PAGE)]
PageCursor = Annotated[str, Field(max_length=MAX_CURSOR)]
MessagesLimit = Annotated[int, Field(ge=1, le=MAX_MESSAGES_PAGE)]
SearchText = Annotated[
    str,
    # The validator, for the document: no control characters (Cc).
    Field(max_length=MAX_SESSION_NAME, json_schema_extra={"pattern": NO_CONTROL_CHARS_PATTERN}),
    AfterValidator(check_search_text),
]


class ListSessionsQuery(QueryModel):
    include_archived: bool = False
    unread: bool | None = Field(default=None, description="true: only sessions with an unread reply; false: only read ones")
    limit: PageLimit = 50
    offset: int = Field(default=0, ge=0, le=10_000_000)
    cursor: PageCursor | None = Field(default=None, description="next_cursor from the previous page")
    q: SearchText | None = Field(
        default=None,
        description="Only sessions whose name contains this text, case-insensitively (% and _ match themselves); "
                    "at most 200 characters, no control characters; empty: no filter",
    )
    include_usage: bool = Field(default=False, description=(
        "Give each session its `usage` (calls, tokens and cost so far): one more indexed read for the "
        "whole page. Without it sessions carry no `usage`"))


class GetSessionQuery(QueryModel):
    include_messages: bool = False
    messages_limit: MessagesLimit = Field(default=200, description="At most this many messages, the newest")
    messages_before: int | None = Field(
        default=None, ge=0, description="Only messages before this position (messages_start of the previous page)"
    )
    include_usage: bool = Field(default=False, description=(
        "Give the session its `usage` (calls, tokens and cost so far, as GET .../usage totals them)"))


class DeleteSessionQuery(QueryModel):
    force: bool = Field(default=False, description="Cancel a reply still being written, then delete")
    backup: bool = Field(default=False, description="Keep a recovery point that POST /restore can put back")


class RestoreSessionBody(ApiModel):
    model_config = ConfigDict(extra="forbid")

    backup_id: UUID = Field(description="From the delete's response")


class SessionUsageSummary(BaseModel):
    """What a session cost so far: every run (every branch) and naming call of it (usage_session_totals;
    the same names as GET /api/llm/usage and the usage.updated event)."""

    calls: int = Field(description="Model calls (chat turns and naming calls)")
    input_tokens: int
    output_tokens: int
    cost_micros: int = Field(description="Cost in micro-units of `currency` (1,000,000 = 1 unit)")
    currency: str


class SessionOut(BaseModel):
    session_id: str
    thread_id: str
    session_name: str
    is_archived: bool
    message_count: int
    created_at: UtcDatetime
    updated_at: UtcDatetime
    last_message_at: UtcDatetime | None
    has_unread: bool = Field(description="A reply finished that the user has not read yet (POST .../read clears it)")
    usage: SessionUsageSummary = Field(  # type: ignore[assignment]
        default=None, description="Only with include_usage=true (the list and GET .../<id>; MCP get_session always)")

    @model_serializer(mode="wrap")
    def _usage_only_when_asked(self, handler):
        data = handler(self)
        if self.usage is None:  # absent, not null, unless asked for
            data.pop("usage", None)
        return data


# A message's id and a rating's comment (backend/messages, and export documents).
MAX_MESSAGE_ID = 128
MAX_FEEDBACK_COMMENT = 2000
COMMENT_PATTERN = f"^[^{CONTROL_CHARS_CLASS}]*$"  # check_comment's rule, for the document

# A message's id as the API gives it (LangChain's message id: a uuid, run-<uuid>, or m<n> for a
# message kept from before ids were given).
MessageId = Annotated[str, Field(min_length=1, max_length=MAX_MESSAGE_ID, pattern=r"^[A-Za-z0-9_.:-]+$")]


def check_comment(value: str) -> str | None:
    """No control characters (line breaks are text); a blank comment is none."""
    return check_message_text(value) if value.strip() else None


FeedbackComment = Annotated[
    str,
    Field(max_length=MAX_FEEDBACK_COMMENT, json_schema_extra={"pattern": COMMENT_PATTERN}),
    AfterValidator(check_comment),
]


class Feedback(BaseModel):
    rating: Literal["up", "down"]
    comment: str | None = None
    rated_at: UtcDatetime


class MessageOut(BaseModel):
    """A message of the conversation's tree, as its active path shows it (backend/messages)."""

    id: str
    parent_id: str | None = Field(default=None, description="The message before this one on its path; null for the first")
    role: Literal["user", "assistant"]
    content: str
    created_at: UtcDatetime | None = None
    status: Literal["stopped", "interrupted"] | None = Field(
        default=None, description="Set on a reply that did not finish: stopped (Stop) or interrupted (a crash)")
    sibling_ids: list[str] = Field(
        description="This message and its siblings (the other answers to the same message, or the other edits of "
                    "it), oldest first: what a branch picker shows, as sibling_index + 1 of len(sibling_ids)")
    sibling_index: int = Field(description="This message's place in sibling_ids")
    feedback: Feedback | None = Field(default=None, description="The user's rating of a reply")


def trusted_messages(messages: list[dict]) -> list[MessageOut]:
    """Messages as the messages area gave them (MessageService.page: rows this server wrote), as
    response models without validating each again: a page of 1,000 is served in half the time.
    Times are made UTC here, as validation would have (UtcDatetime)."""
    out = []
    for message in messages:
        created, feedback = message.get("created_at"), message.get("feedback")
        if feedback is not None:
            feedback = Feedback.model_construct(**{**feedback, "rated_at": in_utc(feedback["rated_at"])})
        out.append(MessageOut.model_construct(
            **{**message, "created_at": in_utc(created) if created is not None else None, "feedback": feedback}))
    return out


class SessionCreatedResponse(SuccessModel):
    data: SessionOut
    session_id: str
    thread_id: str


class SessionListResponse(SuccessModel):
    data: list[SessionOut]
    count: int = Field(description="Items in this page")
    total: int = Field(description="Sessions that match the filter; with q, counted up to 100 (see total_exact)")
    total_exact: bool = Field(description="False when a search matched more than `total`: show it as \"100+\"")
    limit: int
    offset: int
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page")


class SessionResponse(SuccessModel):
    data: SessionOut


class SessionDetailResponse(SuccessModel):
    data: SessionOut
    messages: list[MessageOut] | None = Field(default=None, description="Only with include_messages=true; newest last")
    messages_start: int | None = Field(
        default=None, description="Position of the first message given; pass as messages_before for the page before"
    )
    has_more_messages: bool | None = Field(default=None, description="Older messages exist before this page")


class RecoveryPoint(BaseModel):
    backup_id: UUID
    expires_at: UtcDatetime


# The tables a delete removes rows from, each always counted: a fixed set of keys in the document
# (the typed client then knows them), while the value stays the store's own dict.
DELETED_ROWS_SCHEMA = {
    "type": "object",
    "description": "Rows removed per table",
    "required": ["checkpoints", "checkpoint_blobs", "checkpoint_writes", "chat_sessions"],
    "properties": {name: {"type": "integer"} for name in
                   ("checkpoints", "checkpoint_blobs", "checkpoint_writes", "chat_sessions")},
    "additionalProperties": False,
}
DeletedRows = Annotated[dict[str, int], WithJsonSchema(DELETED_ROWS_SCHEMA)]


class SessionDeletedResponse(SuccessModel):
    session_id: str
    deleted: DeletedRows
    backup: RecoveryPoint | None = Field(
        default=None, description="Only with backup=true (and a session row to keep): how to undo, until when"
    )


# --- export and import ------------------------------------------------------------

EXPORT_FORMAT = "chat-session/v1"


class ExportedUsage(BaseModel):
    calls: int
    input_tokens: int
    output_tokens: int
    cost_micros: int
    currency: str


class ExportedSession(BaseModel):
    """What an export says of the session: the user's own view, no internal ids."""

    session_id: str
    session_name: str
    is_archived: bool
    message_count: int
    created_at: UtcDatetime
    updated_at: UtcDatetime
    last_message_at: UtcDatetime | None
    usage: ExportedUsage | None = Field(default=None, description="What the session cost (an import ignores it)")


class SessionExport(DocumentedModel):
    format: Literal["chat-session/v1"] = EXPORT_FORMAT
    session: ExportedSession
    messages: list[MessageOut]


# The import's body (v1 and v2) and the v2 export: documents.py.


# --- bulk delete ----------------------------------------------------------------------


class BulkDeleteFilter(ApiModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    archived: StrictBool = Field(default=None, description="true: archived sessions only; false: unarchived only")  # type: ignore[assignment]
    inactive_days: int = Field(default=None, ge=1, le=36_500, description="No activity for this many days")  # type: ignore[assignment]

    @model_validator(mode="after")
    def _something_to_match(self) -> "BulkDeleteFilter":
        if self.archived is None and self.inactive_days is None:
            raise ValueError("give archived and/or inactive_days")
        return self


class BulkDeleteBody(ApiModel):
    # Exactly one of the two; the document says so too.
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"oneOf": [{"required": ["session_ids"]}, {"required": ["filter"]}]}
    )

    session_ids: list[SessionId] = Field(  # type: ignore[assignment]
        default=None, min_length=1, max_length=1000, description="1-1,000 ids; or give a filter instead"
    )
    filter: BulkDeleteFilter = Field(default=None, description="Matches the oldest 1,000 first")  # type: ignore[assignment]
    backup: StrictBool = Field(default=False, description="Keep a recovery point for each, as DELETE ?backup=true")
    force: StrictBool = Field(default=False, description="Stop replies being written instead of skipping those sessions")

    @model_validator(mode="after")
    def _ids_or_filter(self) -> "BulkDeleteBody":
        if (self.session_ids is None) == (self.filter is None):
            raise ValueError("give either session_ids or filter")
        return self


class BulkDeleteResult(BaseModel):
    session_id: str
    status: Literal["deleted", "not_found", "busy"]
    deleted: DeletedRows | None = Field(default=None, description="Rows removed per table, when deleted")
    backup: RecoveryPoint | None = Field(default=None, description="When deleted with backup=true")


class BulkDeleteResponse(SuccessModel):
    results: list[BulkDeleteResult]
    deleted_count: int
    more: bool = Field(description="The filter matched more than 1,000: call again for the rest")

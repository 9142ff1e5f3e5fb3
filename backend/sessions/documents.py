"""Export and import documents: chat-session/v2 (every branch of the conversation and its active
leaf) and chat-session/v1 (the active path only). An export writes v2 unless v1 is asked for; an
import takes either. The v1 export's models are in models.py (SessionExport, ExportedSession)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, RootModel, StrictBool, field_validator
from pydantic.json_schema import GenerateJsonSchema

from backend.http import ApiModel, DocumentSchema, QueryModel, UtcDatetime
from backend.sessions.models import (
    ExportedSession,
    Feedback,
    FeedbackComment,
    MessageId,
    MessageText,
    SessionExport,
    SessionId,
    SessionName,
)

EXPORT_FORMAT_V2 = "chat-session/v2"


class ExportQuery(QueryModel):
    format: Literal["v2", "v1"] = Field(
        default="v2", description="v2: every branch and the active leaf; v1: the active path only (as before v2)")


class ExportedMessage(BaseModel):
    """A message of the tree, as a v2 document keeps it."""

    id: str
    parent_id: str | None = Field(description="The message this one follows; null for a conversation's first")
    role: Literal["user", "assistant"]
    content: str
    created_at: UtcDatetime | None
    status: Literal["stopped", "interrupted"] | None = Field(
        default=None, description="Set on a reply that did not finish: stopped (Stop) or interrupted (a crash)")
    feedback: Feedback | None = Field(default=None, description="The user's rating of a reply")


class SessionExportV2(BaseModel):
    format: Literal["chat-session/v2"] = EXPORT_FORMAT_V2
    session: ExportedSession
    messages: list[ExportedMessage] = Field(description="Every message of every branch, each after its parent")
    active_message_id: str | None = Field(
        description="The last message of the active path (the branch the conversation continues); null: no messages")


class SessionExportDocument(RootModel[Annotated[SessionExportV2 | SessionExport, Field(discriminator="format")]]):
    """GET .../export: chat-session/v2, or chat-session/v1 with ?format=v1."""

    @classmethod
    def model_json_schema(cls, *args: Any, schema_generator: type[GenerateJsonSchema] = DocumentSchema,
                          **kwargs: Any) -> dict[str, Any]:
        return super().model_json_schema(*args, schema_generator=schema_generator, **kwargs)


# --- import ---------------------------------------------------------------------------


def _a_timestamp_string(value: object) -> object:
    if value is not None and not isinstance(value, str):  # not epoch numbers: the document says a string
        raise ValueError("must be an ISO 8601 date-time string")
    return value


class ImportedFeedback(ApiModel):
    rating: Literal["up", "down"]
    comment: FeedbackComment | None = None
    rated_at: AwareDatetime | None = Field(default=None, description="As exported; the import's time if missing")

    _rated_at_a_string = field_validator("rated_at", mode="before")(_a_timestamp_string)


class ImportedMessage(ApiModel):
    id: MessageId = Field(  # type: ignore[assignment]
        default=None, description="Required in v2 (unique in the document), kept as the message's id; in v1 kept "
                                  "when given, else one is made")
    parent_id: MessageId | None = Field(
        default=None, description="v2: the id of an earlier message of the document; null or missing for a "
                                  "conversation's first message. v1: ignored (each message follows the one before)")
    role: Literal["user", "assistant"]
    content: MessageText = Field(description="Not blank, no control characters (as a message sent in a turn)")
    created_at: AwareDatetime | None = Field(default=None, description="ISO 8601 with a time zone, as exported")
    status: Literal["stopped", "interrupted"] | None = Field(default=None, description="As exported (replies only)")
    feedback: ImportedFeedback | None = Field(default=None, description="As exported (replies only)")
    # What a v1 export of a branched session gives each message: accepted, not used.
    sibling_ids: list[MessageId] | None = Field(default=None, description="Ignored (an export's branch picker)")
    sibling_index: int | None = Field(default=None, ge=0, description="Ignored (an export's branch picker)")

    _created_at_a_string = field_validator("created_at", mode="before")(_a_timestamp_string)

    @field_validator("sibling_index", mode="before")
    @classmethod
    def _a_json_integer(cls, value: object) -> object:
        # What JSON Schema calls an integer (1 and 1.0), not a boolean or a string of digits.
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError("must be an integer")

    @field_validator("created_at")
    @classmethod
    def _within_utc(cls, value: datetime | None) -> datetime | None:
        # Times leave the server in UTC: 9999-12-31T23:59:59-23:59 is in year 10,000 there, which no
        # datetime holds, so once stored every read and export of the session would fail.
        if value is not None:
            try:
                value.astimezone(timezone.utc)
            except OverflowError:
                raise ValueError("must be within years 1 to 9999 in UTC") from None
        return value


class ImportedSession(BaseModel):
    # An export's counts and timestamps are the server's to set again: ignored.
    model_config = ConfigDict(extra="ignore")

    session_id: SessionId = None  # type: ignore[assignment]
    session_name: SessionName = None  # type: ignore[assignment]
    is_archived: StrictBool = False


class ImportSessionBody(ApiModel):
    format: Literal["chat-session/v1", "chat-session/v2"] = Field(description="An export document's format")
    session: ImportedSession = Field(default_factory=ImportedSession)
    messages: list[ImportedMessage] = Field(
        min_length=1, description="v1: the conversation, oldest first. v2: every message of every branch, each "
                                  "after its parent. At most IMPORT_MAX_MESSAGES (10,000), every branch counted")
    active_message_id: MessageId | None = Field(
        default=None, description="v2, required: the last message of the active path; v1: ignored")
    session_id: SessionId = Field(  # type: ignore[assignment]
        default=None, description="Import under this id instead of the document's (a copy)"
    )


def export_document(exported: dict) -> SessionExportV2 | SessionExport:
    """SessionService.export's parts as their document: v2 when they carry the tree, else v1."""
    session = ExportedSession.model_validate(exported["session"])
    if "active_message_id" in exported:
        return SessionExportV2(session=session, messages=exported["messages"],
                               active_message_id=exported["active_message_id"])
    return SessionExport(session=session, messages=exported["messages"])

"""The messages routes' paths, bodies and responses; the message a client sees."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from backend.http import ApiModel, SuccessModel
from backend.sessions.models import FeedbackComment, MessageId, MessageOut, SessionId, SessionOut

class MessagePath(BaseModel):
    session_id: SessionId
    message_id: MessageId


class SessionBranchPath(BaseModel):
    session_id: SessionId


class SwitchBranchBody(ApiModel):
    message_id: MessageId = Field(description="Any message: the path through it, down to its newest reply, "
                                              "becomes the active one")


class FeedbackBody(ApiModel):
    rating: Literal["up", "down"] | None = Field(description="null clears the rating")
    comment: FeedbackComment | None = Field(default=None, description="Why; kept with the rating")


class BranchResponse(SuccessModel):
    data: SessionOut
    messages: list[MessageOut] = Field(description="The new active path, its newest messages (as include_messages)")
    messages_start: int
    has_more_messages: bool


class MessageResponse(SuccessModel):
    data: MessageOut

"""An import document's messages as a conversation's tree: checked, placed, and its active path.

chat-session/v1 is a line: each message follows the one before, the whole of it is the active
path. chat-session/v2 is a tree: each message names its parent (an earlier message of the
document), and `active_message_id` the end of the active path. A document's ids are kept (ids are
per session, so one imported twice, or one with another session's ids, is fine); a v1 message
without one gets a new one. Whatever is wrong is said at once, as a 400 with `fields`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from backend.errors import ApiError
from backend.messages.service import RATINGS
from backend.sessions.documents import EXPORT_FORMAT_V2 as V2
from backend.sessions.models import EXPORT_FORMAT as V1


@dataclass
class ImportTree:
    rows: list[dict]  # every message, parents first: chat_messages' columns (MessageStore.insert_tree)
    path: list[dict]  # the active path, first to last: what the checkpoint holds


def _in_utc(value: datetime | None) -> datetime | None:
    """A time as UTC can hold it, or None (unknown, as a read shows such a time)."""
    try:
        return value.astimezone(timezone.utc) if value is not None else None
    except OverflowError:
        return None


def _invalid(fields: dict[str, str]) -> ApiError:
    first, why = next(iter(fields.items()))
    return ApiError(400, "validation_error", f"Invalid {first}: {why}", fields)


def import_tree(document_format: str, messages: list[dict], active_message_id: str | None,
                now: datetime | None = None) -> ImportTree:
    """The rows and the active path of an import's `messages` ({id?, parent_id?, role, content,
    created_at?, status?, feedback?}); 400 validation_error, every problem in `fields`, if the
    document does not make one tree."""
    now = now or datetime.now(timezone.utc)
    tree = document_format == V2
    fields: dict[str, str] = {}
    index_of: dict[str, int] = {}
    rows: list[dict] = []
    for i, message in enumerate(messages):
        message_id = message.get("id")
        if message_id is None:
            if tree:
                fields[f"messages.{i}.id"] = "required in chat-session/v2"
            message_id = str(uuid.uuid4())
        elif message_id in index_of:
            fields[f"messages.{i}.id"] = f"not unique: messages.{index_of[message_id]} has this id"
        parent_id = message.get("parent_id") if tree else (rows[-1]["id"] if rows else None)
        if tree and parent_id is not None and parent_id not in index_of:
            fields[f"messages.{i}.parent_id"] = ("no earlier message has this id (a parent comes before its "
                                                 "replies, so no message can follow itself)")
            parent_id = None
        feedback = message.get("feedback")
        if feedback is not None and message["role"] != "assistant":
            fields[f"messages.{i}.feedback"] = "only a reply (an assistant message) can be rated"
        index_of.setdefault(message_id, i)
        depth = rows[index_of[parent_id]]["depth"] + 1 if parent_id is not None else 0
        rows.append({
            "id": message_id, "parent_id": parent_id or "", "role": message["role"], "content": message["content"],
            "status": message.get("status"), "created_at": _in_utc(message.get("created_at")) if message.get("created_at") else now, "depth": depth,
            "on_path": not tree,
            "rating": RATINGS[feedback["rating"]] if feedback else None,
            "feedback_comment": feedback.get("comment") if feedback else None,
            "rated_at": (_in_utc(feedback.get("rated_at")) or now) if feedback else None,
        })
    if tree:
        if active_message_id is None:
            fields["active_message_id"] = "required in chat-session/v2"
        elif active_message_id not in index_of:
            fields["active_message_id"] = "no message of the document has this id"
    if fields:
        raise _invalid(fields)
    if not tree:
        return ImportTree(rows, rows)
    path: list[dict] = []
    at: str | None = active_message_id
    while at is not None:  # parents come first, so this ends at a first message
        row = rows[index_of[at]]
        row["on_path"] = True
        path.append(row)
        at = row["parent_id"] or None
    return ImportTree(rows, path[::-1])

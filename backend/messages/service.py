"""The rules for a conversation's messages: the active path with its branches, a switch, feedback.

A session from before messages had their own rows is indexed from its checkpoint the first time
anything here needs its rows (`index_thread`, the checkpoint saver's, in the checkpoint write's
transaction), so every message a client was shown can be named.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from backend.auth.service import AuthUser
from backend.errors import ApiError, NotFound
from backend.messages.store import MessageStore

RATINGS = {"up": 1, "down": -1}
RATING_NAMES = {1: "up", -1: "down"}
WHOLE_PATH = 2**31 - 1


def message_out(row: dict) -> dict:
    """A chat_messages row as the API shows it (sessions.models.MessageOut)."""
    siblings = row["sibling_ids"] or [row["id"]]
    feedback = None
    if row["rating"] is not None:
        feedback = {"rating": RATING_NAMES[row["rating"]], "comment": row["feedback_comment"],
                    "rated_at": row["rated_at"]}
    out = {"id": row["id"], "parent_id": row["parent_id"], "role": row["role"], "content": row["content"],
           "created_at": row["created_at"], "sibling_ids": siblings, "sibling_index": siblings.index(row["id"]),
           "feedback": feedback}
    if row["status"]:
        out["status"] = row["status"]
    return out


class MessageNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("Message not found in this session")


class MessageService:
    def __init__(self, store: MessageStore, *, index_thread: Callable[[str], bool]) -> None:
        self._store = store
        self._index_thread = index_thread

    def index_thread(self, thread_id: str) -> bool:
        """Write the rows of a session from before messages had theirs; False if it is gone."""
        return self._index_thread(thread_id)

    def _indexed(self, row: dict) -> None:
        if not row.get("messages_indexed", True) and not self._index_thread(row["thread_id"]):
            raise NotFound("The session was deleted")

    # --- the sessions area's History: what a session shows -------------------

    def page(self, row: dict, *, limit: int, before: int | None) -> tuple[list[dict], int]:
        """The active path's newest `limit` messages before position `before` (all: None), oldest
        first; and the position of the first."""
        self._indexed(row)
        rows = self._store.path_page(row["id"], limit=limit, before=before)
        start = rows[0]["depth"] if rows else (0 if before is None else min(before, row["message_count"]))
        return [message_out(r) for r in rows], start

    def path(self, row: dict) -> list[dict]:
        """The whole active path, oldest first."""
        return self.page(row, limit=WHOLE_PATH, before=None)[0]

    def tree(self, row: dict) -> list[dict]:
        """Every message of every branch, parents before their children."""
        self._indexed(row)
        return [{**message_out(r), "on_path": r["on_path"]} for r in self._store.tree(row["id"])]

    # --- what the messages routes do -----------------------------------------

    def message(self, user: AuthUser, row: dict, message_id: str) -> dict:
        """One message of the caller's session (404 message not found)."""
        self._indexed(row)
        found = self._store.message(user.id, row["session_id"], message_id)
        if found is None:
            raise MessageNotFound()
        return found

    def path_to(self, row: dict, message_id: str) -> list[dict]:
        """The messages from the first down to `message_id` ({id, role, content, status, created_at})."""
        return self._store.path_to(row["id"], message_id) if message_id else []

    def switch(self, user: AuthUser, row: dict, message_id: str) -> dict:
        """Make the path through `message_id` (down to its newest reply) the active one; the
        session row after it. 409 session_busy while a reply is being written."""
        self._indexed(row)
        switched = self._store.switch(user.id, row["session_id"], message_id)
        if switched["outcome"] == "no_session":
            raise NotFound()
        if switched["outcome"] == "no_message":
            raise MessageNotFound()
        if switched["outcome"] == "busy":
            raise ApiError(409, "session_busy",
                           "A reply is still being written in this session; wait for it to finish or stop it")
        return {k: v for k, v in switched.items() if k != "outcome"}

    def rate(self, user: AuthUser, row: dict, message_id: str, rating: str | None, comment: str | None) -> dict:
        """Rate a reply (None clears it): idempotent; the message after it."""
        self._indexed(row)
        rated = self._store.rate(user.id, row["session_id"], message_id, RATINGS.get(rating or ""), comment)
        if rated is None:
            if self._store.message(user.id, row["session_id"], message_id) is not None:
                raise ApiError(400, "validation_error", "Only a reply of the assistant can be rated",
                               fields={"message_id": "not an assistant message"})
            raise MessageNotFound()
        return message_out(rated)

    def ratings_since(self, since: datetime, until: datetime | None = None) -> list[dict]:
        """Every rating in [since, until), each with the conversation up to the rated reply."""
        out = []
        for rating in self._store.ratings_since(since, until):
            path = self._store.path_to(rating["session_row_id"], rating["message_id"])
            out.append({
                "user_id": rating["user_id"], "business_id": rating["business_id"],
                "session_id": rating["session_id"], "message_id": rating["message_id"],
                "rating": RATING_NAMES[rating["rating"]], "comment": rating["feedback_comment"],
                "rated_at": rating["rated_at"].isoformat(),
                "messages": [{"id": m["id"], "role": m["role"], "content": m["content"],
                              **({"status": m["status"]} if m["status"] else {})} for m in path],
            })
        return out

"""Importing a conversation: a new session whose memory the next chat turn continues.

The active path is written through the chat graph's own checkpointer code (LangGraph's
update_state, as if the graph's last node had written them), so the thread holds exactly
what a conversation held turn by turn would; every message of every branch (a v2 document's
tree, import_tree.py) goes into chat_messages, ratings included. The session row, the
checkpoint, the messages and the count are one transaction: an import lands whole or not at all.
"""

from __future__ import annotations

import logging

import psycopg
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.graph import END
from langgraph.graph.state import CompiledStateGraph
from psycopg_pool import ConnectionPool

from backend.auth.service import AuthUser
from backend.chat.import_tree import V1, import_tree
from backend.errors import ApiError
from backend.messages.store import MessageStore
from backend.sessions.service import build_thread_id, new_session_id, quota_exceeded
from backend.sessions.store import SessionQuotaExceeded, SessionStore
from backend.sessions.thread_store import history_bytes
from llm.messages import message_of

log = logging.getLogger(__name__)


def last_node(graph: CompiledStateGraph) -> str:
    """The node an imported conversation is written as: one that ends the graph.

    Written as the graph's input instead, the checkpoint would wait for its
    first node to run, and the next turn would find a task pending.
    """
    ending = sorted(start for start, end in graph.builder.edges if end == END)
    nodes = [n for n in graph.builder.nodes]
    if ending:
        return ending[0]
    if nodes:
        return nodes[-1]
    raise ValueError("the chat graph has no nodes")


class SessionImporter:
    def __init__(
        self, pool: ConnectionPool, store: SessionStore, graph: CompiledStateGraph, *, max_messages: int,
        max_history_messages: int = 2**31 - 1, max_history_bytes: int = 2**63 - 1,
        max_sessions_per_user: int = 2**31 - 1,
    ) -> None:
        self._pool = pool
        self._store = store
        self._graph = graph
        self._as_node = last_node(graph)
        # What one import may bring: IMPORT_MAX_MESSAGES, and what a session may hold
        # (CHAT_HISTORY_MAX_MESSAGES, CHAT_HISTORY_MAX_BYTES), whichever is less.
        self._max_messages = min(max_messages, max_history_messages)
        self._max_bytes = max_history_bytes
        self._max_sessions = max_sessions_per_user

    def import_session(
        self, user: AuthUser, *, session_id: str | None, session_name: str | None, is_archived: bool,
        messages: list[dict], document_format: str = V1, active_message_id: str | None = None,
    ) -> dict:
        """Create the session with these messages ({id?, parent_id?, role, content, created_at?,
        status?, feedback?}: a v1 document's line or a v2 document's tree); returns its row."""
        # A document past what a session may hold is refused as the invalid input it is (400, before
        # anything is written), as a turn into a full session is refused (409 session_full). Every
        # branch counts, as it does for a turn.
        if len(messages) > self._max_messages:
            raise ApiError(400, "validation_error", f"At most {self._max_messages} messages can be imported",
                           {"messages": f"more than {self._max_messages} messages (every branch counts)"})
        size = history_bytes(messages)
        if size > self._max_bytes:
            raise ApiError(400, "validation_error",
                           f"At most {self._max_bytes} bytes of message text can be imported",
                           {"messages": f"{size} bytes of text (UTF-8, every branch), more than {self._max_bytes}"})
        tree = import_tree(document_format, messages, active_message_id)
        session_id = session_id or new_session_id()
        thread_id = build_thread_id(user.id, user.business_id, session_id)
        history = [message_of(m["role"], m["content"], m["created_at"], m["status"], m["id"]) for m in tree.path]
        taken = ApiError(409, "session_exists", "A session with this id exists; import under another session_id")
        try:
            with self._pool.connection() as conn, conn.transaction():
                if self._store.session_or_thread_taken(conn, user.id, session_id, thread_id):
                    raise taken
                self._store.claim_session_slot(conn, user.id, self._max_sessions)
                row = self._store.insert_new(
                    conn, user_id=user.id, business_id=user.business_id, session_id=session_id,
                    thread_id=thread_id, session_name=session_name, is_archived=is_archived,
                )
                if row is None:
                    raise taken
                # The graph's own checkpointer code, on this transaction's connection.
                saver = PostgresSaver(conn, serde=self._graph.checkpointer.serde)
                graph = self._graph.copy(update={"checkpointer": saver})
                graph.update_state({"configurable": {"thread_id": thread_id}}, {"messages": history},
                                   as_node=self._as_node)
                MessageStore.insert_tree(conn, row["id"], user.id, tree.rows)
                self._store.increment_message_count(conn, user.id, session_id, len(history))
                row = self._store.set_history_bytes(conn, row["id"], history_bytes(tree.path))
        except SessionQuotaExceeded:
            raise quota_exceeded(self._max_sessions) from None
        except psycopg.errors.UniqueViolation:
            raise taken from None
        log.info("session imported", extra={"user_id": user.id, "session_id": session_id, "messages": len(tree.rows),
                                            "active_path": len(history)})
        return row

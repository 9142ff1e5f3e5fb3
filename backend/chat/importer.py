"""Importing a conversation: a new session whose memory the next chat turn continues.

The messages are written through the chat graph's own checkpointer (LangGraph's
update_state, as if the graph's last node had written them), so the thread
holds exactly what a conversation held turn by turn would. The session row,
the checkpoint and the count are one transaction: an import lands whole or
not at all.
"""

from __future__ import annotations

import logging

import psycopg
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.graph import END
from langgraph.graph.state import CompiledStateGraph
from psycopg_pool import ConnectionPool

from backend.auth.service import AuthUser
from backend.errors import ApiError
from backend.sessions.service import build_thread_id, new_session_id
from backend.sessions.store import SessionStore
from backend.sessions.thread_store import history_bytes
from llm.messages import assistant_message, user_message

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
    def __init__(self, pool: ConnectionPool, store: SessionStore, graph: CompiledStateGraph, *, max_messages: int) -> None:
        self._pool = pool
        self._store = store
        self._graph = graph
        self._as_node = last_node(graph)
        self._max_messages = max_messages

    def import_session(
        self, user: AuthUser, *, session_id: str | None, session_name: str | None, is_archived: bool,
        messages: list[dict],
    ) -> dict:
        """Create the session with these messages ({role, content, created_at?}); returns its row."""
        if len(messages) > self._max_messages:
            raise ApiError(400, "validation_error", f"At most {self._max_messages} messages can be imported",
                           {"messages": f"more than {self._max_messages} messages"})
        session_id = session_id or new_session_id()
        thread_id = build_thread_id(user.id, user.business_id, session_id)
        history = [(user_message if m["role"] == "user" else assistant_message)(m["content"], m.get("created_at"))
                   for m in messages]
        taken = ApiError(409, "session_exists", "A session with this id exists; import under another session_id")
        try:
            with self._pool.connection() as conn, conn.transaction():
                if self._store.session_or_thread_taken(conn, user.id, session_id, thread_id):
                    raise taken
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
                self._store.increment_message_count(conn, user.id, session_id, len(history))
                row = self._store.set_history_bytes(conn, row["id"], history_bytes(messages))
        except psycopg.errors.UniqueViolation:
            raise taken from None
        log.info("session imported", extra={"user_id": user.id, "session_id": session_id, "messages": len(history)})
        return row

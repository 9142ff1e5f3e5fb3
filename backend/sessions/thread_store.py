"""All SQL over a session's LangGraph thread rows that is not part of a session statement.

LangGraph keeps a conversation in three tables keyed by thread_id; this
backend registers each thread it makes in chat_threads (sql/011). A session's
own delete and restore move its thread's rows in the same statement as its
row (SessionStore); what lives here is what concerns threads alone: reading a
thread's history, and finding and deleting threads whose session is gone.
Writes of new checkpoints are LangGraph's own (SessionCheckpointSaver).
"""

from __future__ import annotations

from langgraph.checkpoint.postgres import PostgresSaver
from psycopg import Connection
from psycopg_pool import ConnectionPool

from backend.sessions.store import SessionStore
from llm.messages import load_thread_messages, visible_messages

# LangGraph's tables, each keyed by thread_id. Deleted in this order; the
# counts are reported per table.
CHECKPOINT_TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")

# Threads this backend made whose session is gone, quiet for a while: aged by
# their latest checkpoint, or by their registration when they have none.
ORPHAN_THREADS_SQL = """
select t.thread_id from chat_threads t
 where t.orphaned_at is not null  -- marked when its session row went (sql/020)
   and not exists (select 1 from chat_sessions s where s.thread_id = t.thread_id)
   and greatest(t.created_at,
                coalesce((select max((c.checkpoint ->> 'ts')::timestamptz) from checkpoints c
                           where c.thread_id = t.thread_id), t.created_at))
       < now() - make_interval(secs => %s)
 order by t.thread_id
 limit %s
"""

DELETE_THREAD_ROWS_SQL = {table: f"delete from {table} where thread_id = %s" for table in CHECKPOINT_TABLES}

UNREGISTER_THREAD_SQL = "delete from chat_threads where thread_id = %s"


class ThreadStore:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    @staticmethod
    def visible_history(conn: Connection, thread_id: str) -> list[dict]:
        """The messages a client sees in the thread's latest checkpoint, each with its id
        (llm.messages.with_ids), read on the caller's connection."""
        return visible_messages(load_thread_messages(PostgresSaver(conn), thread_id))

    def first_user_message(self, thread_id: str) -> str | None:
        with self._pool.connection() as conn:
            messages = visible_messages(load_thread_messages(PostgresSaver(conn), thread_id))
        return next((m["content"] for m in messages if m["role"] == "user"), None)

    def orphan_threads(self, min_age_seconds: float, limit: int) -> list[str]:
        """Threads this backend made (chat_threads) whose session is gone, quiet for min_age.

        Only registered threads are considered: a thread other code keeps in the
        same tables is never touched, whatever its name.
        """
        with self._pool.connection() as conn:
            rows = conn.execute(ORPHAN_THREADS_SQL, (min_age_seconds, limit)).fetchall()
        return [r["thread_id"] for r in rows]

    def delete_orphan_thread(self, thread_id: str) -> dict[str, int]:
        """Delete one orphaned thread, unless a session claims it meanwhile.

        The check runs after the deletes, on a fresh snapshot: a session
        created for this thread while the sweep ran rolls the deletes back.
        """
        with self._pool.connection() as conn:
            try:
                with conn.transaction():
                    counts = {table: conn.execute(sql, (thread_id,)).rowcount
                              for table, sql in DELETE_THREAD_ROWS_SQL.items()}
                    conn.execute(UNREGISTER_THREAD_SQL, (thread_id,))
                    if SessionStore.thread_has_session(conn, thread_id):
                        raise _ThreadClaimed()
            except _ThreadClaimed:
                return {table: 0 for table in CHECKPOINT_TABLES}
        return counts


def history_bytes(messages: list[dict]) -> int:
    """The size a conversation counts for against CHAT_HISTORY_MAX_BYTES: its text, in UTF-8."""
    return sum(len(m["content"].encode()) for m in messages)


class _ThreadClaimed(Exception):
    """Rolls back an orphan delete whose thread got a session."""

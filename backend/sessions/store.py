"""All SQL for chat sessions, in one place.

Methods that take a `conn` run inside a transaction the service opened, so a
delete's statements commit or roll back together.
"""

from __future__ import annotations

from datetime import datetime

from psycopg import Connection
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from backend.errors import ApiError

SESSION_COLUMNS = (
    "id, user_id, business_id, session_id, thread_id, session_name, is_archived, "
    "message_count, created_at, updated_at, last_message_at, last_activity_at, name_source"
)

# LangGraph's tables, each keyed by thread_id. Deleted in this order; the
# counts are reported per table.
CHECKPOINT_TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")


class SessionStore:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    # --- reads -----------------------------------------------------------

    def get(self, user_id: str, session_id: str) -> dict | None:
        with self._pool.connection() as conn:
            return conn.execute(
                f"select {SESSION_COLUMNS} from chat_sessions where user_id = %s and session_id = %s",
                (user_id, session_id),
            ).fetchone()

    def list_page(
        self,
        user_id: str,
        *,
        include_archived: bool,
        limit: int,
        offset: int = 0,
        after: tuple[datetime, int] | None = None,
    ) -> tuple[list[dict], int]:
        """One page, newest activity first, and the total that match.

        `after` continues a keyset page from (last_activity_at, id), which
        stays an index range scan at any depth; `offset` is for jumping.
        """
        archived_filter = "" if include_archived else "and not is_archived"
        keyset = "and (last_activity_at, id) < (%s, %s)" if after else ""
        params: list = [user_id, *(after or ()), limit, offset]
        with self._pool.connection() as conn:
            rows = conn.execute(
                f"""
                select {SESSION_COLUMNS} from chat_sessions
                where user_id = %s {archived_filter} {keyset}
                order by last_activity_at desc, id desc
                limit %s offset %s
                """,
                params,
            ).fetchall()
            total = conn.execute(
                f"select count(*) as n from chat_sessions where user_id = %s {archived_filter}",
                (user_id,),
            ).fetchone()["n"]
        return rows, total

    # --- writes ----------------------------------------------------------

    def insert_if_absent(
        self, *, user_id: str, business_id: str, session_id: str, thread_id: str, session_name: str | None
    ) -> tuple[dict, bool]:
        """Create the session, or return the user's existing one unchanged.

        Returns (row, created). Retried creates from the frontend land here.
        """
        with self._pool.connection() as conn:
            row = conn.execute(
                f"""
                insert into chat_sessions (user_id, business_id, session_id, thread_id, session_name, name_source)
                values (%s, %s, %s, %s, coalesce(%s, 'New Chat'), case when %s::text is null then 'default' else 'user' end)
                on conflict (user_id, session_id) do nothing
                returning {SESSION_COLUMNS}
                """,
                (user_id, business_id, session_id, thread_id, session_name, session_name),
            ).fetchone()
            if row is not None:
                return row, True
            existing = conn.execute(
                f"select {SESSION_COLUMNS} from chat_sessions where user_id = %s and session_id = %s",
                (user_id, session_id),
            ).fetchone()
            if existing is None:
                # Deleted by a concurrent request between the two statements.
                raise ApiError(409, "conflict", "The session was deleted while being created; try again")
        return existing, False

    def update(
        self, user_id: str, session_id: str, *, session_name: str | None, is_archived: bool | None
    ) -> dict | None:
        with self._pool.connection() as conn:
            return conn.execute(
                f"""
                update chat_sessions
                   set session_name = coalesce(%s, session_name),
                       -- a name the user chose is never replaced by auto-naming
                       name_source  = case when %s::text is null then name_source else 'user' end,
                       is_archived  = coalesce(%s, is_archived)
                 where user_id = %s and session_id = %s
                returning {SESSION_COLUMNS}
                """,
                (session_name, session_name, is_archived, user_id, session_id),
            ).fetchone()

    def increment_message_count(self, user_id: str, session_id: str, increment: int = 1) -> dict | None:
        """Through the SQL function, so concurrent turns never lose a count."""
        with self._pool.connection() as conn:
            return conn.execute(
                "select * from increment_session_message_count(%s, %s, %s)",
                (user_id, session_id, increment),
            ).fetchone()

    # --- delete, inside the service's transaction ------------------------

    @staticmethod
    def lock_for_delete(conn: Connection, user_id: str, session_id: str) -> dict | None:
        return conn.execute(
            f"select {SESSION_COLUMNS} from chat_sessions where user_id = %s and session_id = %s for update",
            (user_id, session_id),
        ).fetchone()

    @staticmethod
    def delete_thread_checkpoints(conn: Connection, thread_id: str) -> dict[str, int]:
        """Every LangGraph row of the thread, on the caller's connection.

        Not PostgresSaver.delete_thread: on a pool it would take its own
        connection and transaction, splitting the delete, and it reports no counts.
        """
        counts: dict[str, int] = {}
        for table in CHECKPOINT_TABLES:
            cur = conn.execute(f"delete from {table} where thread_id = %s", (thread_id,))
            counts[table] = cur.rowcount
        return counts

    @staticmethod
    def delete_row(conn: Connection, row_id: int) -> int:
        return conn.execute("delete from chat_sessions where id = %s", (row_id,)).rowcount

    @staticmethod
    def record_deletion(
        conn: Connection,
        *,
        user_id: str,
        business_id: str,
        session_id: str,
        thread_id: str,
        had_session_row: bool,
        forced: bool,
        rows_deleted: dict[str, int],
    ) -> None:
        conn.execute(
            """
            insert into session_deletions
                (user_id, business_id, session_id, thread_id, had_session_row, forced, rows_deleted)
            values (%s, %s, %s, %s, %s, %s, %s)
            """,
            (user_id, business_id, session_id, thread_id, had_session_row, forced, Jsonb(rows_deleted)),
        )

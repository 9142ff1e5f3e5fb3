"""All SQL for chat sessions, in one place.

Methods that take a `conn` run inside a transaction the service opened, so a
delete's statements commit or roll back together.
"""

from __future__ import annotations

from datetime import datetime

from psycopg import Connection
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
        with self._pool.connection() as conn:
            return increment_message_count(conn, user_id, session_id, increment)

    # --- delete, inside the service's transaction ------------------------

    @staticmethod
    def lock_for_delete(conn: Connection, user_id: str, session_id: str) -> dict | None:
        """Lock the session row (blocking checkpoint writes: see SessionCheckpointSaver)
        and say whether a reply is being written in it (`run_live`)."""
        return conn.execute(LOCK_FOR_DELETE_SQL, (user_id, session_id)).fetchone()

    @staticmethod
    def delete_thread_and_row(
        conn: Connection,
        *,
        thread_id: str,
        row_id: int | None,
        user_id: str,
        business_id: str,
        session_id: str,
        forced: bool,
    ) -> dict[str, int]:
        """Delete every LangGraph row of the thread and the session row, and write
        the audit row, in one statement on the caller's (locked) connection.

        Not PostgresSaver.delete_thread: on a pool it would take its own
        connection and transaction, splitting the delete, and it reports no
        counts. Run after lock_for_delete, as a statement of its own: its
        snapshot then sees every checkpoint write that committed before the lock.
        Returns rows removed per table; the audit row is written only if any were.
        """
        return conn.execute(
            DELETE_THREAD_AND_ROW_SQL,
            {"thread_id": thread_id, "row_id": row_id, "user_id": user_id, "business_id": business_id,
             "session_id": session_id, "forced": forced},
        ).fetchone()


def increment_message_count(conn: Connection, user_id: str, session_id: str, increment: int) -> dict | None:
    """The RPC, on the caller's connection: one atomic UPDATE, so concurrent
    turns never lose a count. The new (message_count, last_message_at), or None."""
    return conn.execute(
        "select * from increment_session_message_count(%s, %s, %s)", (user_id, session_id, increment)
    ).fetchone()


LOCK_FOR_DELETE_SQL = f"""
select {SESSION_COLUMNS},
       exists (select 1 from chat_session_runs r
                where r.user_id = s.user_id and r.session_id = s.session_id
                  and r.lease_expires_at > now()) as run_live
  from chat_sessions s
 where s.user_id = %s and s.session_id = %s
   for update of s
"""

DELETE_THREAD_AND_ROW_SQL = """
with c as (delete from checkpoints where thread_id = %(thread_id)s returning 1),
     b as (delete from checkpoint_blobs where thread_id = %(thread_id)s returning 1),
     w as (delete from checkpoint_writes where thread_id = %(thread_id)s returning 1),
     s as (delete from chat_sessions where id = %(row_id)s returning 1),
     counts as (
         select (select count(*) from c)::int as checkpoints,
                (select count(*) from b)::int as checkpoint_blobs,
                (select count(*) from w)::int as checkpoint_writes,
                (select count(*) from s)::int as chat_sessions
     ),
     audit as (
         insert into session_deletions
             (user_id, business_id, session_id, thread_id, had_session_row, forced, rows_deleted)
         select %(user_id)s, %(business_id)s, %(session_id)s, %(thread_id)s, %(row_id)s::bigint is not null,
                %(forced)s, to_jsonb(counts)
           from counts
          where checkpoints + checkpoint_blobs + checkpoint_writes + chat_sessions > 0
     )
select * from counts
"""

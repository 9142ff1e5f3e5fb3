"""All SQL that removes sessions or brings them back: delete (with a recovery point), restore, bulk and retention.

A session's delete and restore move its LangGraph thread rows and its
recovery point in the same statement as its row. Methods that take a `conn`
run inside a transaction the service opened (after SessionService took its
locks), so their statements commit or roll back together.
"""

from __future__ import annotations

import uuid

from psycopg import Connection
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from backend.sessions.store import SELECT_SESSION_SQL, SESSION_COLUMNS

LOCK_FOR_DELETE_SQL = f"{SELECT_SESSION_SQL} for update"

_DELETE_THREAD_AND_ROW = """
with c as (delete from checkpoints where thread_id = %(thread_id)s returning {returning}),
     b as (delete from checkpoint_blobs where thread_id = %(thread_id)s returning {returning}),
     w as (delete from checkpoint_writes where thread_id = %(thread_id)s returning {returning}),
     s as (delete from chat_sessions where id = %(row_id)s returning {returning}),
     registered as (delete from chat_threads where thread_id = %(thread_id)s),
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
         returning id
     ){recovery_point}
select counts.*, (select id from audit) as audit_id{recovery_columns} from counts
"""
DELETE_THREAD_AND_ROW_SQL = _DELETE_THREAD_AND_ROW.format(returning="1", recovery_point="", recovery_columns="")
# The same delete, keeping what it deletes: the rows come from the deletes'
# RETURNING, so nothing is read twice. One row per checkpoint row (a long
# thread's rows together could pass jsonb's size limit); to_jsonb writes bytea
# as hex, which reads back byte for byte.
DELETE_WITH_RECOVERY_POINT_SQL = _DELETE_THREAD_AND_ROW.format(returning="*", recovery_point=""",
     point as (
         insert into session_backups (backup_id, user_id, business_id, session_id, thread_id, session_row, expires_at)
         select %(backup_id)s, s.user_id, s.business_id, s.session_id, s.thread_id, to_jsonb(s),
                now() + make_interval(secs => %(retention_seconds)s)
           from s
         returning backup_id, expires_at
     ),
     -- The session's messages, every branch and rating (sql/025): read in this statement's
     -- snapshot, so before the session row's delete cascades to them.
     m as (select * from chat_messages where session_row_id = %(row_id)s),
     point_rows as (
         insert into session_backup_rows (backup_id, table_name, row)
         select point.backup_id, t.table_name, t.row
           from point cross join (
               select 'checkpoints' as table_name, to_jsonb(c) as row from c
               union all select 'checkpoint_blobs', to_jsonb(b) from b
               union all select 'checkpoint_writes', to_jsonb(w) from w
               union all select 'chat_messages', to_jsonb(m) from m
           ) t
     )""", recovery_columns=""",
       (select backup_id from point) as backup_id, (select expires_at from point) as expires_at""")

LOCK_RECOVERY_POINT_SQL = """
select backup_id, user_id, business_id, session_id, thread_id, session_row
  from session_backups
 where backup_id = %s and user_id = %s and expires_at > now()
   for update
"""

# The row keeps its id and timestamps (overriding the identity; the
# updated_at trigger fires on update only); the generated column recomputes.
# Its messages (sql/025) come back as they were, ratings included. The row's
# branch counts already include them, so the statement names the row
# (chat.restoring_session, for the rest of its transaction) and the branch-count
# trigger leaves it alone: nothing is counted twice, and no update of the row
# moves its updated_at. A point kept before messages had rows brings none:
# its session comes back not indexed, to be indexed from its checkpoint when read.
RESTORE_RECOVERY_POINT_SQL = f"""
with restoring as (
    select set_config('chat.restoring_session', %(session_row)s::jsonb->>'id', true) as row_id
), s as (
    insert into chat_sessions (id, user_id, business_id, session_id, thread_id, session_name, is_archived,
                               message_count, created_at, updated_at, last_message_at, name_source, has_unread,
                               history_bytes, branch_messages, branch_bytes, switched_to, messages_indexed)
    overriding system value
    select id, user_id, business_id, session_id, thread_id, session_name, is_archived,
           message_count, created_at, updated_at, last_message_at, name_source, has_unread,
           coalesce(history_bytes, 0),  -- a point kept before history_bytes existed
           coalesce(branch_messages, 0), coalesce(branch_bytes, 0), switched_to,
           coalesce(messages_indexed, false)  -- a point kept before chat_messages existed
      from jsonb_populate_record(null::chat_sessions, %(session_row)s)
    returning {SESSION_COLUMNS}
), m as (
    insert into chat_messages
    select p.* from session_backup_rows r cross join lateral jsonb_populate_record(null::chat_messages, r.row) p
     where r.backup_id = %(backup_id)s and r.table_name = 'chat_messages'
    returning 1
), c as (
    insert into checkpoints
    select p.* from session_backup_rows r cross join lateral jsonb_populate_record(null::checkpoints, r.row) p
     where r.backup_id = %(backup_id)s and r.table_name = 'checkpoints'
    returning 1
), b as (
    insert into checkpoint_blobs
    select p.* from session_backup_rows r cross join lateral jsonb_populate_record(null::checkpoint_blobs, r.row) p
     where r.backup_id = %(backup_id)s and r.table_name = 'checkpoint_blobs'
    returning 1
), w as (
    insert into checkpoint_writes
    select p.* from session_backup_rows r cross join lateral jsonb_populate_record(null::checkpoint_writes, r.row) p
     where r.backup_id = %(backup_id)s and r.table_name = 'checkpoint_writes'
    returning 1
), counts as (
    select (select count(*) from c)::int as checkpoints,
           (select count(*) from b)::int as checkpoint_blobs,
           (select count(*) from w)::int as checkpoint_writes,
           (select count(*) from s)::int as chat_sessions
), consumed as (
    delete from session_backups where backup_id = %(backup_id)s
), audit as (
    insert into session_deletions
        (user_id, business_id, session_id, thread_id, had_session_row, forced, rows_deleted, action)
    select s.user_id, s.business_id, s.session_id, s.thread_id, true, false, to_jsonb(counts), 'restore'
      from s, counts
)
select s.*, to_jsonb(counts) as restored, (select count(*) from m)::int as restored_messages
  from s, counts, restoring
"""

PURGE_EXPIRED_RECOVERY_POINTS_SQL = """
delete from session_backups
 where backup_id in (select backup_id from session_backups where expires_at <= now() order by expires_at limit %s)
"""

IDS_MATCHING_SQL = """
select session_id from chat_sessions
 where user_id = %(user_id)s
   and (%(archived)s::boolean is null or is_archived = %(archived)s::boolean)
   and (%(inactive_days)s::int is null or last_activity_at < now() - make_interval(days => %(inactive_days)s::int))
 order by last_activity_at, id
 limit %(limit)s
"""

INACTIVE_SESSIONS_SQL = """
select id, user_id, business_id, session_id, last_activity_at from chat_sessions
 where last_activity_at < now() - make_interval(days => %(inactive_days)s::int)
   and (not %(archived_only)s or is_archived)
   and (%(user_id)s::text is null or user_id = %(user_id)s::text)
   and id > %(after_id)s
 order by id
 limit %(limit)s
"""

PURGE_AUDIT_ROWS_SQL = """
delete from session_deletions
 where id in (select id from session_deletions
               where deleted_at < now() - make_interval(days => %s) order by id limit %s)
"""

# A delete's dry run: the same row and thread lookups as the delete, counted, nothing locked or changed.
DELETE_PREVIEW_SQL = """
with s as (
    select id, thread_id from chat_sessions where user_id = %(user_id)s and session_id = %(session_id)s
), t as (
    select coalesce((select thread_id from s), %(thread_id)s) as thread_id
)
select (select count(*) from checkpoints c, t where c.thread_id = t.thread_id)::int as checkpoints,
       (select count(*) from checkpoint_blobs b, t where b.thread_id = t.thread_id)::int as checkpoint_blobs,
       (select count(*) from checkpoint_writes w, t where w.thread_id = t.thread_id)::int as checkpoint_writes,
       (select count(*) from s)::int as chat_sessions,
       (not exists (select 1 from s)
        and exists (select 1 from chat_sessions o, t where o.thread_id = t.thread_id)) as thread_owned
"""


class DeletionStore:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    # --- delete, inside the service's transaction ------------------------

    @staticmethod
    def lock_for_delete(conn: Connection, user_id: str, session_id: str) -> dict | None:
        """Lock the session row: no checkpoint write and no new reply can start in it until commit."""
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
        recovery_point: tuple[uuid.UUID, float] | None = None,
    ) -> tuple[dict[str, int], dict | None, int | None]:
        """Delete every LangGraph row of the thread and the session row, and write
        the audit row, in one statement on the caller's (locked) connection.

        Not PostgresSaver.delete_thread: on a pool it would take its own
        connection and transaction, splitting the delete, and it reports no
        counts. Run after lock_for_delete, as a statement of its own: its
        snapshot then sees every checkpoint write that committed before the lock.

        With `recovery_point` (backup id, retention seconds) the rows the
        statement deletes are also kept, as they were, in a recovery point
        (only when there was a session row to restore).
        Returns (rows removed per table, {backup_id, expires_at} or None, the
        audit row's id); the audit row is written only if any rows were removed.
        """
        backup_id, retention = recovery_point or (None, 0)
        row = conn.execute(
            DELETE_WITH_RECOVERY_POINT_SQL if recovery_point else DELETE_THREAD_AND_ROW_SQL,
            {"thread_id": thread_id, "row_id": row_id, "user_id": user_id, "business_id": business_id,
             "session_id": session_id, "forced": forced, "backup_id": backup_id, "retention_seconds": retention},
        ).fetchone()
        backup_id, expires_at = row.pop("backup_id", None), row.pop("expires_at", None)
        audit_id = row.pop("audit_id", None)
        return row, ({"backup_id": backup_id, "expires_at": expires_at} if backup_id else None), audit_id

    # --- many at once: bulk deletes and retention ------------------------

    def ids_matching(self, user_id: str, *, archived: bool | None, inactive_days: int | None, limit: int) -> list[str]:
        """The user's session ids that match, oldest activity first."""
        with self._pool.connection() as conn:
            rows = conn.execute(
                IDS_MATCHING_SQL,
                {"user_id": user_id, "archived": archived, "inactive_days": inactive_days, "limit": limit},
            ).fetchall()
        return [r["session_id"] for r in rows]

    def inactive_sessions(
        self, *, inactive_days: int, archived_only: bool, user_id: str | None, limit: int, after_id: int = 0
    ) -> list[dict]:
        """Sessions (any user's, or one user's) with no activity for inactive_days, in id order from after_id."""
        with self._pool.connection() as conn:
            return conn.execute(
                INACTIVE_SESSIONS_SQL,
                {"inactive_days": inactive_days, "archived_only": archived_only, "user_id": user_id,
                 "limit": limit, "after_id": after_id},
            ).fetchall()

    def purge_audit_rows(self, older_than_days: int, limit: int = 1000) -> int:
        with self._pool.connection() as conn:
            return conn.execute(PURGE_AUDIT_ROWS_SQL, (older_than_days, limit)).rowcount

    # --- recovery points (undo), inside the service's transaction ----------

    @staticmethod
    def lock_recovery_point(conn: Connection, user_id: str, backup_id) -> dict | None:
        """The caller's unexpired recovery point, locked against a second restore."""
        return conn.execute(LOCK_RECOVERY_POINT_SQL, (backup_id, user_id)).fetchone()

    @staticmethod
    def restore_recovery_point(conn: Connection, backup: dict) -> dict:
        """Put the session row and its thread's rows back, consume the recovery
        point and write the audit row, in one statement. Returns the session
        row with `restored`: rows put back per table (the audit row's; its messages' too)."""
        row = conn.execute(
            RESTORE_RECOVERY_POINT_SQL,
            {"backup_id": backup["backup_id"], "session_row": Jsonb(backup["session_row"])},
        ).fetchone()
        row["restored"] = {**row["restored"], "chat_messages": row.pop("restored_messages")}
        return row

    def purge_expired_recovery_points(self, limit: int = 500) -> int:
        """Delete recovery points past their expiry (a batch); returns how many."""
        with self._pool.connection() as conn:
            return conn.execute(PURGE_EXPIRED_RECOVERY_POINTS_SQL, (limit,)).rowcount

    @staticmethod
    def delete_preview(conn: Connection, *, user_id: str, session_id: str, thread_id: str) -> dict:
        """What a delete would remove (rows per table), and whether the thread belongs
        to a session row of another id (`thread_owned`); reads only."""
        return conn.execute(
            DELETE_PREVIEW_SQL, {"user_id": user_id, "session_id": session_id, "thread_id": thread_id}
        ).fetchone()


"""All SQL for session events: reading a user's events by cursor, and retention.

The events themselves are written by triggers (sql/009_session_events.sql),
in the transaction of the change they describe.
"""

from __future__ import annotations

from psycopg_pool import ConnectionPool

READ_AFTER_SQL = """
select id, session_id, type, payload, created_at from session_events
 where user_id = %s and id > %s
 order by id
 limit %s
"""

LATEST_ID_FOR_USER_SQL = "select coalesce(max(id), 0) as id from session_events where user_id = %s"

# The listener's starting point (EventHub), read on its own connection right after LISTEN.
LATEST_ID_SQL = "select coalesce(max(id), 0) from session_events"

# A resuming client in one read: the range a cursor must lie in (not purged
# past, not beyond the latest id) and, when it does, the user's events after it.
RESUME_SQL = """
with bounds as (
    select coalesce((select upto from session_events_purged), 0) as purged_upto,
           (select coalesce(max(id), 0) from session_events) as latest
)
select b.purged_upto, b.latest, e.id, e.session_id, e.type, e.payload, e.created_at
  from bounds b
  left join lateral (
      select id, session_id, type, payload, created_at from session_events
       where user_id = %(user_id)s and id > %(cursor)s and %(cursor)s between b.purged_upto and b.latest
       order by id
       limit %(limit)s
  ) e on true
 order by e.id
"""

# Oldest first, a batch at a time; the watermark says how far events may be missing.
PURGE_SQL = """
with gone as (
    delete from session_events
     where id in (select id from session_events
                   where created_at < now() - make_interval(secs => %s) order by id limit %s)
    returning id
), mark as (
    update session_events_purged set upto = greatest(upto, (select max(id) from gone))
     where exists (select 1 from gone)
)
select count(*) as n from gone
"""


class EventStore:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def read_after(self, user_id: str, cursor: int, limit: int = 200) -> list[dict]:
        with self._pool.connection() as conn:
            return conn.execute(READ_AFTER_SQL, (user_id, cursor, limit)).fetchall()

    def latest_id_for(self, user_id: str) -> int:
        with self._pool.connection() as conn:
            return conn.execute(LATEST_ID_FOR_USER_SQL, (user_id,)).fetchone()["id"]

    def resume(self, user_id: str, cursor: int, limit: int = 200) -> list[dict] | None:
        """The user's events after `cursor` (at most `limit`), or None when the table can no
        longer vouch for the cursor (purged past it, or beyond the latest id): one read."""
        with self._pool.connection() as conn:
            rows = conn.execute(RESUME_SQL, {"user_id": user_id, "cursor": cursor, "limit": limit}).fetchall()
        if not rows[0]["purged_upto"] <= cursor <= rows[0]["latest"]:
            return None
        return [{k: row[k] for k in ("id", "session_id", "type", "payload", "created_at")}
                for row in rows if row["id"] is not None]

    def purge_older_than(self, seconds: float, batch: int = 5000) -> int:
        total = 0
        while True:
            with self._pool.connection() as conn:
                n = conn.execute(PURGE_SQL, (seconds, batch)).fetchone()["n"]
            total += n
            if n < batch:
                return total

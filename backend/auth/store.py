"""SQL for users who sign in with email and password."""

from __future__ import annotations

import uuid

from psycopg_pool import ConnectionPool

_COLUMNS = "id::text as id, email, password_hash, business_id, created_at"

# One indexed lookup per cookie request: the user, through a live sign-in.
USER_FOR_SESSION_SQL = """
select u.id::text as id, u.email, u.password_hash, u.business_id, u.created_at,
       s.last_seen_at, s.expires_at,
       least(s.expires_at, s.last_seen_at + make_interval(secs => %(idle)s)) as valid_until
  from auth_sessions s join app_users u on u.id = s.user_id
 where s.id = %(session_id)s and s.user_id = %(user_id)s and s.revoked_at is null
   and s.expires_at > now() and s.last_seen_at > now() - make_interval(secs => %(idle)s)
"""

OPEN_SESSION_SQL = """
insert into auth_sessions (user_id, expires_at) values (%s, now() + make_interval(secs => %s))
returning id::text as id, expires_at
"""

# Activity is written at most once a minute per sign-in, not on every request.
TOUCH_SESSION_SQL = """
update auth_sessions set last_seen_at = now()
 where id = %s and last_seen_at < now() - interval '60 seconds'
"""

# Revoking wakes the user's open event streams (sql/009), which then check their sign-in.
REVOKE_SESSION_SQL = """
with r as (
    update auth_sessions set revoked_at = now()
     where id = %(session_id)s and user_id = %(user_id)s and revoked_at is null
    returning 1
)
select (select count(*) from r) as n, pg_notify('session_events', %(user_id)s::text)
"""

REVOKE_ALL_SESSIONS_SQL = """
with r as (
    update auth_sessions set revoked_at = now() where user_id = %(user_id)s and revoked_at is null returning 1
)
select (select count(*) from r) as n, pg_notify('session_events', %(user_id)s::text)
"""

PURGE_SESSIONS_SQL = """
delete from auth_sessions
 where id in (select id from auth_sessions
               where expires_at < now() or revoked_at < now() - interval '1 day' limit 1000)
"""


class UserStore:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def find_by_email(self, email: str) -> dict | None:
        with self._pool.connection() as conn:
            return conn.execute(f"select {_COLUMNS} from app_users where email = %s", (email,)).fetchone()

    # --- sign-ins (cookie sessions) ------------------------------------------

    def open_session(self, user_id: str, max_age_seconds: float) -> dict:
        with self._pool.connection() as conn:
            return conn.execute(OPEN_SESSION_SQL, (user_id, max_age_seconds)).fetchone()

    def user_for_session(self, user_id: str, session_id: str, idle_seconds: float) -> dict | None:
        """The user of a live sign-in (not revoked, expired or idle too long), or None."""
        try:
            uuid.UUID(user_id)
            uuid.UUID(session_id)
        except (ValueError, TypeError, AttributeError):
            return None  # not one of ours (a cookie can only carry what we issued)
        with self._pool.connection() as conn:
            return conn.execute(
                USER_FOR_SESSION_SQL, {"session_id": session_id, "user_id": user_id, "idle": idle_seconds}
            ).fetchone()

    def touch_session(self, session_id: str) -> None:
        with self._pool.connection() as conn:
            conn.execute(TOUCH_SESSION_SQL, (session_id,))

    def revoke_session(self, user_id: str, session_id: str) -> int:
        with self._pool.connection() as conn:
            return conn.execute(REVOKE_SESSION_SQL, {"session_id": session_id, "user_id": user_id}).fetchone()["n"]

    def revoke_all_sessions(self, user_id: str) -> int:
        with self._pool.connection() as conn:
            return conn.execute(REVOKE_ALL_SESSIONS_SQL, {"user_id": user_id}).fetchone()["n"]

    def purge_ended_sessions(self) -> int:
        """Delete sign-ins past their lifetime, or revoked a day ago (a batch)."""
        with self._pool.connection() as conn:
            return conn.execute(PURGE_SESSIONS_SQL).rowcount

    def create(self, email: str, password_hash: str, business_id: str) -> dict | None:
        """Insert a user; None when the email is taken."""
        with self._pool.connection() as conn:
            return conn.execute(
                f"""
                insert into app_users (email, password_hash, business_id)
                values (%s, %s, %s)
                on conflict (email) do nothing
                returning {_COLUMNS}
                """,
                (email, password_hash, business_id),
            ).fetchone()

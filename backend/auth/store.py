"""SQL for users who sign in with email and password."""

from __future__ import annotations

import uuid

from psycopg_pool import ConnectionPool

_COLUMNS = "id::text as id, email, password_hash, business_id, created_at"


class UserStore:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def find_by_email(self, email: str) -> dict | None:
        with self._pool.connection() as conn:
            return conn.execute(f"select {_COLUMNS} from app_users where email = %s", (email,)).fetchone()

    def find_by_id(self, user_id: str) -> dict | None:
        try:
            uuid.UUID(user_id)
        except (ValueError, TypeError):
            return None  # not one of ours (a cookie can only carry what we issued)
        with self._pool.connection() as conn:
            return conn.execute(f"select {_COLUMNS} from app_users where id = %s", (user_id,)).fetchone()

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

"""All SQL for chat_session_runs: the lease that says "a reply is being written in this session".

One row per session with a reply in progress, renewed by the writing process
(RunLeases); a row whose lease expired belongs to a dead process and is taken
over or reconciled. Methods that take a `conn` run inside the caller's
transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence

from psycopg import Connection
from psycopg_pool import ConnectionPool

from backend.sessions.store import SESSION_COLUMNS

# The user's live replies, for the per-user cap (start_chat_run, sql/017, counts them under the user's lock).
LIVE_RUNS_OF_USER = (
    "(select count(*) from chat_session_runs where user_id = %(user_id)s and lease_expires_at > now())"
)

# The session row's columns as returned by sql/017 and sql/018 (a composite `session_row`).
SESSION_ROW_COLUMNS = ", ".join(f"(r.session_row).{c.strip()}" for c in SESSION_COLUMNS.split(","))

# The common start of a turn in one round trip (sql/017): the session row (read
# only, to say why a run could not start) and, unless it is archived or full or
# the user's cap is reached, its lease, taken under the user's lock.
START_RUN_IN_SESSION_SQL = (
    "select " + SESSION_ROW_COLUMNS
    + ", r.new_run_id from public.start_chat_run(%(user_id)s::text, %(session_id)s::text, %(run_id)s::uuid,"
    " %(owner)s::text, %(lease_seconds)s::float8, %(max_messages)s::integer, %(max_bytes)s::bigint,"
    " %(max_runs)s::integer) as r"
)

# A turn's end in one round trip when its history's size is known (sql/018): the
# session row as it now is, and whether it counted (false: nothing was changed).
END_COUNTED_RUN_SQL = (
    "select " + SESSION_ROW_COLUMNS
    + ", r.counted from public.end_chat_run(%(user_id)s::text, %(session_id)s::text, %(run_id)s::uuid,"
    " %(outcome)s::text, %(checkpoint_id)s::text, %(message_count)s::integer, %(history_bytes)s::bigint) as r"
)

RENEW_RUNS_SQL = """
update chat_session_runs set lease_expires_at = now() + make_interval(secs => %s)
 where run_id = any(%s)
returning run_id, cancel_requested_at is not null as cancel
"""

REQUEST_CANCEL_SQL = """
update chat_session_runs set cancel_requested_at = coalesce(cancel_requested_at, now())
 where user_id = %s and session_id = %s and lease_expires_at > now()
returning run_id
"""

RUN_IS_LIVE_SQL = "select 1 from chat_session_runs where user_id = %s and session_id = %s and lease_expires_at > now()"

EXPIRED_RUNS_SQL = "select user_id, session_id, run_id from chat_session_runs where lease_expires_at < now() limit %s"

# Read by the run.finished event trigger at commit (sql/009).
SET_RUN_OUTCOME_SQL = "select set_config('chat.run_outcome', %s, true)"

END_RUN_SQL = "delete from chat_session_runs where run_id = %s"

END_EXPIRED_RUNS_SQL = (
    "delete from chat_session_runs where user_id = %s and session_id = %s and lease_expires_at < now()"
)


class RunStore:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def live_runs(self, user_id: str) -> int:
        with self._pool.connection() as conn:
            return conn.execute(f"select {LIVE_RUNS_OF_USER} as n", {"user_id": user_id}).fetchone()["n"]

    def start_run_in_session(
        self, user_id: str, session_id: str, owner: str, lease_seconds: float, *, max_messages: int,
        max_bytes: int, max_runs: int, then_read: Callable[[dict], tuple[str, Sequence]] | None = None,
    ) -> tuple[dict | None, uuid.UUID | None, dict | None]:
        """Read the session and, unless it is archived or full, take its lease under the
        user's lock (an expired lease, left by a dead process, is taken over), in one statement.

        Once the lease is taken, `then_read(session row)` (a query and its
        parameters) runs on the same connection: the turn's checkpoint, read
        after its lease committed (so nothing written before it is missed)
        without waiting for a pooled connection a second time.

        Returns (session row, run id, the read's first row): no session row when
        the user has no such session; a row and no run id when it is archived,
        full, at the user's cap or a live run holds it.
        """
        params = {"user_id": user_id, "session_id": session_id, "run_id": uuid.uuid4(), "owner": owner,
                  "lease_seconds": lease_seconds, "max_messages": max_messages, "max_bytes": max_bytes,
                  "max_runs": max_runs}
        read_row = None
        with self._pool.connection() as conn:
            row = conn.execute(START_RUN_IN_SESSION_SQL, params).fetchone()
            if row is not None and row["new_run_id"] is not None and then_read is not None:
                with conn.cursor(binary=True) as cur:
                    read_row = cur.execute(*then_read(row)).fetchone()
        if row is None:
            return None, None, None
        return row, row.pop("new_run_id"), read_row

    def end_counted_run(
        self, user_id: str, session_id: str, run_id: uuid.UUID, outcome: str, *, checkpoint_id: str,
        message_count: int, history_bytes: int,
    ) -> tuple[dict | None, bool]:
        """End the run and set the session's counts in one statement, if `checkpoint_id` (measured
        as `message_count` messages of `history_bytes`) is the thread's latest checkpoint.

        Returns (session row, True) when done; (session row, False) when another
        checkpoint is the latest and nothing was changed; (None, False) when the
        session is gone.
        """
        with self._pool.connection() as conn:
            row = conn.execute(
                END_COUNTED_RUN_SQL,
                {"user_id": user_id, "session_id": session_id, "run_id": run_id, "outcome": outcome,
                 "checkpoint_id": checkpoint_id, "message_count": message_count, "history_bytes": history_bytes},
            ).fetchone()
        if row is None:
            return None, False
        return row, row.pop("counted")

    @staticmethod
    def renew_runs_on(conn: Connection, run_ids: list[uuid.UUID], lease_seconds: float) -> dict[uuid.UUID, bool]:
        """Extend these leases, on the caller's connection (autocommit, dict rows); return
        {run_id: cancel requested} for those still held. The lease keeper's own connection:
        a pooled one could wait in the pool's queue longer than a lease lasts."""
        rows = conn.execute(RENEW_RUNS_SQL, (lease_seconds, run_ids)).fetchall()
        return {r["run_id"]: r["cancel"] for r in rows}

    def request_cancel(self, user_id: str, session_id: str) -> bool:
        """Ask whichever process writes this session's reply to stop. True if one is live."""
        with self._pool.connection() as conn:
            return conn.execute(REQUEST_CANCEL_SQL, (user_id, session_id)).fetchone() is not None

    def run_is_live(self, user_id: str, session_id: str) -> bool:
        """Whether a reply is being written in the session, by any process."""
        with self._pool.connection() as conn:
            return self.live_on(conn, user_id, session_id)

    @staticmethod
    def live_on(conn: Connection, user_id: str, session_id: str) -> bool:
        """run_is_live on the caller's connection (inside its transaction)."""
        return conn.execute(RUN_IS_LIVE_SQL, (user_id, session_id)).fetchone() is not None

    def expired_runs(self, limit: int = 100) -> list[dict]:
        with self._pool.connection() as conn:
            return conn.execute(EXPIRED_RUNS_SQL, (limit,)).fetchall()

    @staticmethod
    def end_run(conn: Connection, run_id: uuid.UUID, outcome: str) -> None:
        """Remove the run row (`outcome`: done, error or cancelled, for the run.finished event)."""
        conn.execute(SET_RUN_OUTCOME_SQL, (outcome,))
        conn.execute(END_RUN_SQL, (run_id,))

    @staticmethod
    def end_expired_runs(conn: Connection, user_id: str, session_id: str, outcome: str) -> bool:
        """Remove the session's run row if its lease expired (a dead process's); False if none was."""
        conn.execute(SET_RUN_OUTCOME_SQL, (outcome,))
        return conn.execute(END_EXPIRED_RUNS_SQL, (user_id, session_id)).rowcount > 0

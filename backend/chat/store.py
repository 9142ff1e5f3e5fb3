"""All SQL for chat turns: run leases, exact counts, naming claims, orphaned threads."""

from __future__ import annotations

import uuid

from langgraph.checkpoint.postgres import PostgresSaver
from psycopg_pool import ConnectionPool

from backend.sessions.store import CHECKPOINT_TABLES, SESSION_COLUMNS, increment_message_count
from llm.messages import load_thread_messages, visible_messages

NAMING_CLAIM_MINUTES = 5


class ChatStore:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    # --- run leases: "a reply is being written in this session" ---------------

    def live_runs(self, user_id: str) -> int:
        with self._pool.connection() as conn:
            return conn.execute(f"select {LIVE_RUNS_OF_USER} as n", {"user_id": user_id}).fetchone()["n"]

    def acquire_run(
        self, user_id: str, session_id: str, owner: str, lease_seconds: float, max_runs: int = 2**31 - 1
    ) -> uuid.UUID | None:
        """Take the session for a new reply; None while another live run holds it.

        A lease left by a dead process (expired) is taken over. Raises
        psycopg.errors.ForeignKeyViolation if the session is gone.
        """
        run_id = uuid.uuid4()
        with self._pool.connection() as conn, conn.transaction(), conn.pipeline():
            conn.execute(LOCK_USER_RUNS_SQL, (user_id,))
            row = conn.execute(
                ACQUIRE_RUN_SQL,
                {"user_id": user_id, "session_id": session_id, "run_id": run_id, "owner": owner,
                 "lease_seconds": lease_seconds, "max_runs": max_runs},
            ).fetchone()
        return row["run_id"] if row else None

    def start_run_in_session(
        self, user_id: str, session_id: str, owner: str, lease_seconds: float, max_messages: int, max_runs: int
    ) -> tuple[dict | None, uuid.UUID | None]:
        """The common start of a turn in one round trip: read the session and,
        unless it is archived or full, take its lease (as acquire_run does).

        Returns (session row, run id): (None, None) when the user has no such
        session; a row and None when it is archived or a live run holds it.
        """
        with self._pool.connection() as conn, conn.transaction(), conn.pipeline():
            # The user's runs are counted under a lock of theirs, so a burst of
            # starts cannot pass the per-user cap together (one round trip: pipelined).
            conn.execute(LOCK_USER_RUNS_SQL, (user_id,))
            row = conn.execute(
                START_RUN_IN_SESSION_SQL,
                {"user_id": user_id, "session_id": session_id, "run_id": uuid.uuid4(), "owner": owner,
                 "lease_seconds": lease_seconds, "max_messages": max_messages, "max_runs": max_runs},
            ).fetchone()
        if row is None:
            return None, None
        return row, row.pop("new_run_id")

    def renew_runs(self, run_ids: list[uuid.UUID], lease_seconds: float) -> dict[uuid.UUID, bool]:
        """Extend these leases; return {run_id: cancel requested} for those still held."""
        if not run_ids:
            return {}
        with self._pool.connection() as conn:
            rows = conn.execute(
                """
                update chat_session_runs set lease_expires_at = now() + make_interval(secs => %s)
                 where run_id = any(%s)
                returning run_id, cancel_requested_at is not null as cancel
                """,
                (lease_seconds, run_ids),
            ).fetchall()
        return {r["run_id"]: r["cancel"] for r in rows}

    def request_cancel(self, user_id: str, session_id: str) -> bool:
        """Ask whichever process writes this session's reply to stop. True if one is live."""
        with self._pool.connection() as conn:
            row = conn.execute(
                """
                update chat_session_runs set cancel_requested_at = coalesce(cancel_requested_at, now())
                 where user_id = %s and session_id = %s and lease_expires_at > now()
                returning run_id
                """,
                (user_id, session_id),
            ).fetchone()
        return row is not None

    def run_is_live(self, user_id: str, session_id: str) -> bool:
        with self._pool.connection() as conn:
            return conn.execute(
                "select 1 from chat_session_runs where user_id = %s and session_id = %s and lease_expires_at > now()",
                (user_id, session_id),
            ).fetchone() is not None

    def expired_runs(self, limit: int = 100) -> list[dict]:
        with self._pool.connection() as conn:
            return conn.execute(
                "select user_id, session_id, run_id from chat_session_runs where lease_expires_at < now() limit %s",
                (limit,),
            ).fetchall()

    # --- exact counts ------------------------------------------------------------

    def finish_run(
        self, user_id: str, session_id: str, run_id: uuid.UUID | None, outcome: str = "error"
    ) -> dict | None:
        """Bring message_count level with the thread's history and end the run, atomically.

        With the session row locked no checkpoint write can land (see
        SessionCheckpointSaver), so the history read here is final. The count
        moves through increment_session_message_count; the run row goes in
        the same transaction, so a crash leaves either both or neither, and a
        later reconcile (run_id None: any expired run) repairs the rest.
        `outcome` (done, error, cancelled) is what the run.finished event says;
        a reply that finished marks the session unread.
        Returns the session row, or None if the session is gone.
        """
        with self._pool.connection() as conn, conn.transaction():
            # Read by the run.finished event trigger, at commit (sql/009).
            conn.execute("select set_config('chat.run_outcome', %s, true)", (outcome,))
            row = conn.execute(
                f"""
                update chat_sessions set has_unread = has_unread or %s
                 where user_id = %s and session_id = %s
                returning {SESSION_COLUMNS}
                """,
                (outcome == "done", user_id, session_id),
            ).fetchone()  # the update locks the row, as FOR UPDATE would
            if row is None:
                return None
            if run_id is not None:
                conn.execute("delete from chat_session_runs where run_id = %s", (run_id,))
            else:
                deleted = conn.execute(
                    "delete from chat_session_runs where user_id = %s and session_id = %s and lease_expires_at < now()",
                    (user_id, session_id),
                ).rowcount
                if not deleted:
                    return row  # a live run took over meanwhile; it will count
            count = len(visible_messages(load_thread_messages(PostgresSaver(conn), row["thread_id"])))
            delta = count - row["message_count"]
            if delta > 0:
                increment_message_count(conn, user_id, session_id, delta)
            elif delta < 0:
                # Only a custom graph that removes messages gets here; counts follow history.
                conn.execute("update chat_sessions set message_count = %s where id = %s", (count, row["id"]))
            return conn.execute(f"select {SESSION_COLUMNS} from chat_sessions where id = %s", (row["id"],)).fetchone()

    # --- naming --------------------------------------------------------------------

    def claim_naming(self, user_id: str, session_id: str) -> dict | None:
        """Claim a still-default name for naming; one process at a time, retried after a while."""
        with self._pool.connection() as conn:
            return conn.execute(
                f"""
                update chat_sessions set naming_claimed_at = now()
                 where user_id = %s and session_id = %s and name_source = 'default'
                   and (naming_claimed_at is null
                        or naming_claimed_at < now() - make_interval(mins => {NAMING_CLAIM_MINUTES}))
                returning {SESSION_COLUMNS}
                """,
                (user_id, session_id),
            ).fetchone()

    def apply_auto_name(self, user_id: str, session_id: str, name: str) -> bool:
        """Write the generated name only if nobody named the session meanwhile."""
        with self._pool.connection() as conn:
            return (
                conn.execute(
                    """
                    update chat_sessions set session_name = %s, name_source = 'auto'
                     where user_id = %s and session_id = %s and name_source = 'default'
                    """,
                    (name, user_id, session_id),
                ).rowcount
                == 1
            )

    def unnamed_sessions(self, limit: int = 50) -> list[dict]:
        """Sessions with messages but no name: their naming was lost (crash, restart)."""
        with self._pool.connection() as conn:
            return conn.execute(
                f"""
                select {SESSION_COLUMNS} from chat_sessions
                 where name_source = 'default' and message_count > 0
                   and (naming_claimed_at is null
                        or naming_claimed_at < now() - make_interval(mins => {NAMING_CLAIM_MINUTES}))
                 order by created_at
                 limit %s
                """,
                (limit,),
            ).fetchall()

    def first_user_message(self, thread_id: str) -> str | None:
        with self._pool.connection() as conn:
            messages = visible_messages(load_thread_messages(PostgresSaver(conn), thread_id))
        return next((m["content"] for m in messages if m["role"] == "user"), None)

    # --- orphaned threads ------------------------------------------------------------

    def orphan_threads(self, min_age_seconds: float, limit: int) -> list[str]:
        """Threads this backend made (chat_threads) whose session is gone, quiet for min_age.

        Only registered threads are considered: a thread other code keeps in the
        same tables is never touched, whatever its name. The age is that of the
        latest checkpoint, or of the registration when there is none.
        """
        with self._pool.connection() as conn:
            rows = conn.execute(
                """
                select t.thread_id from chat_threads t
                 where not exists (select 1 from chat_sessions s where s.thread_id = t.thread_id)
                   and greatest(t.created_at,
                                coalesce((select max((c.checkpoint ->> 'ts')::timestamptz) from checkpoints c
                                           where c.thread_id = t.thread_id), t.created_at))
                       < now() - make_interval(secs => %s)
                 order by t.thread_id
                 limit %s
                """,
                (min_age_seconds, limit),
            ).fetchall()
        return [r["thread_id"] for r in rows]

    def delete_orphan_thread(self, thread_id: str) -> dict[str, int]:
        """Delete one orphaned thread, unless a session claims it meanwhile.

        The check runs after the deletes, on a fresh snapshot: a session
        created for this thread while the sweep ran rolls the deletes back.
        """
        with self._pool.connection() as conn:
            try:
                with conn.transaction():
                    counts = {
                        table: conn.execute(f"delete from {table} where thread_id = %s", (thread_id,)).rowcount
                        for table in CHECKPOINT_TABLES
                    }
                    conn.execute("delete from chat_threads where thread_id = %s", (thread_id,))
                    if conn.execute("select 1 from chat_sessions where thread_id = %s", (thread_id,)).fetchone():
                        raise _ThreadClaimed()
            except _ThreadClaimed:
                return {table: 0 for table in CHECKPOINT_TABLES}
        return counts


# The user's live replies, for the per-user cap (counted under LOCK_USER_RUNS_SQL).
LIVE_RUNS_OF_USER = (
    "(select count(*) from chat_session_runs where user_id = %(user_id)s and lease_expires_at > now())"
)

# A new run takes the session's lease; a lease left by a dead process (expired) is taken over.
_TAKE_LEASE = """
    on conflict (user_id, session_id) do update
       set run_id = excluded.run_id, owner = excluded.owner, started_at = now(),
           lease_expires_at = excluded.lease_expires_at, cancel_requested_at = null
     where chat_session_runs.lease_expires_at < now()
    returning run_id
"""

ACQUIRE_RUN_SQL = f"""
insert into chat_session_runs (user_id, session_id, run_id, owner, lease_expires_at)
select %(user_id)s, %(session_id)s, %(run_id)s, %(owner)s, now() + make_interval(secs => %(lease_seconds)s)
 where {LIVE_RUNS_OF_USER} < %(max_runs)s
{_TAKE_LEASE}"""

START_RUN_IN_SESSION_SQL = f"""
with s as (
    select {SESSION_COLUMNS} from chat_sessions where user_id = %(user_id)s and session_id = %(session_id)s
), r as (
    insert into chat_session_runs (user_id, session_id, run_id, owner, lease_expires_at)
    select %(user_id)s, %(session_id)s, %(run_id)s, %(owner)s, now() + make_interval(secs => %(lease_seconds)s)
      from s where not s.is_archived and s.message_count < %(max_messages)s and {LIVE_RUNS_OF_USER} < %(max_runs)s
    {_TAKE_LEASE}
)
select s.*, (select run_id from r) as new_run_id from s
"""

LOCK_USER_RUNS_SQL = "select pg_advisory_xact_lock(hashtextextended('chat_session_runs:' || %s, 0))"


class _ThreadClaimed(Exception):
    """Rolls back an orphan delete whose thread got a session."""

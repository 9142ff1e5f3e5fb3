"""All SQL for runs: chat_session_runs, the lease that says "a reply is being written in this
session" (with its text so far), and chat_runs, the runs that ended within the replay window.

One lease row per session with a reply in progress, renewed by the writing
process (RunLeases), which writes the reply's text so far in the same
statement; a row whose lease expired belongs to a dead process and is taken
over or reconciled. When a lease row goes, a trigger keeps the run in
chat_runs (sql/023). Methods that take a `conn` run inside the caller's
transaction.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence

from psycopg import Connection
from psycopg_pool import ConnectionPool

from backend.sessions.store import SESSION_COLUMNS
from backend.usage.store import LEDGER_CTE, ledger_json

# The user's live replies, for the per-user cap (start_chat_run, sql/017, counts them under the user's lock).
LIVE_RUNS_OF_USER = (
    "(select count(*) from chat_session_runs where user_id = %(user_id)s and lease_expires_at > now())"
)

# The session row's columns as returned by sql/017 and sql/018 (a composite `session_row`).
SESSION_ROW_COLUMNS = ", ".join(f"(r.session_row).{c.strip()}" for c in SESSION_COLUMNS.split(","))

# The common start of a turn in one round trip (sql/017, through sql/024's start_chat_turn): the
# session row (read only, to say why a run could not start) and, unless it is archived or full or
# the user's cap is reached, its lease, taken under the user's lock; with a usage quota, the turn's
# allowance checked and reserved under the same lock (`blocked`: over quota, no session row).
START_RUN_IN_SESSION_SQL = (
    "select " + SESSION_ROW_COLUMNS
    + ", r.new_run_id, r.granted_tokens, r.blocked, r.retry_after_seconds, r.tokens_left, r.cost_left_micros"
    " from public.start_chat_turn(%(user_id)s::text, %(session_id)s::text, %(run_id)s::uuid,"
    " %(owner)s::text, %(lease_seconds)s::float8, %(max_messages)s::integer, %(max_bytes)s::bigint,"
    " %(max_runs)s::integer, %(query)s::text, coalesce(%(now)s::timestamptz, now()), %(defaults)s::jsonb,"
    " %(want_tokens)s::integer, %(context_tokens)s::integer, %(price_input)s::float8, %(price_output)s::float8,"
    " %(reserve_seconds)s::float8) as r"
)
# A start without quotas to apply (start_chat_turn's parameters for them).
NO_USAGE_LIMITS = {"now": None, "defaults": None, "want_tokens": 2**31 - 1, "context_tokens": None,
                   "price_input": 0.0, "price_output": 0.0, "reserve_seconds": 0.0}
USAGE_GRANT_COLUMNS = ("granted_tokens", "blocked", "retry_after_seconds", "tokens_left", "cost_left_micros")

# A turn's end in one round trip when its history's size is known (sql/018): the
# session row as it now is, and whether it counted (false: nothing was changed). The
# run's usage goes into the ledger in the same statement, whatever else happens (LEDGER_CTE).
END_COUNTED_RUN_SQL = (
    "with " + LEDGER_CTE + " select " + SESSION_ROW_COLUMNS
    + ", r.counted, r.queued, set_config('chat.run_final', %(final)s, true) as final from public.end_chat_run(%(user_id)s::text, %(session_id)s::text, %(run_id)s::uuid,"
    " %(outcome)s::text, %(checkpoint_id)s::text, %(message_count)s::integer, %(history_bytes)s::bigint) as r"
)

# Every lease of a process, and each reply's text past what was written before (`upto`
# characters, null: nothing new). Rewriting from `upto` makes a retry after an unknown
# outcome harmless: text written twice lands in the same place.
RENEW_RUNS_SQL = """
update chat_session_runs r set lease_expires_at = now() + make_interval(secs => %s),
       reply = case when v.upto is null then r.reply else left(r.reply, v.upto) || v.more end
  from unnest(%s::uuid[], %s::integer[], %s::text[]) as v(run_id, upto, more)
 where r.run_id = v.run_id
returning r.run_id, r.cancel_reason
"""

REQUEST_CANCEL_SQL = """
update chat_session_runs set cancel_requested_at = coalesce(cancel_requested_at, now()),
       cancel_reason = coalesce(cancel_reason, 'delete')
 where user_id = %s and session_id = %s and lease_expires_at > now()
returning run_id
"""

# Stop one run, named: a cancel never reaches a newer run of the same session.
REQUEST_RUN_CANCEL_SQL = """
update chat_session_runs set cancel_requested_at = coalesce(cancel_requested_at, now()),
       cancel_reason = coalesce(cancel_reason, %s)
 where run_id = %s and user_id = %s and session_id = %s and lease_expires_at > now()
returning run_id
"""

# The terminal event of the run this transaction ends, for chat_runs (sql/023's trigger, at commit).
SET_RUN_FINAL_SQL = "select set_config('chat.run_final', %s, true)"

# A session's runs: the one being written (or whose process died), those queued behind it, and those
# ended within the window.
LIST_RUNS_SQL = """
select run_id, case when lease_expires_at > now() then 'running' else 'interrupted' end as status,
       started_at as created_at, started_at, null::timestamptz as ended_at
  from chat_session_runs where user_id = %(user_id)s and session_id = %(session_id)s
union all
select run_id, 'queued', created_at, null, null
  from chat_queued_runs where user_id = %(user_id)s and session_id = %(session_id)s
union all
select run_id, status, started_at as created_at, started_at, ended_at
  from chat_runs
 where user_id = %(user_id)s and session_id = %(session_id)s
   and ended_at > now() - make_interval(secs => %(window)s)
 order by created_at, run_id
"""

# One run with its text: queued, live (lease held), its process dead (lease expired), or ended within the window.
READ_RUN_SQL = """
select run_id, case when lease_expires_at > now() then 'running' else 'interrupted' end as status,
       started_at as created_at, started_at, null::timestamptz as ended_at, reply,
       null::text as final_event, null::jsonb as final_data
  from chat_session_runs
 where run_id = %(run_id)s and user_id = %(user_id)s and session_id = %(session_id)s
union all
select run_id, 'queued', created_at, null, null, '', null, null
  from chat_queued_runs
 where run_id = %(run_id)s and user_id = %(user_id)s and session_id = %(session_id)s
union all
select run_id, status, started_at, started_at, ended_at, reply, final_event, final_data
  from chat_runs
 where run_id = %(run_id)s and user_id = %(user_id)s and session_id = %(session_id)s
   and ended_at > now() - make_interval(secs => %(window)s)
 limit 1
"""

# An enqueue: the session row first (FOR KEY SHARE waits for a run's end holding FOR UPDATE, so
# the end sees this message queued, or this sees the run gone), then its live run, if any.
LOCK_SESSION_FOR_QUEUE_SQL = "select 1 from chat_sessions where user_id = %s and session_id = %s for key share"
# The session's live run: whether a reply is being written in it (a delete's check), and which.
LIVE_RUN_OF_SESSION_SQL = (
    "select run_id from chat_session_runs where user_id = %s and session_id = %s and lease_expires_at > now()"
)
QUEUE_LENGTH_SQL = "select count(*) as n from chat_queued_runs where user_id = %s and session_id = %s"
ENQUEUE_SQL = "insert into chat_queued_runs (run_id, user_id, session_id, query) values (%s, %s, %s, %s)"
HAS_QUEUED_SQL = "select exists (select 1 from chat_queued_runs where user_id = %s and session_id = %s) as queued"

# The oldest message queued in a session, taken by one process only.
QUEUE_HEAD_SQL = """
select run_id, query from chat_queued_runs where user_id = %s and session_id = %s
 order by created_at, run_id limit 1 for update skip locked
"""
DEQUEUE_SQL = "delete from chat_queued_runs where run_id = %s"

# A queued run that will not run (Stop, or its session can take no turn): kept as ended for its reader.
END_QUEUED_SQL = """
with gone as (
    delete from chat_queued_runs where user_id = %(user_id)s and session_id = %(session_id)s
       and (%(run_id)s::uuid is null or run_id = %(run_id)s::uuid)
    returning run_id, user_id, session_id, created_at)
insert into chat_runs (run_id, user_id, session_id, status, started_at, reply, final_event, final_data)
select run_id, user_id, session_id, %(status)s, created_at, '', 'error',
       %(data)s::jsonb || jsonb_build_object('run_id', run_id)
  from gone
returning run_id
"""

# Sessions with a message queued and no live run: their queue is started by upkeep (a run ended by a
# process that died, or a start that waited for the user's cap).
STALLED_QUEUES_SQL = """
select distinct q.user_id, q.session_id from chat_queued_runs q
 where not exists (select 1 from chat_session_runs r
                    where r.user_id = q.user_id and r.session_id = q.session_id and r.lease_expires_at > now())
 limit %s
"""

PURGE_ENDED_RUNS_SQL = """
delete from chat_runs where (user_id, session_id, run_id) in (
    select user_id, session_id, run_id from chat_runs where ended_at < now() - make_interval(secs => %s) limit %s)
"""

# One process takes a dead process's run to finish it (the lease again, under its own name): what it
# had written, and the session's thread to keep it in.
CLAIM_EXPIRED_RUN_SQL = """
update chat_session_runs r set owner = %s, lease_expires_at = now() + make_interval(secs => %s)
  from chat_sessions s
 where r.run_id = %s and r.lease_expires_at < now() and s.user_id = r.user_id and s.session_id = r.session_id
returning r.reply, r.query, r.started_at, s.thread_id, s.message_count, s.business_id, s.id as session_row_id
"""

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
        query: str | None = None, usage_limits: dict | None = None,
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

        `usage_limits` (UsageService.start_limits): the quotas' parameters of start_chat_turn.
        The row's `usage_grant` says what the turn was granted, or that it is over quota
        (`blocked`; then the session columns are null and no run started).
        """
        params = {"user_id": user_id, "session_id": session_id, "run_id": uuid.uuid4(), "owner": owner,
                  "lease_seconds": lease_seconds, "max_messages": max_messages, "max_bytes": max_bytes,
                  "max_runs": max_runs, "query": query, **(usage_limits or NO_USAGE_LIMITS)}
        read_row = None
        with self._pool.connection() as conn:
            row = conn.execute(START_RUN_IN_SESSION_SQL, params).fetchone()
            if row is not None and row["new_run_id"] is not None and then_read is not None:
                with conn.cursor(binary=True) as cur:
                    read_row = cur.execute(*then_read(row)).fetchone()
        if row is None:
            return None, None, None
        row["usage_grant"] = {key: row.pop(key) for key in USAGE_GRANT_COLUMNS}
        return row, row.pop("new_run_id"), read_row

    def end_counted_run(
        self, user_id: str, session_id: str, run_id: uuid.UUID, outcome: str, *, checkpoint_id: str,
        message_count: int, history_bytes: int, final: str | None = None, usage: list[dict] | None = None,
    ) -> tuple[dict | None, bool, bool]:
        """End the run and set the session's counts in one statement, if `checkpoint_id` (measured
        as `message_count` messages of `history_bytes`) is the thread's latest checkpoint.

        Returns (session row, True, whether a message is queued behind it) when done; (session
        row, False, False) when another checkpoint is the latest and nothing was changed; (None,
        False, False) when the session is gone. `usage` (ledger rows) is recorded in every case.
        """
        with self._pool.connection() as conn:
            row = conn.execute(
                END_COUNTED_RUN_SQL,
                {"user_id": user_id, "session_id": session_id, "run_id": run_id, "outcome": outcome,
                 "checkpoint_id": checkpoint_id, "message_count": message_count, "history_bytes": history_bytes,
                 "final": final or "", "usage": ledger_json(usage or [])},
            ).fetchone()
        if row is None:
            return None, False, False
        row.pop("final")
        return row, row.pop("counted"), row.pop("queued")

    @staticmethod
    def renew_runs_on(
        conn: Connection, progress: Sequence[tuple[uuid.UUID, int | None, str | None]], lease_seconds: float,
    ) -> dict[uuid.UUID, str | None]:
        """Extend these leases and write each reply's new text ((run_id, written so far, what
        follows), or None twice when nothing is new), on the caller's connection (autocommit,
        dict rows); return {run_id: why a cancel was asked, or None} for those still held. The
        lease keeper's own connection: a pooled one could wait in the pool's queue longer than a
        lease lasts."""
        run_ids, upto, more = (list(column) for column in zip(*progress)) if progress else ([], [], [])
        rows = conn.execute(RENEW_RUNS_SQL, (lease_seconds, run_ids, upto, more)).fetchall()
        return {r["run_id"]: r["cancel_reason"] for r in rows}

    def request_cancel(self, user_id: str, session_id: str) -> bool:
        """Ask whichever process writes this session's reply to stop (a forced delete). True if one is live."""
        with self._pool.connection() as conn:
            return conn.execute(REQUEST_CANCEL_SQL, (user_id, session_id)).fetchone() is not None

    def request_run_cancel(self, user_id: str, session_id: str, run_id: uuid.UUID, reason: str = "user") -> bool:
        """Ask whichever process writes this run to stop it: `reason` user (Stop), interrupt or
        rollback (a new message). False if it is not live."""
        with self._pool.connection() as conn:
            return conn.execute(REQUEST_RUN_CANCEL_SQL, (reason, run_id, user_id, session_id)).fetchone() is not None

    def list_runs(self, user_id: str, session_id: str, window_seconds: float) -> list[dict]:
        with self._pool.connection() as conn:
            return conn.execute(
                LIST_RUNS_SQL, {"user_id": user_id, "session_id": session_id, "window": window_seconds},
            ).fetchall()

    def read_run(self, user_id: str, session_id: str, run_id: uuid.UUID, window_seconds: float) -> dict | None:
        """The run with its text so far (`final_event` set once it ended), or None past the window."""
        with self._pool.connection() as conn:
            return conn.execute(
                READ_RUN_SQL,
                {"user_id": user_id, "session_id": session_id, "run_id": run_id, "window": window_seconds},
            ).fetchone()

    def enqueue(self, user_id: str, session_id: str, run_id: uuid.UUID, query: str, max_queued: int) -> str | None:
        """Queue a message behind the session's live run: 'queued'; 'free' when no run is live
        (start it instead); 'full' at `max_queued`; None when the user has no such session."""
        with self._pool.connection() as conn, conn.transaction():
            if conn.execute(LOCK_SESSION_FOR_QUEUE_SQL, (user_id, session_id)).fetchone() is None:
                return None
            if conn.execute(LIVE_RUN_OF_SESSION_SQL, (user_id, session_id)).fetchone() is None:
                return "free"
            if conn.execute(QUEUE_LENGTH_SQL, (user_id, session_id)).fetchone()["n"] >= max_queued:
                return "full"
            conn.execute(ENQUEUE_SQL, (run_id, user_id, session_id, query))
            return "queued"

    def live_run_of(self, user_id: str, session_id: str) -> uuid.UUID | None:
        """The run being written in the session now, by any process."""
        with self._pool.connection() as conn:
            row = conn.execute(LIVE_RUN_OF_SESSION_SQL, (user_id, session_id)).fetchone()
        return row["run_id"] if row else None

    def start_queued_run(
        self, user_id: str, session_id: str, owner: str, lease_seconds: float, *, max_messages: int,
        max_bytes: int, max_runs: int, then_read: Callable[[dict], tuple[str, Sequence]],
        usage_limits: dict | None = None,
    ) -> tuple[dict | None, uuid.UUID | None, str | None, dict | None]:
        """Start the oldest message queued in the session, under its own run id, if the session can
        take a turn (start_run_in_session's rules), in one transaction: (session row, run id, the
        message, the read's first row). No run id: nothing queued, another process took it, or the
        session is busy, archived, full or at the user's cap (the session row says which)."""
        with self._pool.connection() as conn, conn.transaction():
            head = conn.execute(QUEUE_HEAD_SQL, (user_id, session_id)).fetchone()
            if head is None:
                return None, None, None, None
            row = conn.execute(START_RUN_IN_SESSION_SQL, {
                "user_id": user_id, "session_id": session_id, "run_id": head["run_id"], "owner": owner,
                "lease_seconds": lease_seconds, "max_messages": max_messages, "max_bytes": max_bytes,
                "max_runs": max_runs, "query": head["query"], **(usage_limits or NO_USAGE_LIMITS)}).fetchone()
            if row is not None:
                row["usage_grant"] = {key: row.pop(key) for key in USAGE_GRANT_COLUMNS}
            if row is None or row["new_run_id"] is None:
                return row, None, None, None
            conn.execute(DEQUEUE_SQL, (head["run_id"],))
            with conn.cursor(binary=True) as cur:
                read_row = cur.execute(*then_read(row)).fetchone()
        return row, row.pop("new_run_id"), head["query"], read_row

    def end_queued(self, user_id: str, session_id: str, run_id: uuid.UUID | None, status: str, error: dict) -> int:
        """Take queued runs out of the queue (one, or all of the session's with `run_id` None) and keep
        them as ended with `error` for their readers. Returns how many."""
        with self._pool.connection() as conn:
            return len(conn.execute(END_QUEUED_SQL, {
                "user_id": user_id, "session_id": session_id, "run_id": run_id, "status": status,
                "data": json.dumps(error)}).fetchall())

    @staticmethod
    def has_queued(conn: Connection, user_id: str, session_id: str) -> bool:
        return conn.execute(HAS_QUEUED_SQL, (user_id, session_id)).fetchone()["queued"]

    def stalled_queues(self, limit: int = 100) -> list[dict]:
        with self._pool.connection() as conn:
            return conn.execute(STALLED_QUEUES_SQL, (limit,)).fetchall()

    def purge_ended_runs(self, window_seconds: float, limit: int = 1000) -> int:
        """Forget runs that ended before the replay window; how many went."""
        with self._pool.connection() as conn:
            return conn.execute(PURGE_ENDED_RUNS_SQL, (window_seconds, limit)).rowcount

    def run_is_live(self, user_id: str, session_id: str) -> bool:
        """Whether a reply is being written in the session, by any process."""
        with self._pool.connection() as conn:
            return self.live_on(conn, user_id, session_id)

    @staticmethod
    def live_on(conn: Connection, user_id: str, session_id: str) -> bool:
        """run_is_live on the caller's connection (inside its transaction)."""
        return conn.execute(LIVE_RUN_OF_SESSION_SQL, (user_id, session_id)).fetchone() is not None

    def claim_expired_run(self, run_id: uuid.UUID, owner: str, lease_seconds: float) -> dict | None:
        """Take a dead process's run to finish it: {reply, query, started_at, thread_id, message_count}
        (the session's, counted before the run), or None if another process did."""
        with self._pool.connection() as conn:
            return conn.execute(CLAIM_EXPIRED_RUN_SQL, (owner, lease_seconds, run_id)).fetchone()

    def expired_runs(self, limit: int = 100) -> list[dict]:
        with self._pool.connection() as conn:
            return conn.execute(EXPIRED_RUNS_SQL, (limit,)).fetchall()

    @staticmethod
    def end_run(conn: Connection, run_id: uuid.UUID, outcome: str, final: str | None = None) -> None:
        """Remove the run row (`outcome`: done, error or cancelled, for the run.finished event;
        `final`, RunFinal.json, how the run is kept for its readers)."""
        conn.execute(SET_RUN_OUTCOME_SQL, (outcome,))
        if final:
            conn.execute(SET_RUN_FINAL_SQL, (final,))
        conn.execute(END_RUN_SQL, (run_id,))

    @staticmethod
    def end_expired_runs(conn: Connection, user_id: str, session_id: str, outcome: str) -> bool:
        """Remove the session's run row if its lease expired (a dead process's); False if none was."""
        conn.execute(SET_RUN_OUTCOME_SQL, (outcome,))
        return conn.execute(END_EXPIRED_RUNS_SQL, (user_id, session_id)).rowcount > 0

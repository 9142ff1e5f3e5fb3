"""All SQL for usage (sql/024, 026, 028): the ledger, its totals, quotas and the reservations of running turns.

A turn's start and end cross into runs' statements on purpose, for one round trip
each: its start calls `start_chat_turn` (RunStore, START_RUN_IN_SESSION_SQL) and its
end writes its ledger rows and drops its reservation in the end's statement
(LEDGER_CTE, in RunStore's END_COUNTED_RUN_SQL). Methods that take a `conn` run
inside the caller's transaction.
"""

from __future__ import annotations

import json
import uuid
from datetime import date, datetime

from psycopg import Connection
from psycopg_pool import ConnectionPool

LEDGER_COLUMNS = (
    "created_at timestamptz, user_id text, business_id text, session_id text, session_row_id bigint, run_id uuid, "
    "kind text, model text, input_tokens integer, cached_input_tokens integer, output_tokens integer, "
    "reasoning_tokens integer, cost_micros bigint, currency text, price_input numeric, price_cached_input numeric, "
    "price_output numeric, price_version text, source text"
)
_LEDGER_NAMES = ", ".join(c.strip().split(" ")[0] for c in LEDGER_COLUMNS.split(","))
_LEDGER_VALUES = ", ".join(
    f"coalesce(u.{name}, now())" if name == "created_at" else f"u.{name}" for name in _LEDGER_NAMES.split(", "))

# Rows of `usage` (a JSON array of ledger rows) into the ledger (its trigger keeps the totals and
# sends usage.updated), and the run's reservation released: a WITH clause, so a statement that
# ends a run records its usage in the same round trip. Parameters: usage (jsonb), run_id.
LEDGER_CTE = (
    "usage_rows as (insert into public.usage_ledger (" + _LEDGER_NAMES + ") select " + _LEDGER_VALUES
    + " from jsonb_to_recordset(%(usage)s::jsonb) as u(" + LEDGER_COLUMNS + ") returning 1),"
    " usage_released as (delete from public.usage_reservations where run_id = %(run_id)s::uuid returning 1)"
)
RECORD_SQL = "with " + LEDGER_CTE + " select (select count(*) from usage_rows) as recorded"

# A session's usage over every run (and naming call) it had, by chat_sessions.id: a session id used
# again after a delete starts from nothing.
SESSION_USAGE_SQL = """
select s.session_id, coalesce(t.calls, 0) as calls, coalesce(t.input_tokens, 0) as input_tokens,
       coalesce(t.cached_input_tokens, 0) as cached_input_tokens, coalesce(t.output_tokens, 0) as output_tokens,
       coalesce(t.reasoning_tokens, 0) as reasoning_tokens, coalesce(t.cost_micros, 0) as cost_micros
  from chat_sessions s left join usage_session_totals t on t.session_row_id = s.id
 where s.user_id = %s and s.session_id = %s
"""

# The totals of a page of sessions (chat_sessions.id), in one read by the totals' primary key: a
# session id used again after a delete has a new row id, so it starts from nothing.
SESSIONS_TOTALS_SQL = ("select session_row_id, calls, input_tokens, output_tokens, cost_micros "
                       "from usage_session_totals where session_row_id = any(%s)")

_SUMS = ("sum(calls)::bigint as calls, sum(input_tokens)::bigint as input_tokens, "
         "sum(cached_input_tokens)::bigint as cached_input_tokens, sum(output_tokens)::bigint as output_tokens, "
         "sum(reasoning_tokens)::bigint as reasoning_tokens, sum(cost_micros)::bigint as cost_micros")
SESSION_ROW_USAGE_SQL = """
select coalesce(sum(calls), 0)::integer as calls, coalesce(sum(input_tokens), 0)::bigint as input_tokens,
       coalesce(sum(output_tokens), 0)::bigint as output_tokens, coalesce(sum(cost_micros), 0)::bigint as cost_micros
  from usage_session_totals where session_row_id = %s
"""

# The caller's totals between two UTC days (inclusive): by day from the user's days (a row a day),
# by model or session from the daily totals, most costly first, at most `limit` groups.
GROUPED_SQL = {
    "day": "select to_char(day, 'YYYY-MM-DD') as key, calls::bigint, input_tokens, cached_input_tokens, "
           "output_tokens, reasoning_tokens, cost_micros from usage_user_days "
           "where user_id = %s and day between %s and %s order by day limit %s",
    **{group: f"select {group}{'_id' if group == 'session' else ''} as key, {_SUMS} from usage_daily_totals "
              "where user_id = %s and day between %s and %s group by 1 order by cost_micros desc, 1 limit %s"
       for group in ("model", "session")},
}
TOTAL_SQL = f"select count(*) as days, {_SUMS} from usage_user_days where user_id = %s and day between %s and %s"

QUOTA_STATE_SQL = """
select scope, period, max_tokens, max_cost_micros, tokens_left, cost_left_micros, resets_at
  from usage_quota_state(%s, %s, coalesce(%s::timestamptz, now()), %s::jsonb)
 order by scope desc, period
"""

SET_QUOTA_SQL = """
insert into usage_quotas (scope, scope_id, period, max_tokens, max_cost_micros)
values (%s, %s, %s, %s, %s)
on conflict (scope, scope_id, period) do update
   set max_tokens = excluded.max_tokens, max_cost_micros = excluded.max_cost_micros, updated_at = now()
returning scope, scope_id, period, max_tokens, max_cost_micros
"""
CLEAR_QUOTA_SQL = "delete from usage_quotas where scope = %s and scope_id = %s and period = %s"

# A business quota's set (sql/028): first its locks, exclusively: start_chat_turn's, then the one each
# ledger row's trigger takes shared, so the turn ends of the business under way are committed first and
# later ones wait for this commit (each statement its own: the fill's snapshot follows both).
LOCK_BUSINESS_SQL = "select pg_advisory_xact_lock(hashtextextended('usage_business:' || %s, 0))"
LOCK_BUSINESS_DAYS_SQL = "select pg_advisory_xact_lock(hashtextextended('usage_business_days:' || %s, 0))"
# Then, after the quota row, the business's days from the month of `now` on (today's among them) set
# to its users' sums: replaced, not added to, so a turn that already added to a row is counted once;
# the ledger's trigger keeps them from this commit on (why nothing is lost or counted twice: sql/028).
SET_BUSINESS_DAYS_SQL = """
insert into usage_business_days as t (business_id, day, calls, input_tokens, cached_input_tokens, output_tokens,
                                      reasoning_tokens, cost_micros)
select d.business_id, d.day, sum(d.calls), sum(d.input_tokens), sum(d.cached_input_tokens), sum(d.output_tokens),
       sum(d.reasoning_tokens), sum(d.cost_micros)
  from usage_user_days d
 where d.business_id = %(business_id)s
   and d.day >= (date_trunc('month', coalesce(%(now)s::timestamptz, now()) at time zone 'UTC'))::date
 group by d.business_id, d.day
on conflict (business_id, day) do update
   set calls = excluded.calls, input_tokens = excluded.input_tokens,
       cached_input_tokens = excluded.cached_input_tokens, output_tokens = excluded.output_tokens,
       reasoning_tokens = excluded.reasoning_tokens, cost_micros = excluded.cost_micros
"""

# Retention: ledger rows older than USAGE_RETENTION_DAYS (the daily totals, which hold no call, stay).
PURGE_LEDGER_SQL = """
delete from usage_ledger where id in (
    select id from usage_ledger where created_at < now() - make_interval(days => %s) order by created_at limit %s)
"""
PURGE_RESERVATIONS_SQL = "delete from usage_reservations where expires_at < now()"


def ledger_json(rows: list[dict]) -> str:
    return json.dumps(rows, default=str)


class UsageStore:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def record(self, rows: list[dict], run_id: uuid.UUID | None = None) -> int:
        """Write ledger rows (and release `run_id`'s reservation) in one statement."""
        with self._pool.connection() as conn:
            return self.record_on(conn, rows, run_id)

    @staticmethod
    def record_on(conn: Connection, rows: list[dict], run_id: uuid.UUID | None = None) -> int:
        return conn.execute(RECORD_SQL, {"usage": ledger_json(rows), "run_id": run_id}).fetchone()["recorded"]

    def session_usage(self, user_id: str, session_id: str) -> dict | None:
        with self._pool.connection() as conn:
            return conn.execute(SESSION_USAGE_SQL, (user_id, session_id)).fetchone()

    def session_row_usage(self, session_row_id: int) -> dict:
        with self._pool.connection() as conn:
            return conn.execute(SESSION_ROW_USAGE_SQL, (session_row_id,)).fetchone()

    def sessions_totals(self, row_ids: list[int]) -> dict[int, dict]:
        """{chat_sessions.id: its totals} for those of `row_ids` that cost something."""
        with self._pool.connection() as conn:
            rows = conn.execute(SESSIONS_TOTALS_SQL, (row_ids,)).fetchall()
        return {row.pop("session_row_id"): row for row in rows}

    def grouped(self, user_id: str, group_by: str, since: date, until: date, limit: int) -> tuple[list[dict], dict]:
        """(up to `limit` groups, the totals over all of them)."""
        with self._pool.connection() as conn:
            rows = conn.execute(GROUPED_SQL[group_by], (user_id, since, until, limit)).fetchall()
            total = conn.execute(TOTAL_SQL, (user_id, since, until)).fetchone()
        total.pop("days")
        return rows, {key: value or 0 for key, value in total.items()}

    def quota_state(self, user_id: str, business_id: str, now: datetime | None, defaults: dict | None) -> list[dict]:
        with self._pool.connection() as conn:
            return conn.execute(QUOTA_STATE_SQL, (user_id, business_id, now, json.dumps(defaults or {}))).fetchall()

    def set_quota(self, scope: str, scope_id: str, period: str, max_tokens: int | None,
                  max_cost_micros: int | None, now: datetime | None = None) -> dict | None:
        """Set a quota (both limits None: remove it, so the defaults apply again). A business's, with
        its days of the month of `now` (None: the database's) filled, in one transaction."""
        with self._pool.connection() as conn:
            if max_tokens is None and max_cost_micros is None:
                conn.execute(CLEAR_QUOTA_SQL, (scope, scope_id, period))
                return None
            if scope != "business":
                return conn.execute(SET_QUOTA_SQL, (scope, scope_id, period, max_tokens, max_cost_micros)).fetchone()
            with conn.transaction():
                conn.execute(LOCK_BUSINESS_SQL, (scope_id,))
                conn.execute(LOCK_BUSINESS_DAYS_SQL, (scope_id,))
                row = conn.execute(SET_QUOTA_SQL, (scope, scope_id, period, max_tokens, max_cost_micros)).fetchone()
                conn.execute(SET_BUSINESS_DAYS_SQL, {"business_id": scope_id, "now": now})
            return row

    def purge(self, retention_days: int | None, limit: int = 10_000) -> int:
        """Expired reservations, and ledger rows past the retention; how many ledger rows went."""
        with self._pool.connection() as conn:
            conn.execute(PURGE_RESERVATIONS_SQL)
            if retention_days is None:
                return 0
            return conn.execute(PURGE_LEDGER_SQL, (retention_days, limit)).rowcount

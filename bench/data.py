"""Data for the benchmarks, built in SQL from real rows: clones of real threads, bulk sessions, sizes.

Every checkpoint row the harness makes in bulk is a copy of a row LangGraph
itself wrote through the app (a session driven through the chat endpoint),
under another thread id: same columns, same bytes, same shapes.
"""

from __future__ import annotations

import time

import psycopg

from backend.sessions.thread_store import CHECKPOINT_TABLES
from bench.common import cpu_by_pid, cpu_delta, postgres_pids

SESSION_COPY_COLUMNS = ("business_id", "session_name", "is_archived", "message_count", "created_at",
                        "last_message_at", "name_source")


_COLUMNS: dict[str, list[str]] = {}


def columns(conn: psycopg.Connection, table: str) -> list[str]:
    if table in _COLUMNS:
        return _COLUMNS[table]
    rows = conn.execute(
        "select column_name from information_schema.columns where table_schema = 'public' and table_name = %s "
        "and is_generated = 'NEVER' and (identity_generation is null) order by ordinal_position",
        (table,),
    ).fetchall()
    _COLUMNS[table] = [r["column_name"] for r in rows]
    return _COLUMNS[table]


def clone_thread(conn: psycopg.Connection, src_thread: str, user_id: str, session_id: str, thread_id: str,
                 business_id: str) -> None:
    """A copy of a session and every checkpoint row of its thread, owned by `user_id`."""
    with conn.transaction():
        conn.execute(
            f"""
            insert into chat_sessions (user_id, session_id, thread_id, {", ".join(SESSION_COPY_COLUMNS)})
            select %s, %s, %s, {", ".join(SESSION_COPY_COLUMNS)} from chat_sessions where thread_id = %s
            """,
            (user_id, session_id, thread_id, src_thread),
        )
        conn.execute("update chat_sessions set business_id = %s where thread_id = %s", (business_id, thread_id))
        for table in CHECKPOINT_TABLES:
            cols = columns(conn, table)
            select = ", ".join("%s" if c == "thread_id" else c for c in cols)
            conn.execute(
                f"insert into {table} ({', '.join(cols)}) select {select} from {table} where thread_id = %s",
                (thread_id, src_thread),
            )


def load_background_threads(conn: psycopg.Connection, template_thread: str, copies: int) -> dict[str, int]:
    """`copies` sessions of other users, each a copy of the template thread's rows."""
    tid = "'user_bguser' || (g %% 10000) || '_business_bg_session_bg' || g"
    with conn.transaction():
        conn.execute(
            f"""
            insert into chat_sessions (user_id, business_id, session_id, thread_id, session_name, name_source,
                                       message_count, created_at, last_message_at)
            select 'bguser' || (g %% 10000), 'bg', 'bg' || g, {tid}, 'Background session', 'user', s.message_count,
                   now() - make_interval(secs => g), now() - make_interval(secs => g)
              from chat_sessions s cross join generate_series(1, %s) g
             where s.thread_id = %s
            """,
            (copies, template_thread),
        )
        for table in CHECKPOINT_TABLES:
            cols = columns(conn, table)
            select = ", ".join(tid if c == "thread_id" else f"t.{c}" for c in cols)
            conn.execute(
                f"insert into {table} ({', '.join(cols)}) select {select} "
                f"from {table} t cross join generate_series(1, %s) g where t.thread_id = %s",
                (copies, template_thread),
            )
    return table_rows(conn)


def load_listing_sessions(conn: psycopg.Connection, list_user: str, business_id: str, per_user: int,
                          others: int) -> None:
    """One user with `per_user` sessions, and `others` sessions spread over other users (~10 each)."""
    with conn.transaction():
        conn.execute(
            """
            insert into chat_sessions (user_id, business_id, session_id, thread_id, session_name, name_source,
                                       message_count, created_at, last_message_at)
            select %(user)s, %(biz)s, 'list-' || g, 'user_' || %(user)s || '_business_' || %(biz)s || '_session_list-' || g,
                   'Session ' || g, 'user', 2 * (g %% 40),
                   timestamptz '2026-01-01' + make_interval(secs => g * 600 + (g * 7919) %% 600),
                   case when g %% 5 = 0 then null
                        else timestamptz '2026-01-01' + make_interval(secs => g * 600 + (g * 7919) %% 600 + 30)
                   end
              from generate_series(1, %(n)s) g
            """,
            {"user": list_user, "biz": business_id, "n": per_user},
        )
        conn.execute(
            """
            insert into chat_sessions (user_id, business_id, session_id, thread_id, session_name, name_source,
                                       message_count, is_archived, created_at, last_message_at)
            select 'lu' || (g %% %(users)s), 'lb', 'ls-' || g, 'user_lu' || (g %% %(users)s) || '_business_lb_session_ls-' || g,
                   'Other session ' || g, 'user', 2 * (g %% 30), g %% 10 = 0,
                   timestamptz '2025-06-01' + make_interval(secs => (g::bigint * 104729) %% 31000000),
                   case when g %% 4 = 0 then null
                        else timestamptz '2025-06-01' + make_interval(secs => (g::bigint * 104729) %% 31000000 + 60) end
              from generate_series(1, %(n)s) g
            """,
            {"users": max(1, others // 10), "n": others},
        )


def table_rows(conn: psycopg.Connection) -> dict[str, int]:
    return {t: conn.execute(f"select count(*) as n from {t}").fetchone()["n"]
            for t in (*CHECKPOINT_TABLES, "chat_sessions")}


def vacuum_analyze(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for table in (*CHECKPOINT_TABLES, "chat_sessions", "chat_threads", "session_deletions", "session_events"):
            conn.execute(f"vacuum (analyze) {table}")


def settle(url: str, *, quiet_cpu_seconds: float = 0.05, max_wait_seconds: float = 180.0) -> dict:
    """Let PostgreSQL finish what earlier scenarios left it before a timed one starts.

    Bulk deletes and restores leave dead rows that autovacuum cleans up later,
    for minutes, throttled: in a full run without this, long replies x200 saw
    25 ms of PostgreSQL CPU per turn; with it 3.6 (1 once the server's own
    upkeep no longer scanned every session, sql/020; 1 with the scenario alone).
    Vacuuming now does the same work unthrottled (a running autovacuum gives
    way to it), a checkpoint writes the dirty pages, then this waits for a
    second in which every PostgreSQL process together used under 5% of a core.
    """
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        autovacuums = [r[0] for r in conn.execute(
            "select query from pg_stat_activity where backend_type = 'autovacuum worker'").fetchall()]
        vacuum_analyze(url)
        try:
            conn.execute("checkpoint")
        except psycopg.Error:  # not a superuser (BENCH_DATABASE_URL): autovacuum's own pace then
            pass
    quiet_after = None
    while time.perf_counter() - started < max_wait_seconds:
        pids = postgres_pids()
        before = cpu_by_pid(pids)
        time.sleep(1.0)
        if cpu_delta(before, cpu_by_pid(pids)) < quiet_cpu_seconds:
            quiet_after = time.perf_counter() - started
            break
    return {"autovacuum_running": autovacuums, "quiet_after_s": None if quiet_after is None else round(quiet_after, 1)}


def thread_bytes(conn: psycopg.Connection, thread_id: str) -> dict[str, int]:
    """Bytes the thread's live rows take, per table (column sizes as stored: compressed, TOAST included)."""
    out = {}
    for table in (*CHECKPOINT_TABLES, "chat_sessions"):
        cols = columns(conn, table) + (["last_activity_at"] if table == "chat_sessions" else [])
        expr = " + ".join(f"coalesce(pg_column_size({c}), 0)" for c in cols)
        out[table] = int(conn.execute(f"select coalesce(sum({expr}), 0) as b from {table} where thread_id = %s",
                                      (thread_id,)).fetchone()["b"])
    return out


def thread_rows(conn: psycopg.Connection, thread_id: str) -> dict[str, int]:
    return {t: conn.execute(f"select count(*) as n from {t} where thread_id = %s", (thread_id,)).fetchone()["n"]
            for t in CHECKPOINT_TABLES}


def database_bytes(conn: psycopg.Connection) -> int:
    return int(conn.execute("select pg_database_size(current_database()) as b").fetchone()["b"])

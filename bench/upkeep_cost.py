"""What the periodic upkeep costs the database once it holds many sessions.

    python -m bench.upkeep_cost [--sessions 1000000] [--orphans 0]

Every process of every host runs upkeep (backend/chat/maintenance.py) each
MAINTENANCE_INTERVAL_SECONDS, and the first pass 1 s after it starts, so a step
that reads every session is paid many times over. On a scratch database with
`--sessions` sessions (made in SQL), `--orphans` of them then deleted by hand
(as in the dashboard), the app's own Maintenance (retention on, 30 days, no
session due) times each step, two passes: the second shows what upkeep pays
each MAINTENANCE_INTERVAL_SECONDS once its first pass is done (retention then
looks again only an hour later). The reference, in the same run: the
orphan search as it was before sql/020, comparing every registered thread with
every session.
"""

from __future__ import annotations

import argparse
import time
import warnings

from backend.sessions.thread_store import ORPHAN_THREADS_SQL
from bench import data
from bench.common import JWT_SECRET, SECRET_KEY, connect, scratch_database, server_url

# The orphan search before sql/020, every registered thread against every session:
# the app's own search without its filter on the orphan mark.
_MARK_FILTER = "t.orphaned_at is not null  -- marked when its session row went (sql/020)\n   and "
if _MARK_FILTER not in ORPHAN_THREADS_SQL:
    raise RuntimeError("the orphan search changed: update its reference here")
FULL_COMPARISON_SQL = ORPHAN_THREADS_SQL.replace(_MARK_FILTER, "")


def _ms(fn) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def main() -> None:
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--orphans", type=int, default=0, help="sessions then deleted by hand, leaving their threads")
    args = parser.parse_args()

    from backend import create_app
    from backend.chat.maintenance import ORPHAN_BATCH, RETENTION_BATCH
    from backend.config import Settings
    from backend.services import services_of
    from backend.sessions.thread_store import ThreadStore

    url, description = server_url()
    with scratch_database(url, "bench_upkeep") as db:
        settings = Settings(
            _env_file=None, app_env="test", database_url=db, secret_key=SECRET_KEY, supabase_jwt_secret=JWT_SECRET,
            maintenance_interval_seconds=0, log_level="WARNING", retention_inactive_days=30,
        )
        app = create_app(settings)
        state = services_of(app)
        try:
            started = time.perf_counter()
            with connect(db) as conn:
                # About ten sessions a user, all active within the retention window: nothing due.
                conn.execute(
                    "insert into chat_sessions (user_id, business_id, session_id, thread_id, session_name, name_source, "
                    "message_count, last_message_at) "
                    "select 'up' || (g %% %(users)s), 'upkeep-biz', 'us-' || g, "
                    "'user_up' || (g %% %(users)s) || '_business_upkeep-biz_session_us-' || g, 'Session ' || g, 'user', "
                    "2, now() from generate_series(1, %(n)s) g",
                    {"users": max(1, args.sessions // 10), "n": args.sessions},
                )
                if args.orphans:
                    conn.execute("delete from chat_sessions where id in (select id from chat_sessions order by id "
                                 "limit %s)", (args.orphans,))
            data.vacuum_analyze(db)
            print(f"{args.sessions:,} sessions, {args.orphans:,} orphaned, made in {time.perf_counter() - started:.0f} s "
                  f"({description})")

            maintenance = state.maintenance
            steps = {
                "reconcile_runs": maintenance.reconcile_runs,
                "name_unnamed": maintenance.name_unnamed,
                "purge_expired_recovery_points": state.sessions.purge_expired_recovery_points,
                "retention: one look for due": lambda: state.cleanup.purge_inactive(
                    inactive_days=30, max_sessions=RETENTION_BATCH),
                "apply_retention (upkeep's step)": maintenance.apply_retention,
                "orphan search": lambda: ThreadStore(state.db.pool).orphan_threads(0, ORPHAN_BATCH),
            }
            with connect(db) as conn:
                reference = lambda: conn.execute(FULL_COMPARISON_SQL, (0, ORPHAN_BATCH)).fetchall()  # noqa: E731
                for attempt in (1, 2):
                    for name, step in steps.items():
                        print(f"pass {attempt}: {name:<32} {_ms(step):9.1f} ms")
                    print(f"pass {attempt}: {'orphan search, full comparison':<32} {_ms(reference):9.1f} ms  "
                          "(the reference: before sql/020)")
        finally:
            state.close()


if __name__ == "__main__":
    main()

"""What usage costs (issue 30): a turn's server and PostgreSQL CPU with the ledger, side by side with
the code before it; the quota check; a heavy user's totals.

    python -m bench.usage_cost --before DIR [--turns 300] [--rounds 2] [--ledger 100000]
    python -m bench.usage_cost --quota-check [--turns 2000] [--rounds 5]

1. Turns one after another (40 tokens, each in a session of its own, named, so no naming
   call), as bench.turn_cost measures them, on the production command: the code in `--before`
   (`git worktree add /tmp/before-usage <commit>`), this checkout (every turn writes a ledger
   row, priced), and this checkout with a quota for every user (DEFAULT_USER_QUOTA_DAY_TOKENS:
   each turn's start checks it and reserves, its end releases). Each on a database of its own on
   the same server, the three in turn, `--rounds` times; the median of the rounds is reported,
   and the difference from the code before.
2. The quota check alone: `usage_quota_state` (what a turn's start reads when a quota applies)
   for a user with a year of usage, timed from a client over 1,000 calls.
3. `GET /api/llm/usage` for one heavy user with `--ledger` ledger rows spread over a year (the
   issue's 100,000 turns), grouped by day, model and session: p50 and p95 over 200 requests.

`--quota-check` measures only the database side of a turn's usage, statement by statement, and is
immune to other load on the machine: the CPU time of the one PostgreSQL backend that runs them
(/proc/<pid>/schedstat), per turn. A turn here is its start (`start_chat_turn`, as RunStore calls
it) and its usage end (the ledger row and the reservation's release, UsageStore.record_on) and the
end of its lease, each in a session of its own, for a user with a month of usage days. Configs, in
turn, `--rounds` times, each on a user of its own in one database: no quota; a user day and month
quota (the defaults, as the turn bench sets them) with sql/024's and sql/026's start_chat_turn
(installed beside the current one as bench_start_chat_turn_024 and _026, 024 with its own
usage_quota_state and usage_used, which sql/028 redefined) and with the current one
(sql/028); and the same plus a business month quota (its business with `--business-users` active
users, its days filled as UsageStore.set_quota fills them). Medians of the rounds, the start's share
apart. Every configuration's end runs the current ledger trigger (sql/028: for the business with a
quota, its day's row too), so the old functions' ends are not quite the old ends: for those, run the
old checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
import warnings
from datetime import date, timedelta
from pathlib import Path

from bench.aioclient import Connection
from bench.common import (
    BUSINESS,
    ROOT,
    AppServer,
    Upstream,
    checkout_of,
    connect,
    cpu_by_pid,
    cpu_delta,
    new_user,
    postgres_pids,
    scratch_database,
    server_url,
    stats,
)
from bench.scenarios import HOST, _stream_ours, auth, chat_query, precreate_sessions

WARM_UP = 20
TOKENS = 40


async def _turns(port: int, user: str, sids: list[str]) -> list[dict]:
    return [await _stream_ours(port, user, sid, chat_query(0, TOKENS, 0, f"t{i}"), 60) for i, sid in enumerate(sids)]


def turn_cost(server: AppServer, db: str, turns: int) -> tuple[float, float, int]:
    """(server CPU ms per turn, PostgreSQL CPU ms per turn, turns ok)."""
    user = new_user()
    sids = precreate_sessions(db, user, f"u{time.monotonic_ns()}", WARM_UP + turns)
    asyncio.run(_turns(server.port, user, sids[:WARM_UP]))
    server_cpu, db_cpu = cpu_by_pid(server.pids()), cpu_by_pid(postgres_pids())
    out = asyncio.run(_turns(server.port, user, sids[WARM_UP:]))
    server_ms = cpu_delta(server_cpu, cpu_by_pid(server.pids())) / len(out) * 1000
    db_ms = cpu_delta(db_cpu, cpu_by_pid(postgres_pids())) / len(out) * 1000
    return server_ms, db_ms, sum(1 for o in out if o["ok"])


SEED_LEDGER_SQL = """
insert into usage_ledger (created_at, user_id, business_id, session_id, session_row_id, run_id, kind, model,
                          input_tokens, cached_input_tokens, output_tokens, cost_micros, currency, price_input,
                          price_cached_input, price_output, price_version, source)
select now() - make_interval(secs => i * (365 * 86400.0 / %(n)s)), %(user)s, %(business)s, 's' || (i / 20), null,
       gen_random_uuid(), 'chat', case when i %% 3 = 0 then 'bench-small' else 'bench-model' end,
       800 + i %% 400, 0, 200 + i %% 50, 3000, 'USD', 2, 2, 8, 'bench', 'reported'
  from generate_series(1, %(n)s) as i
"""


async def _gets(port: int, user: str, path: str, n: int) -> list[float]:
    conn = Connection(HOST, port, auth(user))
    times = []
    try:
        for _ in range(n):
            started = time.perf_counter()
            response = await conn.request("GET", path)
            times.append((time.perf_counter() - started) * 1000)
            assert response.status == 200, response.body[:200]
    finally:
        await conn.close()
    return times


# --- the quota check alone, in the database --------------------------------------------------

BUSINESS_WITH_QUOTA = "bench-business-quota"
QUOTA_DEFAULTS = json.dumps({"day": {"tokens": 10**9}, "month": {"cost_micros": 10**12}})


def _backend_cpu_ns(pid: int) -> int:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def _sql_start_chat_turn(migration: str, suffix: str) -> str:
    """An earlier migration's start_chat_turn, renamed bench_start_chat_turn_<suffix>: the check before.
    With the functions it calls that were redefined since (sql/024's usage_quota_state and usage_used,
    which sql/028 made read usage_business_days), renamed alike."""
    text = (ROOT / "sql" / migration).read_text()
    names = ["start_chat_turn"] + (["usage_quota_state", "usage_used"] if migration.startswith("024") else [])
    parts = []
    for name in names:
        start = text.index(f"create or replace function public.{name}(")
        end = text.index("\n$$;", start) + len("\n$$;")
        parts.append(text[start:end])
    sql = "\n".join(reversed(parts))  # the callees first
    for name in names:
        sql = sql.replace(f"public.{name}(", f"public.bench_{name}_{suffix}(")
    return sql


def _quota_check_user(conn, prefix: str, name: str, function: str, defaults: str | None, business: bool, n: int):
    """A user of its own for a configuration: n sessions, `prefix`-i, and a month of usage so far."""
    from backend.chat.run_store import START_RUN_IN_SESSION_SQL
    from backend.usage.store import RECORD_SQL, ledger_json

    user = new_user()
    business_id = BUSINESS_WITH_QUOTA if business else BUSINESS
    with conn.cursor() as cur:
        cur.executemany(
            "insert into chat_sessions (user_id, business_id, session_id, thread_id, session_name, name_source) "
            "values (%s, %s, %s, %s, 'Quota bench', 'user')",
            [(user, business_id, f"{prefix}-{i}", f"user_{user}_business_{business_id}_session_{prefix}-{i}")
             for i in range(n)])
    template = {"created_at": None, "user_id": user, "business_id": business_id, "session_id": "earlier",
                "session_row_id": None, "run_id": None, "kind": "chat", "model": "bench-model", "input_tokens": 800,
                "cached_input_tokens": 0, "output_tokens": 200, "reasoning_tokens": None, "cost_micros": 3000,
                "currency": "USD", "price_input": 2, "price_cached_input": 2, "price_output": 8,
                "price_version": "bench", "source": "reported"}
    month = [{**template, "created_at": f"{date.today().replace(day=d)}T12:00:00+00:00"}
             for d in range(1, date.today().day + 1)]
    conn.execute(RECORD_SQL, {"usage": ledger_json(month), "run_id": None})
    sql = START_RUN_IN_SESSION_SQL.replace("public.start_chat_turn(", f"public.{function}(")
    return prefix, name, user, sql, defaults, template


def quota_check(rounds: int, turns: int, business_users: int) -> int:
    from psycopg_pool import ConnectionPool

    from backend.db import apply_migrations, setup_checkpointer
    from backend.usage.store import RECORD_SQL, SET_BUSINESS_DAYS_SQL, ledger_json

    url, where = server_url()
    print(f"database: {where}")
    configs = [  # (name, function, defaults, business quota)
        ("none", "start_chat_turn", None, False),
        ("quota 024", "bench_start_chat_turn_024", QUOTA_DEFAULTS, False),
        ("quota 026", "bench_start_chat_turn_026", QUOTA_DEFAULTS, False),
        ("quota 028", "start_chat_turn", QUOTA_DEFAULTS, False),
        ("quota+business 024", "bench_start_chat_turn_024", QUOTA_DEFAULTS, True),
        ("quota+business 026", "bench_start_chat_turn_026", QUOTA_DEFAULTS, True),
        ("quota+business 028", "start_chat_turn", QUOTA_DEFAULTS, True),
    ]
    results: dict[str, list[float]] = {name: [] for name, *_ in configs}
    starts: dict[str, list[float]] = {name: [] for name, *_ in configs}
    with scratch_database(url, f"bench_usage_quota_{os.getpid()}") as db:
        from psycopg.rows import dict_row

        with ConnectionPool(db, min_size=1, max_size=2, kwargs={"autocommit": True, "row_factory": dict_row}) as pool:
            setup_checkpointer(pool)
            apply_migrations(pool)
        with connect(db) as conn:
            conn.execute(_sql_start_chat_turn("024_usage.sql", "024"))
            conn.execute(_sql_start_chat_turn("026_usage_quota_check.sql", "026"))
            # The business's other active users this month: what its quota check reads.
            conn.execute(
                "insert into usage_user_days (user_id, day, business_id, calls, input_tokens, output_tokens, "
                "cost_micros) select 'other-' || u, current_date - d, %s, 5, 5000, 1000, 20000 "
                "from generate_series(1, %s) u, generate_series(0, extract(day from current_date)::int - 1) d",
                (BUSINESS_WITH_QUOTA, business_users))
            conn.execute("insert into usage_quotas (scope, scope_id, period, max_tokens) "
                         "values ('business', %s, 'month', 1000000000000)", (BUSINESS_WITH_QUOTA,))
            # Its days, as setting the quota fills them (sql/028: what the current check reads).
            conn.execute(SET_BUSINESS_DAYS_SQL, {"business_id": BUSINESS_WITH_QUOTA, "now": None})
            conn.execute("analyze")
            pid = conn.execute("select pg_backend_pid() as pid").fetchone()["pid"]
            for round_ in range(-1, rounds):  # round 0 warms caches and plans up, and is not counted
                n = turns if round_ >= 0 else 100
                setups = [_quota_check_user(conn, f"c{k}", name, function, defaults, business, n)
                          for k, (name, function, defaults, business) in enumerate(configs)]
                cpu = {name: 0 for name, *_ in configs}
                cpu_start = {name: 0 for name, *_ in configs}
                # The configurations take turns a turn at a time, so whatever else the machine does
                # falls on all of them alike.
                for i in range(n):
                    for prefix, name, user, sql, defaults, template in setups:
                        run_id = uuid.uuid4()
                        params = {"user_id": user, "session_id": f"{prefix}-{i}", "run_id": run_id,
                                  "owner": "bench:1", "lease_seconds": 60.0, "max_messages": 10**6,
                                  "max_bytes": 10**12, "max_runs": 100, "query": "how much", "now": None,
                                  "defaults": defaults, "want_tokens": 2048, "context_tokens": None,
                                  "price_input": 2.0, "price_output": 8.0, "reserve_seconds": 3600.0}
                        row = [{**template, "created_at": None, "session_id": f"{prefix}-{i}", "run_id": str(run_id)}]
                        before = _backend_cpu_ns(pid)
                        started = conn.execute(sql, params).fetchone()
                        cpu_start[name] += _backend_cpu_ns(pid) - before
                        conn.execute(RECORD_SQL, {"usage": ledger_json(row), "run_id": run_id})
                        conn.execute("delete from chat_session_runs where run_id = %s", (run_id,))
                        cpu[name] += _backend_cpu_ns(pid) - before
                        assert started["new_run_id"] is not None, started
                if round_ < 0:
                    continue
                for name, *_ in configs:
                    results[name].append(cpu[name] / n / 1e6)
                    starts[name].append(cpu_start[name] / n / 1e6)
                print(f"round {round_ + 1}: " + ", ".join(f"{name} {results[name][-1]:.4f}" for name, *_ in configs)
                      + " ms of backend CPU per turn", flush=True)
            trigger = _trigger_cost(conn, pid, rounds, turns)
    base = statistics.median(results["none"])
    print(f"\nPostgreSQL backend CPU per turn (start, usage end, lease end), median of {rounds} rounds of {turns}:")
    base_start = statistics.median(starts["none"])
    for name, *_ in configs:
        value = statistics.median(results[name])
        start = statistics.median(starts[name])
        print(f"  {name:>20}: {value:.4f} ms  (quota check over none: {value - base:+.4f} ms; the start alone "
              f"{start:.4f} ms, {start - base_start:+.4f} over none's)")
    print(f"\nThe ledger's trigger alone: a ledger row's insert (UsageStore.record_on), backend CPU, median of "
          f"{rounds} rounds of {turns}:")
    for (version, business), values in trigger.items():
        print(f"  sql/{version} trigger, {'a business with a quota' if business else 'no business quota':>24}: "
              f"{statistics.median(values):.4f} ms")
    return 0


def _trigger_cost(conn, pid: int, rounds: int, turns: int) -> dict[tuple[str, bool], list[float]]:
    """A ledger row's insert with sql/024's trigger function and with sql/028's (which takes a shared
    lock, asks whether the business has a quota and, if so, adds to its day), swapped in turn (the
    function replaced between blocks of `turns` rows; the scratch database is dropped after)."""
    from backend.usage.store import RECORD_SQL, ledger_json

    bodies = {}
    for version, migration in (("024", "024_usage.sql"), ("028", "028_usage_business_days.sql")):
        text = (ROOT / "sql" / migration).read_text()
        start = text.index("create or replace function public.usage_ledger_add_totals(")
        bodies[version] = text[start:text.index("\n$$;", start) + len("\n$$;")]
    out: dict[tuple[str, bool], list[float]] = {(v, b): [] for v in bodies for b in (False, True)}
    for round_ in range(-1, rounds):
        for version, body in bodies.items():
            conn.execute(body)
            for business in (False, True):
                user = new_user()
                rows = [{"created_at": None, "user_id": user, "business_id": BUSINESS_WITH_QUOTA if business
                         else BUSINESS, "session_id": f"trigger-{i}", "session_row_id": None, "run_id": None,
                         "kind": "chat", "model": "bench-model", "input_tokens": 800, "cached_input_tokens": 0,
                         "output_tokens": 200, "reasoning_tokens": None, "cost_micros": 3000, "currency": "USD",
                         "price_input": 2, "price_cached_input": 2, "price_output": 8, "price_version": "bench",
                         "source": "reported"} for i in range(turns)]
                cpu = 0
                for row in rows:
                    usage = ledger_json([row])
                    before = _backend_cpu_ns(pid)
                    conn.execute(RECORD_SQL, {"usage": usage, "run_id": None})
                    cpu += _backend_cpu_ns(pid) - before
                if round_ >= 0:
                    out[(version, business)].append(cpu / turns / 1e6)
    conn.execute(bodies["028"])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.usage_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="the checkout before usage (a git worktree)")
    parser.add_argument("--quota-check", action="store_true",
                        help="only the database side of a turn's usage, per backend (see above)")
    parser.add_argument("--business-users", type=int, default=200,
                        help="--quota-check: the business's other active users this month")
    parser.add_argument("--turns", type=int, default=300, help="measured turns per server and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ledger", type=int, default=100_000, help="ledger rows of the heavy user")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
    if args.quota_check:
        return quota_check(args.rounds, args.turns, args.business_users)
    if args.before is None:
        parser.error("--before is required (or --quota-check)")
    before = checkout_of(args.before)
    checkout_of(ROOT)
    workdir = Path(tempfile.mkdtemp(prefix="bench-usage-cost-"))
    prices = workdir / "prices.json"
    prices.write_text(json.dumps({"currency": "USD", "models": {"bench-model": {"input": 2, "output": 8}}}))
    url, _ = server_url()
    pid = os.getpid()
    configs = [
        ("before", before, {}),
        ("usage", ROOT, {"MODEL_PRICES_FILE": str(prices)}),
        ("usage+quota", ROOT, {"MODEL_PRICES_FILE": str(prices), "DEFAULT_USER_QUOTA_DAY_TOKENS": "1000000000",
                               "DEFAULT_USER_QUOTA_MONTH_COST": "1000000"}),
    ]
    upstream = Upstream(workdir).start()
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in configs}
    try:
        with scratch_database(url, f"bench_usage_before_{pid}") as db_before, \
                scratch_database(url, f"bench_usage_after_{pid}") as db_after:
            for round_ in range(args.rounds):
                for name, root, env in configs:
                    db = db_before if name == "before" else db_after
                    server = AppServer(f"{name}-{round_}", db, upstream.base_url, env, workdir, root=root).start()
                    try:
                        server_ms, db_ms, ok = turn_cost(server, db, args.turns)
                    finally:
                        server.stop()
                    results[name].append((server_ms, db_ms))
                    print(f"round {round_ + 1} {name:>12}: server {server_ms:.3f} ms/turn, PostgreSQL "
                          f"{db_ms:.3f} ms/turn ({ok} of {args.turns} ok)", flush=True)
            base = [statistics.median(v[i] for v in results["before"]) for i in (0, 1)]
            print(f"\n{TOKENS}-token turns, CPU per turn, median of {args.rounds} rounds of {args.turns}:")
            for name, _, _ in configs:
                server_ms, db_ms = (statistics.median(v[i] for v in results[name]) for i in (0, 1))
                print(f"  {name:>12}: server {server_ms:.3f} + PostgreSQL {db_ms:.3f} = {server_ms + db_ms:.3f} ms"
                      f"  (vs before: {server_ms + db_ms - sum(base):+.3f} ms)")

            # A heavy user: a year of usage.
            heavy = new_user()
            with connect(db_after) as conn:
                started = time.perf_counter()
                conn.execute(SEED_LEDGER_SQL, {"n": args.ledger, "user": heavy, "business": BUSINESS})
                conn.execute("analyze usage_ledger")
                conn.execute("analyze usage_daily_totals")
                print(f"\nseeded {args.ledger} ledger rows over a year in {time.perf_counter() - started:.1f} s")
                defaults = json.dumps({"day": {"tokens": 10**9}, "month": {"cost_micros": 10**12}})
                conn.execute("insert into usage_quotas (scope, scope_id, period, max_tokens) "
                             "values ('business', %s, 'month', 1000000000000)", (BUSINESS,))
                timings = []
                for _ in range(1000):
                    t0 = time.perf_counter()
                    conn.execute("select * from usage_quota_state(%s, %s, now(), %s::jsonb)",
                                 (heavy, BUSINESS, defaults)).fetchall()
                    timings.append((time.perf_counter() - t0) * 1000)
                q = stats(timings)
                print(f"quota check (user day + month, business month): p50 {q['p50']:.3f} ms, "
                      f"p95 {q['p95']:.3f} ms (client round trip included)")
                conn.execute("delete from usage_quotas where scope_id = %s", (BUSINESS,))
            server = AppServer("usage-reads", db_after, upstream.base_url, configs[1][2], workdir).start()
            try:
                until = date.today()
                since = until - timedelta(days=365)
                for group_by in ("day", "model", "session"):
                    path = f"/api/llm/usage?group_by={group_by}&since={since}&until={until}"
                    asyncio.run(_gets(server.port, heavy, path, 20))
                    s = stats(asyncio.run(_gets(server.port, heavy, path, 200)))
                    print(f"GET /api/llm/usage?group_by={group_by} over a year ({args.ledger} turns): "
                          f"p50 {s['p50']:.2f} ms, p95 {s['p95']:.2f} ms")
            finally:
                server.stop()
    finally:
        upstream.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

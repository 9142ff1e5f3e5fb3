"""What usage costs (issue 30): a turn's server and PostgreSQL CPU with the ledger, side by side with
the code before it; the quota check; a heavy user's totals.

    python -m bench.usage_cost --before DIR [--turns 300] [--rounds 2] [--ledger 100000]

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
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
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


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.usage_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="the checkout before usage (a git worktree)")
    parser.add_argument("--turns", type=int, default=300, help="measured turns per server and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ledger", type=int, default=100_000, help="ledger rows of the heavy user")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
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

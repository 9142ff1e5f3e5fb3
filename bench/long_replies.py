"""Long replies: N users start a turn at once, each reply paced like a real model (40 tokens over 5 s).

Run against the production server command with its shipped defaults (gevent
workers, the default pool, rate limits on: every stream is its own user), next
to the upstream alone driven by the same client in the same run, so the added
time is the backend's and the client is shown not to be the bottleneck.
"""

from __future__ import annotations

import asyncio
import time

from bench.common import (
    AppServer,
    Results,
    connect,
    cpu_by_pid,
    cpu_delta,
    own_cpu_seconds,
    postgres_pids,
    say,
    stats,
)
from bench.scenarios import RssSampler, _burst, _stream_direct, _stream_ours, chat_query, sessions_for_users

TOKENS, INTERVAL_MS, FIRST_MS = 40, 125, 200  # ~5.1 s a reply


def _summary(out: list[dict], wall: float) -> dict:
    ok = [o for o in out if o["ok"]]
    return {
        "completed": len(ok), "errors": len(out) - len(ok),
        "error_samples": [o["error"] for o in out if not o["ok"]][:5],
        "wall_s": round(wall, 2),
        "ttft_ms": stats([o["ttft_ms"] for o in ok]), "total_ms": stats([o["total_ms"] for o in ok]),
        "tokens_received": sum(o["tokens"] for o in ok),
    }


def long_replies(server: AppServer, upstream, db_url: str, sizes, results: Results) -> None:
    def query(tag: str = "") -> str:
        q = chat_query(0, TOKENS, INTERVAL_MS, tag or None)
        return q.replace(f"interval_ms={INTERVAL_MS}", f"interval_ms={INTERVAL_MS} first_ms={FIRST_MS}")
    rest = server.rss()
    for n in sizes.long_reply_concurrency:
        pairs = sessions_for_users(db_url, n, f"long{n}-{time.monotonic_ns()}")
        timeout = 120
        cpu = own_cpu_seconds()
        direct_out, direct_wall = asyncio.run(_burst([_stream_direct(upstream.port, query(), timeout) for _ in range(n)]))
        direct_cpu = own_cpu_seconds() - cpu
        before = server.rss()
        cpu, server_cpu, db_cpu = own_cpu_seconds(), cpu_by_pid(server.pids()), cpu_by_pid(postgres_pids())
        with RssSampler(server) as rss:
            ours_out, wall = asyncio.run(_burst([_stream_ours(server.port, user, sid, query(f"L{n}x{i}"), timeout)
                                                 for i, (user, sid) in enumerate(pairs)]))
        ours_cpu = own_cpu_seconds() - cpu
        server_cpu = cpu_delta(server_cpu, cpu_by_pid(server.pids()))
        db_cpu = cpu_delta(db_cpu, cpu_by_pid(postgres_pids()))
        ours, direct = _summary(ours_out, wall), _summary(direct_out, direct_wall)
        # The backend's share of the first token: its work before the model is called
        # (request sent -> the upstream receives the chat request), per stream.
        arrived = upstream.arrivals()
        before_model = [(arrived[f"L{n}x{i}"] - o["started_wall"]) * 1000
                        for i, o in enumerate(ours_out) if o["ok"] and f"L{n}x{i}" in arrived]
        res = {
            "streams": n, "tokens": TOKENS, "interval_ms": INTERVAL_MS, "first_ms": FIRST_MS,
            "ours": ours, "upstream_alone": direct,
            "added_ttft_p50_ms": ours["ttft_ms"]["p50"] - direct["ttft_ms"]["p50"],
            "added_ttft_p99_ms": ours["ttft_ms"]["p99"] - direct["ttft_ms"]["p99"],
            "wall_ratio": wall / direct_wall,
            "backend_before_model_ms": stats(before_model),
            "rss_rest_mb": round(rest / 2**20, 1), "rss_before_mb": round(before / 2**20, 1),
            "rss_peak_mb": round(rss.peak / 2**20, 1),
            "rss_per_stream_kb": round((rss.peak - before) / n / 1024, 1),
            "client_cpu_s": {"ours": round(ours_cpu, 2), "upstream_alone": round(direct_cpu, 2)},
            "server_cpu_ms_per_turn": round(server_cpu / n * 1000, 2),
            "postgres_cpu_ms_per_turn": round(db_cpu / n * 1000, 2),
        }
        say(f"long replies x{n}: ours {ours['completed']} ok, {ours['errors']} errors, wall {wall:.1f}s, TTFT p50 "
            f"{ours['ttft_ms']['p50']:.0f} p99 {ours['ttft_ms']['p99']:.0f} ms, total p99 {ours['total_ms']['p99']:.0f} ms; "
            f"before the model p50 {res['backend_before_model_ms']['p50']:.0f} p99 "
            f"{res['backend_before_model_ms']['p99']:.0f} ms; upstream alone wall {direct_wall:.1f}s, TTFT p50 {direct['ttft_ms']['p50']:.0f} p99 "
            f"{direct['ttft_ms']['p99']:.0f} ms; RSS +{res['rss_per_stream_kb']} KB/stream; server CPU "
            f"{res['server_cpu_ms_per_turn']} ms/turn (PostgreSQL {res['postgres_cpu_ms_per_turn']}); client CPU "
            f"{ours_cpu:.1f}s (alone {direct_cpu:.1f}s) of {wall:.1f}s")
        results.detail("long_replies", f"concurrent_{n}", res)
        clean = ours["errors"] == 0 and ours["completed"] == n
        if n <= 200:
            results.target(f"long replies x{n}: added TTFT p50", res["added_ttft_p50_ms"], "ms", "<= 500",
                           clean and res["added_ttft_p50_ms"] <= 500)
            results.target(f"long replies x{n}: added TTFT p99", res["added_ttft_p99_ms"], "ms", "<= 1000",
                           clean and res["added_ttft_p99_ms"] <= 1000)
            results.target(f"long replies x{n}: wall / upstream alone", res["wall_ratio"], "x", "<= 1.15",
                           clean and res["wall_ratio"] <= 1.15)
        else:
            results.target(f"long replies x{n}: errors", ours["errors"], "count", "0", clean)
            results.target(f"long replies x{n}: TTFT p99", ours["ttft_ms"]["p99"], "ms", "<= 3000",
                           clean and ours["ttft_ms"]["p99"] <= 3000)
        results.target(f"long replies x{n}: RSS per streaming reply", res["rss_per_stream_kb"], "KB", "<= 200",
                       res["rss_per_stream_kb"] <= 200)
        _wait_for_runs_to_end(db_url)


def _wait_for_runs_to_end(db_url: str, timeout: float = 30) -> None:
    """Every run of this size has freed its session before the next size starts."""
    deadline = time.monotonic() + timeout
    with connect(db_url) as conn:
        while conn.execute("select count(*) as n from chat_session_runs").fetchone()["n"] and time.monotonic() < deadline:
            time.sleep(0.1)

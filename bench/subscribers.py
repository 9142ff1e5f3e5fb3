"""Idle subscribers: thousands of open event streams on the production server, and what they cost.

N clients hold GET /api/llm/events open (each its own user), as browser tabs do.
Measured in one run: the CRUD mix with no streams open and then with all N open
(same client, same server), the server's RSS per open stream, and the delay
from a change's commit to its event reaching a subscriber, at a steady rate of
changes (committed straight in SQL, any writer would do; the timestamp rides in
the session name).
"""

from __future__ import annotations

import asyncio
import threading
import time

from bench.aioclient import Connection
from bench.common import BUSINESS, AppServer, Results, connect, make_token, new_user, say, stats, thread_id
from bench.scenarios import HOST, OursCrud, _crud_run


def _users_with_sessions(db_url: str, n: int, prefix: str) -> list[tuple[str, int]]:
    """n users, each with one session; returns (user, session row id)."""
    users = [new_user() for _ in range(n)]
    with connect(db_url) as conn:
        rows = []
        for i, user in enumerate(users):
            sid = f"{prefix}-{i}"
            rows.append(conn.execute(
                "insert into chat_sessions (user_id, business_id, session_id, thread_id, session_name, name_source) "
                "values (%s, %s, %s, %s, 'sub', 'user') returning id",
                (user, BUSINESS, sid, thread_id(user, sid)),
            ).fetchone()["id"])
    return list(zip(users, rows))


# Idle streams are held for hours: their RSS is read once it has settled, after the
# workers' periodic return of freed memory (gunicorn.conf.py, MALLOC_TRIM_SECONDS,
# 10 s by default) has run since they opened, as it keeps running all their lives.
SETTLE_SECONDS = 12.0

# One gevent worker holds at most MAX_CONNECTIONS_PER_WORKER (+ a margin) connections.
FLOOR_STREAMS = 1400


def floor_per_stream_kb(logdir, n: int) -> tuple[float, int]:
    """RSS per open stream of a WSGI app that only holds an event stream open (bench/floor_stream.py),
    under the same production command and config, one worker: what any stream costs on this server model."""
    floor = AppServer("floor", "", "", {"WEB_CONCURRENCY": "1"}, logdir, app="bench.floor_stream:app").start()
    opened = [0]

    def on_chunk(chunk: bytes) -> None:
        if b": stream open" in chunk:
            opened[0] += 1

    async def run() -> tuple[int, int]:
        rest = floor.rss()
        conns = [Connection(HOST, floor.port, {}) for _ in range(n)]
        tasks = [asyncio.ensure_future(c.request("GET", "/stream", on_chunk=on_chunk)) for c in conns]
        deadline = time.monotonic() + 60
        while opened[0] < n and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(SETTLE_SECONDS)  # as for ours
        held = floor.rss()
        for task in tasks:
            task.cancel()
        for conn in conns:
            await conn.close()
        return rest, held

    try:
        rest, held = asyncio.run(run())
    finally:
        floor.stop(timeout=5)
    return (held - rest) / max(1, opened[0]) / 1024, opened[0]


def subscribers(server: AppServer, db_url: str, sizes, results: Results) -> None:
    n = 500 if sizes.quick else 2000
    rate, seconds = 100, (3.0 if sizes.quick else 10.0)
    crud_seconds = sizes.crud_seconds
    users = _users_with_sessions(db_url, n, f"sub{time.monotonic_ns()}")
    latencies: list[float] = []
    opened = [0]
    errors: list[str] = []

    def on_chunk_for() -> callable:
        def on_chunk(chunk: bytes) -> None:
            now = time.time()
            if b": stream open" in chunk:
                opened[0] += 1
            at = chunk.find(b'"session_name": "t')
            while at >= 0:
                start = at + len(b'"session_name": "t')
                end = chunk.find(b'"', start)
                latencies.append((now - int(chunk[start:end]) / 1e9) * 1000)
                at = chunk.find(b'"session_name": "t', end)
        return on_chunk

    async def hold(user: str, stop: asyncio.Event) -> None:
        conn = Connection(HOST, server.port, {"Authorization": f"Bearer {make_token(user)}"})
        task = asyncio.ensure_future(conn.request("GET", "/api/llm/events", on_chunk=on_chunk_for()))
        stop_task = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if task in done and task.exception():
            errors.append(repr(task.exception())[:200])
        task.cancel()
        stop_task.cancel()
        await conn.close()

    def writer(stop_at: float) -> None:
        """`rate` changes per second, round robin over the subscribers' sessions, each committed alone."""
        with connect(db_url) as conn:
            k, started = 0, time.monotonic()
            while time.monotonic() < stop_at:
                _, row_id = users[k % len(users)]
                conn.execute("update chat_sessions set session_name = %s where id = %s", (f"t{time.time_ns()}", row_id))
                k += 1
                delay = started + k / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)

    async def run() -> dict:
        baseline = await _crud_run(OursCrud(server.port, server.pids), 32, crud_seconds)
        rest = server.rss()
        stop = asyncio.Event()
        holders = [asyncio.ensure_future(hold(user, stop)) for user, _ in users]
        deadline = time.monotonic() + 60
        while opened[0] < n and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(SETTLE_SECONDS)
        held_rss = server.rss()
        with_streams = await _crud_run(OursCrud(server.port, server.pids), 32, crud_seconds)
        thread = threading.Thread(target=writer, args=(time.monotonic() + seconds,), daemon=True)
        thread.start()
        while thread.is_alive():
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # the last events arrive
        stop.set()
        await asyncio.gather(*holders, return_exceptions=True)
        return {"baseline": baseline, "with_streams": with_streams, "rss_rest": rest, "rss_held": held_rss}

    out = asyncio.run(run())
    per_stream_kb = (out["rss_held"] - out["rss_rest"]) / max(1, opened[0]) / 1024
    ratio = out["with_streams"]["rps"] / out["baseline"]["rps"] if out["baseline"]["rps"] else 0.0
    expected = int(rate * seconds)
    res = {
        "streams": n, "opened": opened[0], "errors": len(errors), "error_samples": errors[:3],
        "rss_per_stream_kb": round(per_stream_kb, 1),
        "rss_rest_mb": round(out["rss_rest"] / 2**20, 1), "rss_held_mb": round(out["rss_held"] / 2**20, 1),
        "crud_without_streams": out["baseline"], "crud_with_streams": out["with_streams"], "crud_ratio": ratio,
        "changes": expected, "events_received": len(latencies), "latency_ms": stats(latencies),
    }
    floor_kb, floor_opened = floor_per_stream_kb(server.log_path.parent, min(n, FLOOR_STREAMS))
    res["floor_rss_per_stream_kb"], res["floor_streams"] = round(floor_kb, 1), floor_opened
    results.detail("subscribers", f"idle_{n}", res)
    say(f"subscribers x{n}: {opened[0]} open, {len(errors)} errors; RSS +{per_stream_kb:.1f} KB/stream; CRUD c=32 "
        f"{out['with_streams']['rps']:.0f} req/s with them vs {out['baseline']['rps']:.0f} without (x{ratio:.2f}); "
        f"events {len(latencies)}/{expected}, commit->delivery p50 {res['latency_ms']['p50']:.1f} "
        f"p99 {res['latency_ms']['p99']:.1f} ms at {rate}/s; the floor (a bare gevent stream): "
        f"+{floor_kb:.1f} KB/stream over {floor_opened}")
    results.target(f"idle subscribers x{n}: all open, none failed", n - opened[0] + len(errors), "count", "0",
                   opened[0] == n and not errors)
    results.target(f"idle subscribers x{n}: RSS per open stream", per_stream_kb, "KB", "<= 20", per_stream_kb <= 20)
    results.target(f"idle subscribers x{n}: CRUD c=32 with them / without", ratio, "x", ">= 0.8 (still served)",
                   ratio >= 0.8)
    results.target(f"events at {rate} changes/s: delivered", len(latencies), "count", f"{expected}",
                   len(latencies) >= expected)

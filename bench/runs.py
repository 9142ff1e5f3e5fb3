"""Runs that outlive their connection: long replies side by side, rejoins, and many readers.

    python -m bench.runs [--only long_replies,rejoin,readers] [--quick] [--root DIR]

Each on the production command (`make serve`'s, shipped defaults, rate limits on,
every stream its own user), with the fake upstream pacing replies like a model
(40 tokens over 5 s):

- long_replies: the `long_replies` scenario of `python -m bench` (x200, x1000),
  plus PostgreSQL's work per relayed token: transactions and rows written per
  turn (pg_stat_database) and its CPU. With `--root` another checkout's code runs
  under the same client, upstream and database server: alternate the two to
  compare a change with the code before it.
- rejoin: 200 replies at once; every client drops at a random point, waits 1 s
  and rejoins from the last event id it saw, half of them on a second server
  (another host on the same database). Characters lost or doubled against the
  saved reply; first byte and first token after the rejoin.
- readers: one reply followed by 50 readers at once (half on the second server);
  every reader complete; server CPU per reader.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path

from bench.aioclient import Connection
from bench.common import (
    AppServer,
    Results,
    Upstream,
    add_root_argument,
    checkout_of,
    connect,
    cpu_by_pid,
    cpu_delta,
    postgres_pids,
    say,
    scratch_database,
    server_url,
    stats,
)
from bench.long_replies import FIRST_MS, INTERVAL_MS, TOKENS, long_replies
from bench.scenarios import HOST, STREAM_PATH, Sizes, auth, chat_query, sessions_for_users

PRODUCTION = {"RATE_LIMITS_ENABLED": "true", "MAINTENANCE_INTERVAL_SECONDS": "60"}
DB_COUNTERS = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted")


def paced_query(tag: str) -> str:
    q = chat_query(0, TOKENS, INTERVAL_MS, tag)
    return q.replace(f"interval_ms={INTERVAL_MS}", f"interval_ms={INTERVAL_MS} first_ms={FIRST_MS}")


def db_counters(db_url: str) -> dict[str, int]:
    with connect(db_url) as conn:
        row = conn.execute("select " + ", ".join(DB_COUNTERS) + " from pg_stat_database"
                           " where datname = current_database()").fetchone()
    return dict(row)


def parse_events(body: str) -> list[tuple[str | None, str, dict]]:
    """(id, event, data) of each event in an SSE body."""
    out = []
    for block in body.split("\n\n"):
        event_id, name, data = None, None, None
        for line in block.split("\n"):
            if line.startswith("id:"):
                event_id = line[3:].strip()
            elif line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data = json.loads(line[5:].strip())
        if name is not None and data is not None:
            out.append((event_id, name, data))
    return out


def text_of(events) -> str:
    return "".join(d["content"] for _, name, d in events if name == "token")


def saved_reply(user_id: str, session_id: str, port: int) -> str | None:
    """The session's last assistant message, as the API returns it."""
    request = urllib.request.Request(f"http://{HOST}:{port}/api/llm/sessions/{session_id}?include_messages=true",
                                     headers=auth(user_id))
    with urllib.request.urlopen(request, timeout=30) as response:
        messages = json.loads(response.read())["messages"]
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    return replies[-1] if replies else None


# --- rejoin ---------------------------------------------------------------------------------------


class _Drop(Exception):
    """Raised from the body callback: the client goes away mid-reply."""


async def _drop_and_rejoin(first: AppServer, second: AppServer, user_id: str, session_id: str, tag: str,
                           drop_after: int, other_host: bool) -> dict:
    """Send a message, read `drop_after` token events, drop; 1 s later rejoin from the last id seen."""
    conn = Connection(HOST, first.port, auth(user_id))
    buffer, seen = "", []

    def on_event_chunk(c: bytes) -> None:
        nonlocal buffer
        buffer += c.decode()
        head, sep, buffer = buffer.rpartition("\n\n")
        if sep:
            seen.extend(parse_events(head + sep))
        if sum(name == "token" for _, name, _ in seen) >= drop_after:
            raise _Drop()

    try:
        await conn.request("POST", STREAM_PATH, body={"session_id": session_id, "query": paced_query(tag)},
                           on_chunk=on_event_chunk)
    except _Drop:
        pass  # the connection is closed by the client
    finally:
        await conn.close()
    run_id = next(d["run_id"] for _, name, d in seen if name == "run")
    last_id = next((i for i, _, _ in reversed(seen) if i is not None), "0")
    finished_early = any(name in ("done", "error") for _, name, _ in seen)
    await asyncio.sleep(1.0)
    target = second if other_host else first
    conn = Connection(HOST, target.port, auth(user_id))
    first_byte = first_token = None
    started = time.perf_counter()

    def on_chunk(c: bytes) -> None:
        nonlocal first_byte, first_token
        now = time.perf_counter()
        if first_byte is None:
            first_byte = now
        if first_token is None and (b"event: token" in c or b"event: done" in c):
            first_token = now

    try:
        r = await conn.request("GET", f"/api/llm/sessions/{session_id}/runs/{run_id}/stream",
                               headers={"Last-Event-ID": last_id}, on_chunk=on_chunk)
    finally:
        await conn.close()
    rest = parse_events(r.body.decode())
    return {"status": r.status, "before": text_of(seen), "after": text_of(rest), "finished_early": finished_early,
            "end": rest[-1][1] if rest else None, "first_byte_ms": ((first_byte or started) - started) * 1000,
            "first_token_ms": ((first_token or time.perf_counter()) - started) * 1000, "other_host": other_host,
            "user_id": user_id, "session_id": session_id}


def rejoin(first: AppServer, second: AppServer, db_url: str, n: int, results: Results) -> dict:
    pairs = sessions_for_users(db_url, n, f"rejoin-{time.monotonic_ns()}")
    rng = random.Random(20261207)
    jobs = [_drop_and_rejoin(first, second, user, sid, f"R{i}", rng.randint(1, TOKENS - 5), i % 2 == 1)
            for i, (user, sid) in enumerate(pairs)]

    async def all_jobs():
        return await asyncio.gather(*jobs, return_exceptions=True)

    started = time.perf_counter()
    out = asyncio.run(all_jobs())
    wall = time.perf_counter() - started
    failures = [repr(o) for o in out if isinstance(o, BaseException)]
    done = [o for o in out if not isinstance(o, BaseException)]
    lost = doubled = mismatched = 0
    for o in done:
        saved = saved_reply(o["user_id"], o["session_id"], first.port)
        got = o["before"] + o["after"]
        if got != saved:
            mismatched += 1
            if saved is not None and len(got) < len(saved):
                lost += len(saved) - len(got)
            elif saved is not None:
                doubled += len(got) - len(saved)
    other = [o for o in done if o["other_host"]]
    same = [o for o in done if not o["other_host"]]
    res = {
        "replies": n, "wall_s": round(wall, 2), "failures": failures[:5], "failed": len(failures),
        "not_done": sum(o["end"] != "done" for o in done), "mismatched": mismatched,
        "characters_lost": lost, "characters_doubled": doubled,
        "first_byte_ms": stats([o["first_byte_ms"] for o in done]),
        "first_token_ms": {"same_host": stats([o["first_token_ms"] for o in same]),
                           "other_host": stats([o["first_token_ms"] for o in other])},
    }
    say(f"rejoin x{n}: {len(done)} rejoined, {len(failures)} failed, {res['not_done']} not done, "
        f"{mismatched} mismatched ({lost} characters lost, {doubled} doubled); first byte after rejoin p50 "
        f"{res['first_byte_ms']['p50']:.1f} p99 {res['first_byte_ms']['p99']:.1f} ms; first token p50 same host "
        f"{res['first_token_ms']['same_host']['p50']:.0f}, other host {res['first_token_ms']['other_host']['p50']:.0f} ms")
    clean = not failures and res["not_done"] == 0
    results.target(f"rejoin x{n}: characters lost or doubled", lost + doubled + mismatched, "count", "0",
                   clean and lost + doubled + mismatched == 0)
    results.target(f"rejoin x{n}: first byte after rejoin p50", res["first_byte_ms"]["p50"], "ms", "<= 20",
                   clean and res["first_byte_ms"]["p50"] <= 20)
    results.target(f"rejoin x{n}: first byte after rejoin p99", res["first_byte_ms"]["p99"], "ms", "<= 200",
                   clean and res["first_byte_ms"]["p99"] <= 200)
    results.detail("rejoin", f"concurrent_{n}", res)
    return res


# --- readers --------------------------------------------------------------------------------------


async def _read_run(server: AppServer, user_id: str, session_id: str, run_id: str) -> str:
    conn = Connection(HOST, server.port, auth(user_id))
    try:
        r = await conn.request("GET", f"/api/llm/sessions/{session_id}/runs/{run_id}/stream")
        events = parse_events(r.body.decode())
        return text_of(events) if events and events[-1][1] == "done" else f"! {r.status} {r.body[-200:]!r}"
    finally:
        await conn.close()


def readers(first: AppServer, second: AppServer, db_url: str, n: int, results: Results) -> dict:
    async def one_run(with_readers: int) -> tuple[str, list[str]]:
        [(user, sid)] = sessions_for_users(db_url, 1, f"readers-{time.monotonic_ns()}")
        conn = Connection(HOST, first.port, auth(user))
        run_id = None
        got_run = asyncio.Event()

        def on_chunk(c: bytes) -> None:
            nonlocal run_id
            if run_id is None and b"event: run" in c:
                run_id = next(d["run_id"] for _, name, d in parse_events(c.decode()) if name == "run")
                got_run.set()

        sender = asyncio.create_task(conn.request("POST", STREAM_PATH, body={"session_id": sid,
                                                                             "query": paced_query("readers")},
                                                  on_chunk=on_chunk))
        await got_run.wait()
        texts = await asyncio.gather(*[_read_run(first if i % 2 == 0 else second, user, sid, run_id)
                                       for i in range(with_readers)])
        own = text_of(parse_events((await sender).body.decode()))
        await conn.close()
        return own, list(texts)

    pids = first.pids() + second.pids()
    before = cpu_by_pid(pids)
    asyncio.run(one_run(0))
    alone = cpu_delta(before, cpu_by_pid(pids))
    before = cpu_by_pid(pids)
    own, texts = asyncio.run(one_run(n))
    with_readers = cpu_delta(before, cpu_by_pid(pids))
    complete = sum(t == own for t in texts)
    res = {"readers": n, "complete": complete, "server_cpu_ms_alone": round(alone * 1000, 1),
           "server_cpu_ms_with_readers": round(with_readers * 1000, 1),
           "server_cpu_ms_per_reader": round((with_readers - alone) / n * 1000, 2)}
    say(f"one run, {n} readers: {complete} complete; server CPU {res['server_cpu_ms_per_reader']} ms per reader "
        f"(the run alone {res['server_cpu_ms_alone']} ms)")
    results.target(f"one run, {n} readers: complete", complete, "readers", f"{n}", complete == n)
    results.detail("readers", f"readers_{n}", res)
    return res


# --- long replies with PostgreSQL's work ----------------------------------------------------------


def long_replies_with_db(server: AppServer, upstream: Upstream, db_url: str, sizes: Sizes, results: Results) -> None:
    for n in sizes.long_reply_concurrency:
        one = Sizes(sizes.quick)
        one.long_reply_concurrency = (n,)
        counters, db_cpu = db_counters(db_url), cpu_by_pid(postgres_pids())
        long_replies(server, upstream, db_url, one, results)
        after = db_counters(db_url)
        db_ms = cpu_delta(db_cpu, cpu_by_pid(postgres_pids())) * 1000
        per_turn = {k: round((after[k] - counters[k]) / n, 2) for k in DB_COUNTERS}
        per_token = {k: round(v / TOKENS, 3) for k, v in per_turn.items()}
        res = results.details["long_replies"][f"concurrent_{n}"]
        res["db_per_turn"], res["db_per_token"] = per_turn, per_token
        res["postgres_cpu_ms_per_token"] = round(db_ms / n / TOKENS, 3)
        say(f"long replies x{n}, PostgreSQL per turn: {per_turn}; per token {per_token}, "
            f"CPU {res['postgres_cpu_ms_per_token']} ms/token")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.runs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="long_replies,rejoin,readers")
    parser.add_argument("--quick", action="store_true", help="x100 long replies, 50 rejoins")
    parser.add_argument("--rejoins", type=int, default=None, help="replies that drop and rejoin (200; quick 50)")
    parser.add_argument("--readers", type=int, default=50, help="readers of the one run")
    parser.add_argument("--concurrency", default="", help="long replies at these sizes only (e.g. 200,1000)")
    add_root_argument(parser)
    args = parser.parse_args()
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
    root = checkout_of(args.root)
    workdir = Path(tempfile.mkdtemp(prefix="bench-runs-"))
    url, _ = server_url()
    results = Results(args.quick)
    sizes = Sizes(args.quick)
    if args.concurrency:
        sizes.long_reply_concurrency = tuple(int(n) for n in args.concurrency.split(","))
    with scratch_database(url, f"bench_runs_{os.getpid()}") as db:
        upstream = Upstream(workdir).start()
        servers = []
        try:
            first = AppServer("runs", db, upstream.base_url, PRODUCTION, workdir, root=root).start()
            servers.append(first)
            if "long_replies" in only:
                long_replies_with_db(first, upstream, db, sizes, results)
            if only & {"rejoin", "readers"}:
                second = AppServer("runs-second", db, upstream.base_url, PRODUCTION, workdir, root=root).start()
                servers.append(second)
                if "rejoin" in only:
                    rejoin(first, second, db, args.rejoins or (50 if args.quick else 200), results)
                if "readers" in only:
                    readers(first, second, db, args.readers, results)
            for server in servers:
                errors = server.errors_logged()
                if errors:
                    say(f"server {server.name} logged {len(errors)} errors, e.g. {errors[0][:300]}")
        finally:
            for server in servers:
                server.stop()
            upstream.stop()
    print(json.dumps({"rows": results.rows, "details": results.details}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

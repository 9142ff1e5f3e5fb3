"""The six scenarios. Each measures ours and its reference (floor, upstream or peer) in the same run, interleaved."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Self

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from backend.sessions.service import encode_cursor
from backend.chat.run_store import RunStore
from backend.sessions.deletion_store import DeletionStore
from backend.sessions.store import SessionStore
from backend.sessions.thread_store import CHECKPOINT_TABLES
from bench import data
from bench.aioclient import Connection
from bench.common import (
    BUSINESS,
    AppServer,
    Results,
    connect,
    cpu_by_pid,
    cpu_delta,
    make_token,
    new_user,
    own_cpu_seconds,
    postgres_pids,
    say,
    stats,
    thread_id,
)

HOST = "127.0.0.1"
STREAM_PATH = "/api/llm/query/stream"


@dataclass
class Sizes:
    quick: bool

    def __post_init__(self) -> None:
        q = self.quick
        self.turns = (5, 15, 30) if q else (10, 100, 1000)  # session sizes for deletes and growth
        self.delete_samples = 8 if q else 20
        self.delete_samples_big_full = 8 if q else 6  # the largest session with full history: ~110 MB a copy
        self.background_checkpoints = 20_000 if q else 1_000_000
        self.list_per_user = 2_000 if q else 10_000
        self.list_others = 48_000 if q else 990_000
        self.list_depth = 1_800 if q else 9_000
        self.list_samples = 20 if q else 60
        self.crud_seconds = 2.0 if q else 8.0
        self.stream_samples = 15 if q else 60
        self.stream_concurrency = (50, 100) if q else (100, 500)
        self.long_reply_concurrency = (100,) if q else (200, 1000)
        self.counter_writers, self.counter_increments = (64, 20) if q else (64, 100)


def app_conn_kwargs() -> dict:
    # As backend.db.connection_kwargs builds them for the app's own pool.
    return {"autocommit": True, "row_factory": dict_row, "prepare_threshold": 5,
            "options": "-c statement_timeout=30000"}


def auth(user_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(user_id)}"}


def chat_query(k: int, tokens: int = 12, interval_ms: float = 0, tag: str | None = None) -> str:
    directive = f"tokens={tokens} interval_ms={interval_ms:g}" + (f" tag={tag}" if tag else "")
    return f"Question {k}: what is the value of the Highland property? [bench {directive}]"


def last_event(body: bytes) -> str | None:
    at = body.rfind(b"event: ")
    return body[at + 7: body.find(b"\n", at)].decode() if at >= 0 else None


# --- 6. growth (also builds the real sessions the delete scenario copies) -------------------------


async def _drive_session(server: AppServer, user_id: str, session_id: str, turns: int, on_turn) -> None:
    conn = Connection(HOST, server.port, auth(user_id))
    try:
        for k in range(1, turns + 1):
            r = await conn.request("POST", STREAM_PATH, body={"session_id": session_id, "query": chat_query(k)})
            if r.status != 200 or last_event(r.body) != "done":
                raise RuntimeError(f"turn {k} failed: {r.status} {r.body[-300:]!r}")
            on_turn(k)
    finally:
        await conn.close()


def build_sessions(server: AppServer, db_url: str, mode: str, sizes: Sizes, results: Results) -> dict[int, str]:
    """Drive one session through the chat endpoint for max(turns) turns, measuring its bytes as it grows;
    snapshot it (a copy of every row) at each size in sizes.turns. Returns {turns: template thread id}."""
    user, sid = new_user(), f"growth-{mode}"
    tid = thread_id(user, sid)
    total = sizes.turns[-1]
    step = max(1, total // 20)
    conn = connect(db_url)
    db_before = data.database_bytes(conn)
    samples: list[dict] = []
    templates: dict[int, str] = {}
    tpl_user = "template-user"
    started = time.perf_counter()

    def on_turn(k: int) -> None:
        if k % step == 0 or k in sizes.turns or k == 1:
            b = data.thread_bytes(conn, tid)
            samples.append({"turn": k, "live_bytes": sum(b.values()), "by_table": b,
                            "rows": data.thread_rows(conn, tid),
                            "db_bytes_delta": data.database_bytes(conn) - db_before,
                            "elapsed_s": round(time.perf_counter() - started, 2)})
        if k in sizes.turns:
            tpl_sid = f"tpl-{mode}-{k}"
            data.clone_thread(conn, tid, tpl_user, tpl_sid, thread_id(tpl_user, tpl_sid), BUSINESS)
            templates[k] = thread_id(tpl_user, tpl_sid)

    asyncio.run(_drive_session(server, user, sid, total, on_turn))
    elapsed = time.perf_counter() - started
    final = samples[-1]
    # Bytes per turn early vs late: the slope over the first and the last tenth of the session.
    first = [s for s in samples if s["turn"] <= max(step, total // 10)]
    late = [s for s in samples if s["turn"] >= total - max(step, total // 10)]
    slope_first = (first[-1]["live_bytes"] - samples[0]["live_bytes"]) / max(1, first[-1]["turn"] - samples[0]["turn"])
    slope_last = (late[-1]["live_bytes"] - late[0]["live_bytes"]) / max(1, late[-1]["turn"] - late[0]["turn"])
    say(f"growth {mode}: {total} turns in {elapsed:.1f}s; live {final['live_bytes'] / 1e6:.2f} MB, "
        f"database +{final['db_bytes_delta'] / 1e6:.2f} MB, rows {final['rows']}")
    # The server's own time for each turn ("turn finished" records): a turn's cost as the history grows.
    turn_ms = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        if '"turn finished"' in line and f'"{sid}"' in line:
            try:
                turn_ms.append(json.loads(line)["duration_ms"])
            except (ValueError, KeyError):
                pass
    window = max(1, total // 20)
    results.detail("growth", mode, {
        "turn_ms_p50_first": stats(turn_ms[:window])["p50"], "turn_ms_p50_last": stats(turn_ms[-window:])["p50"],
        "turns": total, "build_seconds": round(elapsed, 1), "ms_per_turn": round(elapsed * 1000 / total, 1),
        "live_bytes": final["live_bytes"], "database_bytes_delta": final["db_bytes_delta"],
        "rows_at_end": final["rows"], "bytes_per_turn_first_tenth": round(slope_first),
        "bytes_per_turn_last_tenth": round(slope_last), "samples": samples,
    })
    conn.close()
    return templates


def growth_targets(results: Results, sizes: Sizes) -> None:
    g = results.details["growth"]
    latest, full = g["latest"], g["full"]
    n = latest["turns"]
    results.target(f"growth: {n}-turn session's rows, all tables, CHECKPOINT_HISTORY=latest",
                   latest["live_bytes"] / 1e6, "MB", "<= 5 MB at 1,000 turns", latest["live_bytes"] <= 5e6)
    ratio = latest["bytes_per_turn_last_tenth"] / max(1, latest["bytes_per_turn_first_tenth"])
    results.target(f"growth: bytes/turn, last tenth / first tenth of {n} turns (latest)", ratio, "x",
                   "<= 1.5 (flat)", ratio <= 1.5)
    results.detail("growth", "full_vs_latest_live_bytes", round(full["live_bytes"] / max(1, latest["live_bytes"]), 1))


# --- 1. delete ------------------------------------------------------------------------------


def floor_delete(conn, user_id: str, session_id: str) -> tuple[float, dict]:
    """The bare SQL of a delete, in one transaction: the store's own statements, nothing else
    (the lock, the check for a reply being written, then one statement for every row of the
    thread, the session and the audit), run straight through psycopg."""
    started = time.perf_counter()
    with conn.transaction():
        row = DeletionStore.lock_for_delete(conn, user_id, session_id)
        RunStore.live_on(conn, user_id, session_id)
        counts, _, _ = DeletionStore.delete_thread_and_row(
            conn, thread_id=row["thread_id"], row_id=row["id"], user_id=user_id, business_id=row["business_id"],
            session_id=session_id, forced=False)
    return (time.perf_counter() - started) * 1000, counts


@dataclass
class DeleteSide:
    """One database a delete is measured on: its server, its URL, and connections for copies and the floor."""
    name: str
    server: AppServer
    db_url: str

    def open(self) -> None:
        self.conn = connect(self.db_url)
        self.floor_conn = connect(self.db_url, **{k: v for k, v in app_conn_kwargs().items()
                                                  if k not in ("autocommit", "row_factory")})

    def close(self) -> None:
        self.conn.close()
        self.floor_conn.close()


async def _delete_round(sides: list[DeleteSide], conns: list[Connection], user_id: str, jobs: list[dict]) -> list[dict]:
    """For each job: on each side in turn, our DELETE over HTTP, then the floor on a same-sized copy."""
    out = []
    for job in jobs:
        for side, conn in zip(sides, conns):
            ours_sid, floor_sid = job[side.name]
            rid = uuid.uuid4().hex
            r = await conn.request("DELETE", f"/api/llm/sessions/{ours_sid}", headers={"X-Request-ID": rid})
            if r.status != 200:
                raise RuntimeError(f"delete failed: {r.status} {r.body[:300]!r}")
            floor_ms, floor_counts = floor_delete(side.floor_conn, user_id, floor_sid)
            out.append({"side": side.name, "rid": rid, "client_ms": r.elapsed * 1000, "floor_ms": floor_ms,
                        "deleted": r.json()["deleted"], "floor_deleted": dict(floor_counts)})
    return out


def copy_threads(src_url: str, dst_url: str, thread_ids: list[str]) -> None:
    """Sessions and their checkpoint rows, byte for byte, from one database to another (COPY)."""
    with connect(src_url) as src, connect(dst_url) as dst:
        for table in ("chat_sessions", *CHECKPOINT_TABLES):
            cols = ", ".join(data.columns(src, table))
            with src.cursor().copy(f"copy (select {cols} from {table} where thread_id = any(%s)) to stdout (format binary)",
                                   (thread_ids,)) as out, \
                    dst.cursor().copy(f"copy {table} ({cols}) from stdin (format binary)") as into:
                for chunk in out:
                    into.write(chunk)


def delete_scenario(sides: list[DeleteSide], templates: dict[tuple[str, int], str], sizes: Sizes) -> dict:
    """Deletes of copies of each real session, alternating sides (the loaded database first) and ours/floor.

    The sessions biggest with full history (~110 MB a copy) are measured on the first side only.
    """
    user = new_user()
    for side in sides:
        side.open()
    out: dict[str, dict] = {}
    try:
        for (mode, turns), tpl in templates.items():
            big_full = mode == "full" and turns == sizes.turns[-1]
            here = sides[:1] if big_full else sides
            n = sizes.delete_samples_big_full if big_full else sizes.delete_samples
            warm = 2
            jobs = []
            for i in range(warm + n):
                job = {}
                for side in here:
                    source = templates[(mode, sizes.turns[0])] if i < warm else tpl  # warm-ups: small copies
                    pair = []
                    for kind in ("o", "f"):
                        sid = f"del-{mode}-{turns}-{kind}{i}"
                        data.clone_thread(side.conn, source, user, sid, thread_id(user, sid), BUSINESS)
                        pair.append(sid)
                    job[side.name] = tuple(pair)
                jobs.append(job)
            rows = data.thread_rows(here[0].conn, thread_id(user, jobs[-1][here[0].name][0]))

            async def run_jobs(here=here, jobs=jobs) -> list[dict]:
                conns = [Connection(HOST, side.server.port, auth(user)) for side in here]
                try:
                    return await _delete_round(here, conns, user, jobs)
                finally:
                    for c in conns:
                        await c.close()

            samples = asyncio.run(run_jobs())[warm * len(here):]
            assert all(s["deleted"] == s["floor_deleted"] for s in samples), "ours and the floor deleted different rows"
            res: dict = {"rows_per_session": rows}
            for side in here:
                mine = [s for s in samples if s["side"] == side.name]
                log = side.server.request_log()
                server_ms = [log[s["rid"]]["duration_ms"] for s in mine if s["rid"] in log]
                r = {"server_ms": stats(server_ms), "client_ms": stats([s["client_ms"] for s in mine]),
                     "floor_ms": stats([s["floor_ms"] for s in mine])}
                r["ratio_p50"] = r["server_ms"]["p50"] / r["floor_ms"]["p50"]
                r["ratio_p95"] = r["server_ms"]["p95"] / r["floor_ms"]["p95"]
                res[side.name] = r
                say(f"delete {mode} {turns} turns {rows} [{side.name}]: server p50 {r['server_ms']['p50']:.2f} "
                    f"p95 {r['server_ms']['p95']:.2f} ms, floor p50 {r['floor_ms']['p50']:.2f} "
                    f"p95 {r['floor_ms']['p95']:.2f} -> x{r['ratio_p50']:.2f} / x{r['ratio_p95']:.2f}")
            out[f"{mode}/{turns}"] = res
    finally:
        for side in sides:
            side.close()
    return out


def delete_targets(results: Results, out: dict, loaded: str, empty: str | None, other_rows: int) -> None:
    for key, res in out.items():
        mode, turns = key.split("/")
        r = res[loaded]
        for q in ("p50", "p95"):
            results.target(f"delete {turns}-turn session ({mode}), {q} server / floor, {other_rows:,} other checkpoint rows",
                           r[f"ratio_{q}"], "x", "<= 1.5", r[f"ratio_{q}"] <= 1.5)
    for key, res in out.items():
        mode, turns = key.split("/")
        if empty is None or empty not in res or mode != "latest":
            continue
        ratio = res[loaded]["server_ms"]["p50"] / res[empty]["server_ms"]["p50"]
        results.target(f"delete {turns}-turn session (latest), p50 server time with {other_rows:,} other rows / "
                       "without (side by side)", ratio, "x", "<= 1.5 (flat)", ratio <= 1.5)


# --- 2. listing -----------------------------------------------------------------------------------


async def _list_samples(server: AppServer, user_id: str, cases: dict[str, str], store: SessionStore,
                        floor_args: dict[str, dict], n: int) -> dict[str, list]:
    conn = Connection(HOST, server.port, auth(user_id))
    out = {name: [] for name in cases}
    try:
        for i in range(n + 3):
            for name, query in cases.items():
                rid = uuid.uuid4().hex
                r = await conn.request("GET", f"/api/llm/sessions?{query}", headers={"X-Request-ID": rid})
                if r.status != 200:
                    raise RuntimeError(f"list failed: {r.status} {r.body[:300]!r}")
                t = time.perf_counter()
                rows, _total, _exact = store.list_page(user_id, include_archived=False, **floor_args[name])
                floor_ms = (time.perf_counter() - t) * 1000
                if i >= 3:  # the first rounds warm caches and prepare statements
                    out[name].append({"rid": rid, "client_ms": r.elapsed * 1000, "floor_ms": floor_ms,
                                      "count": r.json()["count"], "floor_count": len(rows)})
    finally:
        await conn.close()
    return out


def listing(server: AppServer, db_url: str, sizes: Sizes, results: Results, list_user: str) -> None:
    pool = ConnectionPool(db_url, min_size=1, max_size=1, kwargs=app_conn_kwargs(), open=True)
    store = SessionStore(pool)
    with pool.connection() as conn:
        order = ("select id, last_activity_at from chat_sessions where user_id = %s and not is_archived "
                 "order by last_activity_at desc, id desc offset %s limit 1")
        after_first = conn.execute(order, (list_user, 49)).fetchone()
        deep = conn.execute(order, (list_user, sizes.list_depth - 1)).fetchone()
    c1, c2 = encode_cursor(after_first), encode_cursor(deep)
    cases = {
        "first page": "limit=50",
        f"offset {sizes.list_depth:,}": f"limit=50&offset={sizes.list_depth}",
        "cursor page 2": f"limit=50&cursor={c1}",
        f"cursor page after {sizes.list_depth:,}": f"limit=50&cursor={c2}",
        # ?q=: names are 'Session <n>', so this matches 11 of the user's (and the trigram
        # index's posting lists for 'ses', 'ion'... hold every row: its worst case).
        "search q=Session 4242": "limit=50&q=Session%204242",
    }
    floor_args = {
        "first page": {"limit": 50},
        f"offset {sizes.list_depth:,}": {"limit": 50, "offset": sizes.list_depth},
        "cursor page 2": {"limit": 50, "after": (after_first["last_activity_at"], after_first["id"])},
        f"cursor page after {sizes.list_depth:,}": {"limit": 50, "after": (deep["last_activity_at"], deep["id"])},
        "search q=Session 4242": {"limit": 50, "search": "Session 4242"},
    }
    raw = asyncio.run(_list_samples(server, list_user, cases, store, floor_args, sizes.list_samples))
    pool.close()
    log = server.request_log()
    out = {}
    for name, samples in raw.items():
        server_ms = [log[s["rid"]]["duration_ms"] for s in samples if s["rid"] in log]
        res = {"server_ms": stats(server_ms), "client_ms": stats([s["client_ms"] for s in samples]),
               "floor_ms": stats([s["floor_ms"] for s in samples]), "rows": samples[0]["count"]}
        res["ratio_p50"] = res["server_ms"]["p50"] / res["floor_ms"]["p50"]
        out[name] = res
        say(f"list {name}: server p50 {res['server_ms']['p50']:.2f} p95 {res['server_ms']['p95']:.2f} ms, "
            f"raw SQL p50 {res['floor_ms']['p50']:.2f} p95 {res['floor_ms']['p95']:.2f} -> x{res['ratio_p50']:.2f}")
        if name.startswith("cursor") or name == "first page":
            results.target(f"list {name} ({sizes.list_per_user:,} of the user's sessions), p50 server time",
                           res["server_ms"]["p50"], "ms", "<= 5 ms", res["server_ms"]["p50"] <= 5)
    results.detail("listing", "cases", out)


# --- 3. CRUD throughput ---------------------------------------------------------------------------


class OursCrud:
    name = "ours"

    def __init__(self, port: int, pids) -> None:
        self.port = port
        self.pids = pids  # callable: the server's processes, for CPU accounting

    # Writes one user makes before the next user takes over the connection: within the
    # per-user session write budget (SESSION_WRITE_RATE_LIMIT, 120 a minute) at any speed,
    # as a crowd of users is, not one user writing 50 times a second.
    CYCLES_PER_USER = 30

    def connection(self) -> Connection:
        conn = Connection(HOST, self.port, auth(new_user()))
        conn.cycles = 0
        return conn

    async def cycle(self, conn: Connection, record) -> None:
        conn.cycles += 1
        if conn.cycles % self.CYCLES_PER_USER == 0:
            conn.default_headers = auth(new_user())
        r = await conn.request("POST", "/api/llm/sessions", body={"session_name": "Bench session"})
        record("create", r, 201)
        sid = r.json()["session_id"]
        record("get", await conn.request("GET", f"/api/llm/sessions/{sid}"), 200)
        record("rename", await conn.request("PUT", f"/api/llm/sessions/{sid}", body={"session_name": "Renamed"}), 200)
        record("delete", await conn.request("DELETE", f"/api/llm/sessions/{sid}"), 200)


class PeerCrud:
    name = "peer"

    def __init__(self, port: int, pids) -> None:
        self.port = port
        self.pids = pids

    def connection(self) -> Connection:
        return Connection(HOST, self.port)

    async def cycle(self, conn: Connection, record) -> None:
        r = await conn.request("POST", "/threads", body={"metadata": {"name": "Bench session"}})
        record("create", r, 200)
        tid = r.json()["thread_id"]
        record("get", await conn.request("GET", f"/threads/{tid}"), 200)
        record("rename", await conn.request("PATCH", f"/threads/{tid}", body={"metadata": {"name": "Renamed"}}), 200)
        record("delete", await conn.request("DELETE", f"/threads/{tid}"), (200, 202, 204))


async def _crud_run(target, concurrency: int, seconds: float) -> dict:
    warmup_until = time.perf_counter() + min(1.0, seconds / 2)
    stop_at = warmup_until + seconds
    latencies: list[float] = []
    by_op: dict[str, list[float]] = {}
    errors = 0
    first_error = None

    def record(op: str, r, ok) -> None:
        nonlocal errors, first_error
        ok = ok if isinstance(ok, tuple) else (ok,)
        if r.status not in ok:
            errors += 1
            first_error = first_error or f"{op}: {r.status} {r.body[:200]!r}"
        now = time.perf_counter()
        if warmup_until <= now <= stop_at:
            latencies.append(r.elapsed * 1000)
            by_op.setdefault(op, []).append(r.elapsed * 1000)

    async def worker() -> None:
        conn = target.connection()
        try:
            while time.perf_counter() < stop_at:
                await target.cycle(conn, record)
        finally:
            await conn.close()

    server_pids, pg_pids = target.pids(), postgres_pids()
    cpu0 = (cpu_by_pid(server_pids), cpu_by_pid(pg_pids), {0: own_cpu_seconds()})
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    cpu1 = (cpu_by_pid(server_pids), cpu_by_pid(pg_pids), {0: own_cpu_seconds()})
    total = sum(len(v) for v in by_op.values())
    # CPU per request over the whole run (warm-up included), by process group.
    done = total * wall / seconds if seconds else total
    cpu = {k: round(cpu_delta(a, b) * 1000 / max(1, done), 3)
           for k, a, b in zip(("server", "postgres", "client"), cpu0, cpu1)}
    return {"requests": len(latencies), "seconds": seconds, "rps": len(latencies) / seconds, "errors": errors,
            "first_error": first_error, "latency_ms": stats(latencies), "cpu_ms_per_request": cpu,
            "by_op_p50_ms": {op: round(stats(v)["p50"], 2) for op, v in by_op.items()}}


def crud(ours: AppServer, peer, sizes: Sizes, results: Results) -> None:
    targets = [OursCrud(ours.port, ours.pids)] + ([PeerCrud(peer.port, peer.pids)] if peer else [])
    out: dict[str, dict] = {}
    for concurrency in (1, 32):
        # A B B A: each side runs twice, in mirrored order, so drift in the machine's load cancels.
        order = targets + targets[::-1]
        runs: dict[str, list[dict]] = {}
        for target in order:
            r = asyncio.run(_crud_run(target, concurrency, sizes.crud_seconds))
            runs.setdefault(target.name, []).append(r)
            say(f"crud c={concurrency} {target.name}: {r['rps']:.0f} req/s, p50 {r['latency_ms']['p50']:.2f} ms, "
                f"p99 {r['latency_ms']['p99']:.2f} ms, CPU ms/request {r['cpu_ms_per_request']}, errors {r['errors']}{' ' + r['first_error'] if r['first_error'] else ''}")
        for name, rs in runs.items():
            out[f"{name} c={concurrency}"] = {
                "rps": sum(r["rps"] for r in rs) / len(rs),
                "p50_ms": sum(r["latency_ms"]["p50"] for r in rs) / len(rs),
                "p99_ms": sum(r["latency_ms"]["p99"] for r in rs) / len(rs),
                "errors": sum(r["errors"] for r in rs), "runs": rs,
                "cpu_ms_per_request": {k: round(sum(r["cpu_ms_per_request"][k] for r in rs) / len(rs), 3)
                                       for k in ("server", "postgres", "client")},
            }
    results.detail("crud", "runs", out)
    if peer:
        ratio = out["ours c=32"]["rps"] / out["peer c=32"]["rps"]
        results.target("CRUD mix at concurrency 32: our throughput / peer's (langgraph dev, in-memory)", ratio, "x",
                       ">= 2", ratio >= 2)
    else:
        results.target("CRUD mix at concurrency 32: our throughput / peer's", float("nan"), "x", ">= 2 (peer not run)",
                       False)
    results.target("CRUD mix: errors (ours, all concurrencies)",
                   out["ours c=1"]["errors"] + out["ours c=32"]["errors"], "count", "0",
                   out["ours c=1"]["errors"] + out["ours c=32"]["errors"] == 0)


# --- 4. streaming ------------------------------------------------------------------------------------


async def _stream_ours(port: int, user_id: str, session_id: str, query: str, timeout: float) -> dict:
    conn = Connection(HOST, port, auth(user_id))
    first = None

    def on_chunk(c: bytes) -> None:
        nonlocal first
        if first is None and b"event: token" in c:
            first = time.perf_counter()

    started, started_wall = time.perf_counter(), time.time()
    try:
        r = await asyncio.wait_for(conn.request("POST", STREAM_PATH, body={"session_id": session_id, "query": query},
                                                on_chunk=on_chunk), timeout)
        end = last_event(r.body)
        ok = r.status == 200 and end == "done"
        return {"ok": ok, "ttft_ms": ((first or time.perf_counter()) - started) * 1000,
                "total_ms": (time.perf_counter() - started) * 1000, "started_wall": started_wall,
                "error": None if ok else f"{r.status} {end} {r.body[-200:]!r}",
                "tokens": r.body.count(b"event: token")}
    except Exception as exc:  # noqa: BLE001 - every failure is counted
        return {"ok": False, "ttft_ms": None, "total_ms": (time.perf_counter() - started) * 1000,
                "error": f"{type(exc).__name__}: {exc}", "tokens": 0}
    finally:
        await conn.close()


async def _stream_direct(port: int, query: str, timeout: float, prior: list[dict] | None = None) -> dict:
    conn = Connection(HOST, port)
    first = None

    def on_chunk(c: bytes) -> None:
        nonlocal first
        if first is None and b'"content"' in c:
            first = time.perf_counter()

    started, started_wall = time.perf_counter(), time.time()
    try:
        body = {"model": "bench-model", "messages": [*(prior or []), {"role": "user", "content": query}],
                "stream": True}
        r = await asyncio.wait_for(conn.request("POST", "/v1/chat/completions", body=body, on_chunk=on_chunk), timeout)
        ok = r.status == 200 and b"[DONE]" in r.body
        return {"ok": ok, "ttft_ms": ((first or time.perf_counter()) - started) * 1000,
                "total_ms": (time.perf_counter() - started) * 1000, "started_wall": started_wall,
                "error": None if ok else str(r.status),
                "tokens": r.body.count(b'"content"')}
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "ttft_ms": None, "total_ms": (time.perf_counter() - started) * 1000,
                "error": f"{type(exc).__name__}: {exc}", "tokens": 0}
    finally:
        await conn.close()


async def _burst(coroutines: list) -> tuple[list, float]:
    """Run these streams all at once; their results and the wall time."""
    started = time.perf_counter()
    out = await asyncio.gather(*coroutines)
    return out, time.perf_counter() - started


class RssSampler:
    def __init__(self, server: AppServer) -> None:
        self.server, self.peak, self._stop = server, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, self.server.rss())

    def __enter__(self) -> Self:
        self.peak = self.server.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def precreate_sessions(db_url: str, user_id: str, prefix: str, n: int) -> list[str]:
    """Named sessions (so no auto-naming call) made in SQL, each used by one stream."""
    sids = [f"{prefix}-{i}" for i in range(n)]
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.executemany(
            "insert into chat_sessions (user_id, business_id, session_id, thread_id, session_name, name_source) "
            "values (%s, %s, %s, %s, 'Stream bench', 'user')",
            [(user_id, BUSINESS, sid, thread_id(user_id, sid)) for sid in sids],
        )
    return sids


def sessions_for_users(db_url: str, n: int, prefix: str) -> list[tuple[str, str]]:
    """n (user, session) pairs, one session per user, named (no naming call), made in SQL: streams
    at once come from different users, as real ones do (one user may have only a few replies at once)."""
    pairs = [(new_user(), f"{prefix}-{i}") for i in range(n)]
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.executemany(
            "insert into chat_sessions (user_id, business_id, session_id, thread_id, session_name, name_source) "
            "values (%s, %s, %s, %s, 'Stream bench', 'user')",
            [(user, BUSINESS, sid, thread_id(user, sid)) for user, sid in pairs],
        )
    return pairs


def streaming(server: AppServer, upstream, db_url: str, sizes: Sizes, results: Results,
              templates: dict[tuple[str, int], str] | None = None) -> None:
    upstream_port = upstream.port
    user = new_user()
    tokens, interval = 20, 20
    # Latency: one stream at a time, alternating backend and straight-from-upstream.
    sids = precreate_sessions(db_url, user, "lat", sizes.stream_samples + 3)

    async def latency() -> tuple[list, list]:
        ours, direct = [], []
        for i, sid in enumerate(sids):
            o = await _stream_ours(server.port, user, sid, chat_query(0, tokens, interval, f"b{i}"), 60)
            d = await _stream_direct(upstream_port, chat_query(0, tokens, interval, f"d{i}"), 60)
            o["tag"], d["tag"] = f"b{i}", f"d{i}"
            if i >= 3:
                ours.append(o)
                direct.append(d)
        return ours, direct

    ours, direct = asyncio.run(latency())
    # Split the backend's TTFT: its work before the model is called (request in -> upstream receives
    # the chat request), and the rest (the model's first token, relayed back through the backend).
    arrived = upstream.arrivals()
    before_model = [(arrived[o["tag"]] - o["started_wall"]) * 1000 for o in ours if o["ok"] and o["tag"] in arrived]
    direct_to_upstream = [(arrived[d["tag"]] - d["started_wall"]) * 1000 for d in direct if d["ok"] and d["tag"] in arrived]
    failures = [o["error"] for o in ours + direct if not o["ok"]]
    if failures:
        say(f"stream latency failures: {failures[:3]}")
    o_ttft, d_ttft = stats([o["ttft_ms"] for o in ours if o["ok"]]), stats([d["ttft_ms"] for d in direct if d["ok"]])
    o_tot, d_tot = stats([o["total_ms"] for o in ours if o["ok"]]), stats([d["total_ms"] for d in direct if d["ok"]])
    lat = {"tokens": tokens, "interval_ms": interval, "ours_ttft_ms": o_ttft, "direct_ttft_ms": d_ttft,
           "ours_total_ms": o_tot, "direct_total_ms": d_tot,
           "added_ttft_p50_ms": o_ttft["p50"] - d_ttft["p50"], "added_ttft_p99_ms": o_ttft["p99"] - d_ttft["p99"],
           "added_total_p50_ms": o_tot["p50"] - d_tot["p50"], "added_total_p99_ms": o_tot["p99"] - d_tot["p99"],
           "failures": len(failures),
           "backend_before_model_ms": stats(before_model), "client_to_upstream_ms": stats(direct_to_upstream)}
    say(f"stream TTFT: backend p50 {o_ttft['p50']:.2f} p99 {o_ttft['p99']:.2f} ms, upstream p50 {d_ttft['p50']:.2f} "
        f"p99 {d_ttft['p99']:.2f} -> added p50 {lat['added_ttft_p50_ms']:.2f} ms, p99 {lat['added_ttft_p99_ms']:.2f}; "
        f"total added p50 {lat['added_total_p50_ms']:.2f} ms; backend work before calling the model p50 "
        f"{lat['backend_before_model_ms']['p50']:.2f} ms (client->upstream direct {lat['client_to_upstream_ms']['p50']:.2f})")
    results.detail("streaming", "latency", lat)
    results.target("streaming: added time to first token, p50 (backend - upstream)", lat["added_ttft_p50_ms"], "ms",
                   "<= 5 ms", lat["added_ttft_p50_ms"] <= 5 and not failures)

    # The same with history: sessions that are copies of the real session of turns[1] turns
    # (latest history), so the model is sent 2 x turns + 1 messages; the direct request sends as many.
    if templates:
        history = sizes.turns[1]
        n = max(8, sizes.stream_samples // 2)
        hist_sids = []
        with connect(db_url) as conn:
            for i in range(n + 3):
                sid = f"hist-{i}"
                data.clone_thread(conn, templates[("latest", history)], user, sid, thread_id(user, sid), BUSINESS)
                hist_sids.append(sid)
        prior = []
        for k in range(1, history + 1):
            prior += [{"role": "user", "content": chat_query(k)}, {"role": "assistant", "content": " ".join(
                f"w{j}" for j in range(12)) + " "}]

        async def history_latency() -> tuple[list, list]:
            ours_h, direct_h = [], []
            for i, sid in enumerate(hist_sids):
                o = await _stream_ours(server.port, user, sid, chat_query(0, tokens, interval, f"hb{i}"), 60)
                d = await _stream_direct(upstream_port, chat_query(0, tokens, interval, f"hd{i}"), 60, prior)
                o["tag"], d["tag"] = f"hb{i}", f"hd{i}"
                if i >= 3:
                    ours_h.append(o)
                    direct_h.append(d)
            return ours_h, direct_h

        ours_h, direct_h = asyncio.run(history_latency())
        ho = stats([o["ttft_ms"] for o in ours_h if o["ok"]])
        hd = stats([d["ttft_ms"] for d in direct_h if d["ok"]])
        arrived = upstream.arrivals()
        h_before = stats([(arrived[o["tag"]] - o["started_wall"]) * 1000 for o in ours_h if o["ok"] and o["tag"] in arrived])
        h_direct = stats([(arrived[d["tag"]] - d["started_wall"]) * 1000 for d in direct_h if d["ok"] and d["tag"] in arrived])
        hist = {"history_turns": history, "messages_sent": 2 * history + 1, "ours_ttft_ms": ho, "direct_ttft_ms": hd,
                "backend_before_model_ms": h_before, "client_to_upstream_ms": h_direct,
                "added_ttft_p50_ms": ho["p50"] - hd["p50"], "added_ttft_p99_ms": ho["p99"] - hd["p99"],
                "failures": sum(1 for o in ours_h + direct_h if not o["ok"])}
        results.detail("streaming", "latency_with_history", hist)
        say(f"stream TTFT with {history} turns of history: backend p50 {ho['p50']:.2f} p99 {ho['p99']:.2f} ms, upstream "
            f"p50 {hd['p50']:.2f} -> added p50 {hist['added_ttft_p50_ms']:.2f} ms; backend work before calling the model "
            f"p50 {h_before['p50']:.2f} ms (client->upstream direct {h_direct['p50']:.2f})")
        results.target(f"streaming: added time to first token, p50, in a {history}-turn session", hist["added_ttft_p50_ms"],
                       "ms", "<= 5 ms", hist["added_ttft_p50_ms"] <= 5 and not hist["failures"])

    # Concurrency: C streams at once, each in its own session of its own user.
    conc_tokens, conc_interval = 20, 50
    rest = server.rss()
    results.detail("streaming", "rss_at_rest_mb", round(rest / 2**20, 1))
    for c in sizes.stream_concurrency:
        pairs = sessions_for_users(db_url, c, f"c{c}")
        q = chat_query(0, conc_tokens, conc_interval)

        direct_out, direct_wall = asyncio.run(_burst([_stream_direct(upstream_port, q, 120) for _ in range(c)]))
        before = server.rss()
        with RssSampler(server) as rss:
            ours_out, wall = asyncio.run(_burst([_stream_ours(server.port, u, sid, q, 300) for u, sid in pairs]))
        ok = [o for o in ours_out if o["ok"]]
        errs = [o["error"] for o in ours_out if not o["ok"]]
        res = {
            "streams": c, "tokens": conc_tokens, "interval_ms": conc_interval, "completed": len(ok),
            "errors": len(errs), "error_samples": errs[:5], "wall_s": round(wall, 2),
            "ttft_ms": stats([o["ttft_ms"] for o in ok]), "total_ms": stats([o["total_ms"] for o in ok]),
            "tokens_received": sum(o["tokens"] for o in ok),
            "rss_rest_mb": round(rest / 2**20, 1), "rss_before_mb": round(before / 2**20, 1),
            "rss_peak_mb": round(rss.peak / 2**20, 1), "rss_after_mb": round(server.rss() / 2**20, 1),
            "direct": {"completed": sum(1 for d in direct_out if d["ok"]), "wall_s": round(direct_wall, 2),
                       "total_ms": stats([d["total_ms"] for d in direct_out if d["ok"]])},
        }
        say(f"streams x{c}: {res['completed']} completed, {res['errors']} errors in {wall:.1f}s; TTFT p50 "
            f"{res['ttft_ms']['p50']:.0f} p99 {res['ttft_ms']['p99']:.0f} ms; total p50 {res['total_ms']['p50']:.0f} "
            f"p99 {res['total_ms']['p99']:.0f} ms; RSS {res['rss_rest_mb']} -> {res['rss_peak_mb']} MB; upstream "
            f"alone: {res['direct']['completed']} in {direct_wall:.1f}s{' ' + str(errs[:2]) if errs else ''}")
        results.detail("streaming", f"concurrent_{c}", res)
        results.target(f"streaming: {c} concurrent streams, errors (of {c})", len(errs), "count", "0",
                       len(errs) == 0 and len(ok) == c)


# --- 5. message counting -------------------------------------------------------------------------


def counting(db_url: str, sizes: Sizes, results: Results) -> None:
    writers, increments = sizes.counter_writers, sizes.counter_increments
    user, sid = new_user(), "counter"
    with connect(db_url) as conn:
        conn.execute("insert into chat_sessions (user_id, business_id, session_id, thread_id, session_name, name_source)"
                     " values (%s, %s, %s, %s, 'Counter', 'user')", (user, BUSINESS, sid, thread_id(user, sid)))
    pool = ConnectionPool(db_url, min_size=writers, max_size=writers, kwargs=app_conn_kwargs(), timeout=60, open=True)
    pool.wait()
    barrier = threading.Barrier(writers + 1)
    failures: list[str] = []

    def writer() -> None:
        barrier.wait()
        for _ in range(increments):
            try:
                with pool.connection() as conn:
                    SessionStore.increment_message_count(conn, user, sid, 1)
            except Exception as exc:  # noqa: BLE001
                failures.append(repr(exc))

    threads = [threading.Thread(target=writer) for _ in range(writers)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    with pool.connection() as conn:
        final = conn.execute("select message_count from chat_sessions where user_id = %s and session_id = %s",
                             (user, sid)).fetchone()["message_count"]
    pool.close()
    expected = writers * increments
    lost = expected - final
    res = {"writers": writers, "increments_each": increments, "expected": expected, "final_count": final,
           "lost": lost, "failed_calls": len(failures), "seconds": round(wall, 3), "increments_per_s": expected / wall}
    results.detail("counting", "result", res)
    say(f"counting: {writers} x {increments} -> {final} (lost {lost}, failed {len(failures)}) at "
        f"{res['increments_per_s']:.0f}/s")
    results.target(f"message counting: lost updates ({writers} writers x {increments})", lost, "count", "0",
                   lost == 0 and not failures)

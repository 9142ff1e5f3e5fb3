"""Branches (issue 28): what a branch stores, how fast the active path is read, what a turn in a
branched session costs.

    python -m bench.branches [--only storage,path,turns] [--turns 100] [--edits 10] [--edit-at 50]
                             [--path-turns 500] [--branches 50] [--samples 200] [--turn-count 300]

All on the production command (`make serve`'s, shipped defaults: 2 gevent workers, pool 10),
against the fake upstream (bench/fake_upstream.py), sessions driven through the real API:

- storage: in each CHECKPOINT_HISTORY mode (latest, full), three sessions (the six built at
  once), each alone in a database and server of its own: a linear one of `--turns` turns, a linear one of `--turns` + `--edits`
  turns, and a branched one: `--turns` turns, then `--edits` edits of the user message of turn
  `--edit-at` (each a new sibling, answered). Per table (checkpoints, checkpoint_blobs,
  checkpoint_writes, chat_messages, chat_sessions, every other table): the rows, their bytes
  (sum(pg_column_size(t.*)): the row as stored, compressed, TOAST included, each with its
  24-byte header), and after VACUUM FULL the table's size (heap + TOAST) and its indexes' (the
  database holds that session only, so this is the session's share, page-rounded: an index is
  at least one 8 KB page).
- path: one session of `--path-turns` turns (2 x that many messages on the active path) with
  `--branches` branches (edits and regenerations alternately, spread over the path; then a
  switch back to the first line). Then, interleaved: GET /api/llm/sessions/<id>?include_messages
  =true&messages_limit=1000 (server time, the app's own duration_ms, matched by X-Request-ID),
  the same SQL alone (MessageStore.path_page on a connection set up like the app's), the same for
  the default page (200), and the GET without messages (what any GET of it costs, at that moment).
  Then each step of building a page, timed alone in this process (stages()). Target: <= 5 ms p50
  server time for the 1,000-message path.
- turns: turns back to back (40-token replies sent at once), each in a copy of its own of one of
  three sessions with the same active path (`--turn-history` + 1 turns): a linear one, a
  branched one (10 edits of its middle question, switched back, then a turn), and an edit (a
  turn that starts a branch, in a copy of the linear one). Interleaved turn by turn, the order
  turning each time. Server and PostgreSQL CPU per turn from /proc, as bench.turn_cost and
  bench.usage_cost measure them, read around each turn; PostgreSQL's is the backends connected
  to this database only, not every postgres process of the machine (another database's work, a
  test suite beside, is not counted; nor PostgreSQL's background processes, the WAL writer's
  share of a commit). /proc counts in 10 ms ticks: one turn's reading is coarse, the mean over
  `--turn-count` turns is not biased (its standard error is printed). Time to first token too.
  Target: a turn in a branched session adds <= 1 ms (server + PostgreSQL) over a linear one.

Prints a table per part and, last, a JSON document of every number (`rows`, `details`).
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
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import psycopg
from psycopg_pool import ConnectionPool

from backend.messages.store import MessageStore
from backend.sessions.thread_store import CHECKPOINT_TABLES
from bench import data
from bench.aioclient import Connection
from bench.common import (
    BUSINESS,
    AppServer,
    Results,
    Upstream,
    checkout_of,
    connect,
    cpu_by_pid,
    cpu_delta,
    machine_info,
    new_user,
    say,
    scratch_database,
    server_url,
    stats,
    thread_id,
)
from bench.runs import parse_events
from bench.scenarios import HOST, STREAM_PATH, app_conn_kwargs, auth, chat_query, last_event, precreate_sessions

SESSIONS = "/api/llm/sessions"
TABLES = (*CHECKPOINT_TABLES, "chat_messages", "chat_sessions")


# --- driving sessions through the API -----------------------------------------------------------


async def _stream(conn: Connection, path: str, body: dict) -> dict:
    """One streamed turn (a message, an edit or a regeneration): ok, time to first token, and the
    `done` event's data (its user_message_id and assistant_message_id)."""
    first = None

    def on_chunk(c: bytes) -> None:
        nonlocal first
        if first is None and b"event: token" in c:
            first = time.perf_counter()

    started = time.perf_counter()
    r = await conn.request("POST", path, body=body, on_chunk=on_chunk)
    ok = r.status == 200 and last_event(r.body) == "done"
    done = next((d for _, name, d in parse_events(r.body.decode()) if name == "done"), None) if ok else None
    return {"ok": ok, "done": done, "ttft_ms": ((first or time.perf_counter()) - started) * 1000,
            "error": None if ok else f"{r.status} {r.body[-300:]!r}"}


class Driver:
    """One user's session on one server, driven turn by turn; keeps the ids of its first line."""

    def __init__(self, port: int, user: str, session_id: str) -> None:
        self.conn = Connection(HOST, port, auth(user))
        self.sid = session_id
        self.user_ids: list[str] = []  # the user message of each turn of the first line
        self.reply_ids: list[str] = []
        self.turns = 0

    async def _checked(self, path: str, body: dict) -> dict:
        out = await _stream(self.conn, path, body)
        if not out["ok"]:
            raise RuntimeError(f"{path} failed: {out['error']}")
        self.turns += 1
        return out["done"]

    async def turn(self, k: int, tokens: int = 12) -> dict:
        done = await self._checked(STREAM_PATH, {"session_id": self.sid, "query": chat_query(k, tokens)})
        self.user_ids.append(done["user_message_id"])
        self.reply_ids.append(done["assistant_message_id"])
        return done

    async def edit(self, message_id: str, k: int) -> dict:
        return await self._checked(f"{SESSIONS}/{self.sid}/messages/{message_id}/edit", {"query": chat_query(k)})

    async def regenerate(self, message_id: str) -> dict:
        return await self._checked(f"{SESSIONS}/{self.sid}/messages/{message_id}/regenerate", {})

    async def switch(self, message_id: str) -> dict:
        r = await self.conn.request("PUT", f"{SESSIONS}/{self.sid}/branch", body={"message_id": message_id})
        if r.status != 200:
            raise RuntimeError(f"switch failed: {r.status} {r.body[:300]!r}")
        return r.json()

    async def close(self) -> None:
        await self.conn.close()


# --- 1. storage --------------------------------------------------------------------------------


def session_bytes(db_url: str, user: str, sid: str) -> dict[str, dict]:
    """Per table: the session's rows and their bytes (sum(pg_column_size(t.*))); after VACUUM FULL,
    each table's size (heap + TOAST) and its indexes' size (the database holds this session only)."""
    tid = thread_id(user, sid)
    out: dict[str, dict] = {}
    with connect(db_url) as conn:
        row_id = conn.execute("select id from chat_sessions where thread_id = %s", (tid,)).fetchone()["id"]
        where = {"chat_messages": ("session_row_id", row_id), "chat_sessions": ("id", row_id)}
        for table in TABLES:
            column, value = where.get(table, ("thread_id", tid))
            r = conn.execute(f"select count(*) as rows, coalesce(sum(pg_column_size(t.*)), 0) as bytes "
                             f"from {table} t where {column} = %s", (value,)).fetchone()
            out[table] = {"rows": r["rows"], "row_bytes": int(r["bytes"])}
        names = [r["relname"] for r in conn.execute(
            "select relname from pg_stat_user_tables where schemaname = 'public' order by relname").fetchall()]
        # Every other table (the database holds this session only): runs kept for late readers,
        # events, usage, the migrations' own bookkeeping.
        other = {"rows": 0, "row_bytes": 0, "table_bytes": 0, "index_bytes": 0, "tables": []}
        for name in names:
            if name not in out and conn.execute(f'select not exists (select 1 from "{name}") as e').fetchone()["e"]:
                continue  # an empty table: nothing of this session's
            conn.execute(f'vacuum full "{name}"')
            r = conn.execute("select pg_table_size(c.oid) as t, pg_indexes_size(c.oid) as i from pg_class c "
                             "where c.oid = %s::regclass", (f'public."{name}"',)).fetchone()
            if name in out:
                out[name].update(table_bytes=int(r["t"]), index_bytes=int(r["i"]))
            else:
                n = conn.execute(f'select count(*) as n, coalesce(sum(pg_column_size(t.*)), 0) as b '
                                 f'from "{name}" t').fetchone()
                one = {"rows": n["n"], "row_bytes": int(n["b"]), "table_bytes": int(r["t"]), "index_bytes": int(r["i"])}
                other["tables"].append({"table": name, **one})
                for key, value in one.items():
                    other[key] += value
        out["other tables"] = other
        out["checkpoint"] = checkpoint_messages(conn, tid)
    return out


def checkpoint_messages(conn, tid: str) -> dict:
    """The messages the thread's newest checkpoint holds (the model's memory): how many, their text's bytes."""
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    newest = conn.execute("select checkpoint from checkpoints where thread_id = %s and checkpoint_ns = '' "
                          "order by checkpoint_id desc limit 1", (tid,)).fetchone()
    version = newest["checkpoint"]["channel_versions"].get("messages") if newest else None
    blob = conn.execute("select type, blob from checkpoint_blobs where thread_id = %s and checkpoint_ns = '' "
                        "and channel = 'messages' and version = %s", (tid, version)).fetchone()
    if blob is None:
        return {"messages": 0, "content_bytes": 0}
    messages = JsonPlusSerializer().loads_typed((blob["type"], bytes(blob["blob"])))
    return {"messages": len(messages),
            "content_bytes": sum(len(str(m.content).encode()) for m in messages)}


async def _build_storage_session(port: int, user: str, sid: str, turns: int, edits: int, edit_at: int) -> None:
    d = Driver(port, user, sid)
    try:
        for k in range(1, turns + 1):
            await d.turn(k)
        for j in range(edits):
            await d.edit(d.user_ids[edit_at - 1], 1000 + j)
    finally:
        await d.close()


def storage(url: str, upstream: Upstream, workdir: Path, args, results: Results) -> None:
    pid = os.getpid()
    kinds = [(f"linear {args.turns}", args.turns, 0),
             (f"linear {args.turns + args.edits}", args.turns + args.edits, 0),
             (f"{args.turns} + {args.edits} edits at {args.edit_at}", args.turns, args.edits)]
    modes = ("latest", "full")
    jobs = [(mode, kind) for mode in modes for kind in kinds]  # six sessions, each alone in a database
    with ExitStack() as stack:
        dbs = [stack.enter_context(scratch_database(url, f"bench_branches_{pid}_{mode}_{i % 3}"))
               for i, (mode, _) in enumerate(jobs)]
        servers = [AppServer(f"storage-{mode}-{i % 3}", db, upstream.base_url, {"CHECKPOINT_HISTORY": mode}, workdir)
                   for i, ((mode, _), db) in enumerate(zip(jobs, dbs))]
        users = [new_user() for _ in jobs]
        try:
            with ThreadPoolExecutor(len(servers)) as pool:  # each start is mostly a wait
                list(pool.map(AppServer.start, servers))
            sids = [precreate_sessions(db, u, "storage", 1)[0] for db, u in zip(dbs, users)]
            started = time.perf_counter()

            async def build_all() -> None:
                await asyncio.gather(*(
                    _build_storage_session(s.port, u, sid, turns, edits, args.edit_at)
                    for s, u, sid, (_, (_, turns, edits)) in zip(servers, users, sids, jobs)))

            asyncio.run(build_all())
            say(f"storage: six sessions built at once in {time.perf_counter() - started:.1f}s")
        finally:
            for s in servers:
                s.stop()
        with ThreadPoolExecutor(len(jobs)) as pool:
            sizes = list(pool.map(session_bytes, dbs, users, sids))
    for mode in modes:
        measured = {kind[0]: size for (m, kind), size in zip(jobs, sizes) if m == mode}
        results.detail("storage", mode, measured)
        print_storage(mode, measured)
    latest = results.details["storage"]["latest"]
    names = [k[0] for k in kinds]
    linear, longer, branched = (sum(latest[n][t]["row_bytes"] for t in TABLES) for n in names)
    # What a branch would cost if it copied the conversation: the branched session's first line again, per edit.
    results.target(f"storage (latest): {names[2]} / {names[1]}, row bytes of the session, all five tables",
                   branched / longer, "x", "~1 (a branch costs the messages it adds)", branched <= longer * 1.1)
    results.detail("storage", "latest_row_bytes", {names[0]: linear, names[1]: longer, names[2]: branched})


def print_storage(mode: str, measured: dict[str, dict]) -> None:
    names = list(measured)

    def cell(m: dict) -> str:
        return (f"{m['rows']:>6} / {m['row_bytes'] / 1e3:>7.1f} KB / {m['table_bytes'] / 1e3:>6.0f} + "
                f"{m['index_bytes'] / 1e3:>4.0f} KB")

    print(f"\nCHECKPOINT_HISTORY={mode}: rows / row bytes (pg_column_size(t.*)) / table + index bytes after "
          f"VACUUM FULL")
    print(f"{'table':<20}" + "".join(f"{n:>38}" for n in names))
    for table in TABLES:
        print(f"{table:<20}" + "".join(f"{cell(measured[n][table]):>38}" for n in names))
    totals = []
    for n in names:
        rows = sum(measured[n][t]["row_bytes"] for t in TABLES)
        heap = sum(measured[n][t]["table_bytes"] for t in TABLES)
        idx = sum(measured[n][t]["index_bytes"] for t in TABLES)
        totals.append(f"{rows / 1e3:>7.1f} KB / {heap / 1e3:>6.0f} + {idx / 1e3:>4.0f} KB")
    print(f"{'the five tables':<20}" + "".join(f"{c:>38}" for c in totals))
    print(f"{'newest checkpoint':<20}" + "".join(f"{str(measured[n]['checkpoint']['messages']) + ' messages':>38}"
                                                 for n in names))
    print(f"{'other tables':<20}" + "".join(f"{cell(measured[n]['other tables']):>38}" for n in names))
    by_table = [{t["table"]: t for t in measured[n]["other tables"]["tables"]} for n in names]
    for table in sorted({t for b in by_table for t in b}, key=lambda t: -by_table[0].get(t, {}).get("row_bytes", 0)):
        print(f"  {table:<18}" + "".join(f"{cell(b[table]) if table in b else '-':>38}" for b in by_table))


# --- 2. the active path ------------------------------------------------------------------------


async def _build_branched(port: int, user: str, sid: str, turns: int, branches: int) -> Driver:
    """`turns` turns, then `branches` branches spread over them (an edit of a user message and a
    regeneration of a reply, alternately), then a switch back to the first line's last reply."""
    d = Driver(port, user, sid)
    for k in range(1, turns + 1):
        await d.turn(k)
    step = max(1, turns // max(1, branches))
    for i in range(branches):
        t = (i * step) % turns
        if i % 2 == 0:
            await d.edit(d.user_ids[t], 2000 + i)
        else:
            await d.regenerate(d.reply_ids[t])
    await d.switch(d.reply_ids[-1])
    return d


async def _path_samples(port: int, user: str, sid: str, store: MessageStore, row_id: int, limits: list[int],
                        n: int, warm: int) -> dict[int, list[dict]]:
    conn = Connection(HOST, port, auth(user))
    out: dict[int, list[dict]] = {limit: [] for limit in (*limits, 0)}
    try:
        for i in range(warm + n):
            # The same session without its messages (0): what any GET of it costs the server, at the same moment.
            rid = uuid.uuid4().hex
            r = await conn.request("GET", f"{SESSIONS}/{sid}", headers={"X-Request-ID": rid})
            if i >= warm:
                out[0].append({"rid": rid, "client_ms": r.elapsed * 1000})
            for limit in limits:
                rid = uuid.uuid4().hex
                r = await conn.request("GET", f"{SESSIONS}/{sid}?include_messages=true&messages_limit={limit}",
                                       headers={"X-Request-ID": rid})
                if r.status != 200:
                    raise RuntimeError(f"get failed: {r.status} {r.body[:300]!r}")
                t = time.perf_counter()
                rows = store.path_page(row_id, limit=limit, before=None)
                floor_ms = (time.perf_counter() - t) * 1000
                if i >= warm:
                    body = r.json()
                    out[limit].append({"rid": rid, "client_ms": r.elapsed * 1000, "floor_ms": floor_ms,
                                       "bytes": len(r.body), "count": len(body["messages"]),
                                       "floor_count": len(rows),
                                       "with_siblings": sum(len(m["sibling_ids"]) > 1 for m in body["messages"])})
    finally:
        await conn.close()
    return out


def stages(store: MessageStore, row_id: int, limit: int, n: int) -> dict[str, float]:
    """The steps of GET include_messages for one page, each timed alone in this process, as the
    app runs them: the SQL (path_page: the query, and decoding its rows), each row as the API shows
    it (message_out), the response model's validation (pydantic, list[MessageOut]), its JSON-mode
    dump (times to ISO 8601 in UTC), and the JSON encoding."""
    from pydantic import TypeAdapter

    from backend.messages.service import message_out
    from backend.sessions.models import MessageOut

    adapter = TypeAdapter(list[MessageOut])
    times: dict[str, list[float]] = {k: [] for k in ("SQL", "message_out", "validation", "dump", "json")}
    for _ in range(n):
        t0 = time.perf_counter()
        rows = store.path_page(row_id, limit=limit, before=None)
        t1 = time.perf_counter()
        shown = [message_out(r) for r in rows]
        t2 = time.perf_counter()
        validated = adapter.validate_python(shown)
        t3 = time.perf_counter()
        dumped = adapter.dump_python(validated, mode="json")
        t4 = time.perf_counter()
        json.dumps(dumped, separators=(",", ":"))
        t5 = time.perf_counter()
        for key, a, b in (("SQL", t0, t1), ("message_out", t1, t2), ("validation", t2, t3), ("dump", t3, t4),
                          ("json", t4, t5)):
            times[key].append((b - a) * 1000)
    return {k: round(stats(v)["p50"], 3) for k, v in times.items()}


def active_path(url: str, upstream: Upstream, workdir: Path, args, results: Results) -> None:
    with scratch_database(url, f"bench_branches_{os.getpid()}_path") as db:
        server = AppServer("path", db, upstream.base_url, {}, workdir).start()
        pool = ConnectionPool(db, min_size=1, max_size=1, kwargs=app_conn_kwargs(), open=True)
        try:
            user = new_user()
            sid = precreate_sessions(db, user, "path", 1)[0]
            started = time.perf_counter()

            async def build() -> None:
                d = await _build_branched(server.port, user, sid, args.path_turns, args.branches)
                await d.close()

            asyncio.run(build())
            with connect(db) as conn:
                row = conn.execute("select id, message_count, branch_messages from chat_sessions "
                                   "where thread_id = %s", (thread_id(user, sid),)).fetchone()
                stored = conn.execute("select count(*) as n from chat_messages where session_row_id = %s",
                                      (row["id"],)).fetchone()["n"]
                conn.execute("vacuum analyze chat_messages")
                conn.execute("vacuum analyze chat_sessions")
            say(f"path: session of {args.path_turns} turns and {args.branches} branches built in "
                f"{time.perf_counter() - started:.1f}s: {row['message_count']} messages on the path, {stored} stored")
            big = min(1000, row["message_count"])
            limits = [big, min(200, big)] if big > 200 else [big]
            out = asyncio.run(_path_samples(server.port, user, sid, MessageStore(pool), row["id"], limits,
                                            args.samples, warm=20))
            log = server.request_log()
            print(f"\nActive path of a session of {row['message_count']} messages on the path, {stored} stored "
                  f"({args.branches} branches), {args.samples} requests each, interleaved:")
            bare = stats([log[s["rid"]]["duration_ms"] for s in out.pop(0) if s["rid"] in log])
            results.detail("path", "without_messages_server_ms", bare)
            print(f"  without messages (the same GET, no include_messages): server p50 {bare['p50']:.2f} / p95 "
                  f"{bare['p95']:.2f} ms")
            for limit, samples in out.items():
                assert all(s["count"] == s["floor_count"] == limit for s in samples), "a page of the wrong size"
                server_ms = stats([log[s["rid"]]["duration_ms"] for s in samples if s["rid"] in log])
                floor = stats([s["floor_ms"] for s in samples])
                client = stats([s["client_ms"] for s in samples])
                res = {"messages": limit, "server_ms": server_ms, "floor_ms": floor, "client_ms": client,
                       "response_bytes": samples[-1]["bytes"], "with_siblings": samples[-1]["with_siblings"],
                       "path_messages": row["message_count"], "stored_messages": stored}
                results.detail("path", f"messages_limit={limit}", res)
                print(f"  messages_limit={limit}: server p50 {server_ms['p50']:.2f} / p95 {server_ms['p95']:.2f} ms; "
                      f"SQL alone (path_page) p50 {floor['p50']:.2f} / p95 {floor['p95']:.2f} ms; client p50 "
                      f"{client['p50']:.2f} ms; {res['response_bytes'] / 1e3:.0f} KB; {res['with_siblings']} "
                      f"messages with siblings")
            breakdown = stages(MessageStore(pool), row["id"], big, args.samples)
            results.detail("path", "stages_p50_ms", breakdown)
            print(f"  where a {big}-message page's time goes, in this process, p50 of {args.samples} each: "
                  + ", ".join(f"{k} {v:.2f} ms" for k, v in breakdown.items()))
            first = results.details["path"][f"messages_limit={big}"]
            results.target(f"path: GET include_messages of {big} messages ({args.branches} branches), p50 server time",
                           first["server_ms"]["p50"], "ms", "<= 5 ms", first["server_ms"]["p50"] <= 5)
        finally:
            pool.close()
            server.stop()


# --- 3. a turn in a branched session -----------------------------------------------------------


def clone_sessions(conn, src_row_id: int, user: str, prefix: str, n: int) -> list[str]:
    """`n` copies of a session (`prefix`-0 ...), in one statement a table: its row, its thread's
    checkpoint rows, its chat_messages (every branch)."""
    cols = [c for c in data.columns(conn, "chat_sessions") if c not in ("user_id", "session_id", "thread_id")]
    tid = "'user_' || %(user)s || '_business_' || s.business_id || '_session_' || %(prefix)s || '-' || g"
    params = {"user": user, "prefix": prefix, "n": n, "src": src_row_id}
    with conn.transaction():
        src = conn.execute("select thread_id, branch_messages, branch_bytes from chat_sessions where id = %s",
                           (src_row_id,)).fetchone()
        conn.execute(
            f"create temp table copies on commit drop as "
            f"select g, %(prefix)s || '-' || g as session_id, {tid} as thread_id "
            f"from chat_sessions s cross join generate_series(0, %(n)s - 1) g where s.id = %(src)s", params)
        assert thread_id(user, f"{prefix}-0") == conn.execute(
            "select thread_id from copies where g = 0").fetchone()["thread_id"]
        conn.execute(
            f"insert into chat_sessions (user_id, session_id, thread_id, {', '.join(cols)}) "
            f"select %(user)s, c.session_id, c.thread_id, {', '.join('s.' + c for c in cols)} "
            f"from chat_sessions s cross join copies c where s.id = %(src)s", params)
        for table in CHECKPOINT_TABLES:
            tcols = data.columns(conn, table)
            select = ", ".join("c.thread_id" if c == "thread_id" else f"t.{c}" for c in tcols)
            conn.execute(f"insert into {table} ({', '.join(tcols)}) select {select} from {table} t cross join copies c "
                         f"where t.thread_id = %s", (src["thread_id"],))
        mcols = [c for c in data.columns(conn, "chat_messages") if c not in ("session_row_id", "user_id")]
        conn.execute(
            f"insert into chat_messages (session_row_id, user_id, {', '.join(mcols)}) "
            f"select s.id, %(user)s, {', '.join('m.' + c for c in mcols)} "
            f"from chat_messages m cross join copies c join chat_sessions s on s.thread_id = c.thread_id "
            f"where m.session_row_id = %(src)s", params)
        # The rows off the path counted themselves again (the trigger): the copies count as the source.
        conn.execute("update chat_sessions s set branch_messages = %s, branch_bytes = %s "
                     "from copies c where s.thread_id = c.thread_id",
                     (src["branch_messages"], src["branch_bytes"]))
    return [f"{prefix}-{g}" for g in range(n)]


async def _templates(port: int, user: str, history: int, edits: int) -> tuple[str, str, str]:
    """A linear session and a branched one with the same active path (`history` + 1 turns): the
    branched one has `edits` edits of its middle turn's user message, then a switch back and a
    turn (which rebuilds the model's memory from the path). Returns their ids and the id of the
    middle user message (the edit turns edit it)."""
    linear, branched = Driver(port, user, "tpl-linear"), Driver(port, user, "tpl-branched")
    try:
        for k in range(1, history + 1):
            await linear.turn(k, 40)
            await branched.turn(k, 40)
        for j in range(edits):
            await branched.edit(branched.user_ids[history // 2], 3000 + j)
        await branched.switch(branched.reply_ids[-1])
        await linear.turn(history + 1, 40)
        await branched.turn(history + 1, 40)
        return linear.sid, branched.sid, linear.user_ids[history // 2]
    finally:
        await linear.close()
        await branched.close()


class Cpu:
    """CPU seconds so far of the server's processes and of the PostgreSQL backends connected to
    its database (the app's pool; not this reader's own): the machine's other databases (a test
    suite running beside) and PostgreSQL's background processes (the WAL writer's share of a
    commit) are not counted."""

    def __init__(self, server: AppServer, db_url: str) -> None:
        self.server = server
        self.conn = connect(db_url)

    def read(self) -> tuple[dict[int, float], dict[int, float]]:
        pids = [r["pid"] for r in self.conn.execute(
            "select pid from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()")]
        return cpu_by_pid(self.server.pids()), cpu_by_pid(pids)

    @staticmethod
    def used(before, after) -> tuple[float, float]:
        """(server, PostgreSQL) CPU seconds in between; a backend that connected meanwhile counts from its start."""
        return (cpu_delta(before[0], after[0]), sum(after[1][p] - before[1].get(p, 0.0) for p in after[1]))


async def _measured_turns(port: int, user: str, jobs: list[tuple[str, str, str | None]], cpu: Cpu | None) -> list[dict]:
    """Each job: (kind, session id, message to edit or None), one after another, each on a new
    connection; with `cpu`, the CPU each one used."""
    out = []
    for i, (kind, sid, edit_of) in enumerate(jobs):
        conn = Connection(HOST, port, auth(user))
        before = cpu.read() if cpu else None
        try:
            query = chat_query(0, 40, 0, f"{kind}{i}")
            if edit_of is None:
                o = await _stream(conn, STREAM_PATH, {"session_id": sid, "query": query})
            else:
                o = await _stream(conn, f"{SESSIONS}/{sid}/messages/{edit_of}/edit", {"query": query})
        finally:
            await conn.close()
        if cpu:
            # The turn's end (its count, its run's row) is written before `done` is sent; the
            # server's CPU after it (closing the connection) is a few microseconds.
            o["server_s"], o["postgres_s"] = Cpu.used(before, cpu.read())
        out.append({**o, "kind": kind})
    return out


def turns(url: str, upstream: Upstream, workdir: Path, args, results: Results) -> None:
    kinds = ("linear", "branched", "edit")
    n, warm = args.turn_count, min(10, args.turn_count)
    with scratch_database(url, f"bench_branches_{os.getpid()}_turns") as db:
        server = AppServer("turns", db, upstream.base_url, {}, workdir).start()
        try:
            user = new_user()
            with connect(db) as conn:
                for name in ("tpl-linear", "tpl-branched"):
                    conn.execute("insert into chat_sessions (user_id, business_id, session_id, thread_id, "
                                 "session_name, name_source) values (%s, %s, %s, %s, 'Turn bench', 'user')",
                                 (user, BUSINESS, name, thread_id(user, name)))
            lin_sid, br_sid, middle = asyncio.run(_templates(server.port, user, args.turn_history, 10))
            started = time.perf_counter()
            with connect(db) as conn:
                ids = {r["session_id"]: r["id"] for r in conn.execute(
                    "select session_id, id from chat_sessions where user_id = %s", (user,)).fetchall()}
                tpl = {"linear": ids[lin_sid], "branched": ids[br_sid], "edit": ids[lin_sid]}
                copies = {k: clone_sessions(conn, tpl[k], user, k, warm + n) for k in kinds}
                shape = {k: conn.execute("select message_count, branch_messages from chat_sessions where id = %s",
                                         (tpl[k],)).fetchone() for k in kinds}
                # Vacuumed and checkpointed (bench.data.settle without its wait for a quiet machine:
                # the PostgreSQL CPU counted here is this database's backends only).
                for table in ("chat_sessions", "chat_messages", *CHECKPOINT_TABLES):
                    conn.execute(f"vacuum (analyze) {table}")
                try:
                    conn.execute("checkpoint")
                except psycopg.Error:  # not a superuser (BENCH_DATABASE_URL)
                    pass
            say(f"turns: {len(kinds)} x {warm + n} copies in {time.perf_counter() - started:.1f}s; "
                + ", ".join(f"{k}: {v['message_count']} on the path + {v['branch_messages']} in branches"
                            for k, v in shape.items()))

            def job(kind: str, i: int) -> tuple[str, str, str | None]:
                return kind, copies[kind][i], middle if kind == "edit" else None

            asyncio.run(_measured_turns(server.port, user, [job(k, i) for i in range(warm) for k in kinds], None))
            # Interleaved turn by turn, the order turning each time (L B E, B E L, E L B, ...), so a
            # busier moment of the machine falls on every kind alike.
            jobs = [job(kinds[(i + j) % 3], warm + i) for i in range(n) for j in range(3)]
            cpu = Cpu(server, db)
            try:
                out = asyncio.run(_measured_turns(server.port, user, jobs, cpu))
            finally:
                cpu.conn.close()
            print(f"\nTurns back to back, 40-token replies, each in a copy of its own, {n} of each kind interleaved, "
                  f"production command:")
            per: dict[str, dict] = {}
            for kind in kinds:
                mine = [o for o in out if o["kind"] == kind]
                ok = [o for o in mine if o["ok"]]
                totals = [(o["server_s"] + o["postgres_s"]) * 1000 for o in mine]
                mean = statistics.fmean(totals)
                per[kind] = {
                    "server_cpu_ms": statistics.fmean(o["server_s"] for o in mine) * 1000,
                    "postgres_cpu_ms": statistics.fmean(o["postgres_s"] for o in mine) * 1000,
                    "total_cpu_ms": mean,
                    # /proc counts CPU in 10 ms ticks: a turn's reading is coarse, their mean is not biased.
                    "total_cpu_ms_standard_error": (statistics.stdev(totals) / len(totals) ** 0.5
                                                    if len(totals) > 1 else 0.0),
                    "ttft_ms": stats([o["ttft_ms"] for o in ok]), "ok": len(ok), "turns": len(mine),
                    "path_messages": shape[kind]["message_count"], "branch_messages": shape[kind]["branch_messages"],
                    "errors": [o["error"] for o in mine if not o["ok"]][:3],
                }
                p = per[kind]
                print(f"  {kind:>9}: server {p['server_cpu_ms']:.2f} + PostgreSQL {p['postgres_cpu_ms']:.2f} = "
                      f"{p['total_cpu_ms']:.2f} ms/turn (standard error {p['total_cpu_ms_standard_error']:.2f}); "
                      f"first token p50 {p['ttft_ms']['p50']:.2f} ms; {p['ok']} of {p['turns']} ok")
            added = per["branched"]["total_cpu_ms"] - per["linear"]["total_cpu_ms"]
            error = (per["branched"]["total_cpu_ms_standard_error"] ** 2
                     + per["linear"]["total_cpu_ms_standard_error"] ** 2) ** 0.5
            edit_added = per["edit"]["total_cpu_ms"] - per["linear"]["total_cpu_ms"]
            print(f"  a turn in the branched session adds {added:+.2f} ms (server + PostgreSQL CPU; standard error "
                  f"{error:.2f}) over one in the linear session; a turn that starts a branch (edit) "
                  f"{edit_added:+.2f} ms")
            results.detail("turns", "per_kind", per)
            results.detail("turns", "added_ms", {"branched": added, "branched_standard_error": error,
                                                 "edit": edit_added})
            results.detail("turns", "history_turns", args.turn_history + 1)
            results.target("turns: a turn in a branched session, added server + PostgreSQL CPU over a linear one",
                           added, "ms", "<= 1 ms",
                           added <= 1 and all(per[k]["ok"] == per[k]["turns"] for k in kinds))
        finally:
            server.stop()


# --- main --------------------------------------------------------------------------------------

PARTS = {"storage": storage, "path": active_path, "turns": turns}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.branches", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="storage,path,turns", help="comma-separated: storage, path, turns")
    parser.add_argument("--turns", type=int, default=100, help="storage: turns of the linear session")
    parser.add_argument("--edits", type=int, default=10, help="storage: edits of one message")
    parser.add_argument("--edit-at", type=int, default=50, help="storage: the turn whose message is edited")
    parser.add_argument("--path-turns", type=int, default=500, help="path: turns on the active path")
    parser.add_argument("--branches", type=int, default=50, help="path: branches off it")
    parser.add_argument("--samples", type=int, default=200, help="path: requests per page size")
    parser.add_argument("--turn-history", type=int, default=20, help="turns: turns in each session before")
    parser.add_argument("--turn-count", type=int, default=300, help="turns: measured turns per kind")
    args = parser.parse_args()
    args.edit_at = min(args.edit_at, args.turns)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    if unknown := [p for p in parts if p not in PARTS]:
        parser.error(f"unknown part(s): {', '.join(unknown)}")
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
    checkout_of(Path(__file__).resolve().parent.parent)
    workdir = Path(tempfile.mkdtemp(prefix="bench-branches-"))
    url, where = server_url()
    with connect(url) as conn:
        version = conn.execute("show server_version").fetchone()["server_version"]
    results = Results(quick=False)
    started = time.perf_counter()
    upstream = Upstream(workdir).start()
    try:
        for part in parts:
            PARTS[part](url, upstream, workdir, args, results)
    finally:
        upstream.stop()
    print(f"\nlogs: {workdir}")
    print(json.dumps({"machine": machine_info(version), "database": where, "args": vars(args),
                      "duration_s": round(time.perf_counter() - started, 1), "rows": results.rows,
                      "details": results.details}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

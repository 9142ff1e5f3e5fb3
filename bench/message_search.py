"""Search inside conversations (issue 29) at scale: one user's 1,000,000 messages among 5,000,000.

    .venv/bin/python -m bench.message_search [--server URL] [--messages 5000000] [--user-messages 1000000]
                                             [--samples 50] [--keep] [--database NAME] [--no-http]

Needs a PostgreSQL with contrib (pg_trgm, btree_gin), so by default the machine's server
(postgresql://postgres@127.0.0.1:5432/postgres, or BENCH_DATABASE_URL), not the embedded one.
A report of numbers; nothing here is a test.

1. Data, in a database of its own (`bench_msgsearch_<pid>`, dropped at the end unless --keep;
   --database NAME reuses one kept before and skips the load): sessions of 100 messages (user and
   assistant in turn, a minute apart, each session starting at a random time of the past year),
   the user's 10,000 sessions among 50,000 (the others' spread over 2,000 users). The text is
   sentences from a pool of 200,000, each of 5-15 words drawn by Zipf's law (s = 1) from 30,000
   made-up words (a few real ones at known ranks, so the cases can name them; one collocation,
   "property valuation", put in 1 sentence in 200), a user message 1-2 sentences, a reply 2-6;
   3% of messages are Japanese/Chinese text without spaces. Every user shares the vocabulary.
   Loaded by COPY with the search trigger on (it writes each row's tsvector), the indexes of
   chat_messages other than its primary key dropped first and built after (timed), then
   VACUUM ANALYZE. Reports the load's times and the size of the table, its TOAST and each index,
   per million messages.
2. Each case's first page (limit 20) through SearchService.search in-process (the SQL and the
   snippets) and GET /api/llm/search on the production server (`make serve`'s command; server time
   is the duration_ms the app logs for the request), order=rank and order=recent, the cases
   interleaved, p50/p95 of --samples after 5 warm-ups; then the session-name search
   (GET /api/llm/sessions?q=, SessionStore.list_page) on the same data, side by side.
3. Write cost: a turn's two rows inserted (one transaction, committed) into two copies of
   chat_messages holding the same 200,000 rows, one with sql/027's trigger and three indexes and
   one without, alternating; the difference is what the search index adds to a turn, plus the
   GIN pending lists' cleanup (gin_clean_pending_list after the run) spread over the turns.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from backend.auth.service import AuthUser
from backend.db import apply_migrations, setup_checkpointer
from backend.search import store as search_store
from backend.search.service import SearchService
from backend.search.store import SearchStore
from backend.sessions.store import SessionStore
from bench.common import AppServer, make_token, pct

DEFAULT_SERVER = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
USER = "5f0c9a52-6b8e-4d1e-9d47-4a1f3c2b9e01"
BUSINESS = "bench-biz"
PER_SESSION = 100
OTHER_USERS = 2_000
VOCABULARY = 30_000
SENTENCES = 200_000
PAGE = 20
NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)

# Real words at known ranks of the Zipf vocabulary (rank 0 is the most common word).
ANCHORS = {10: "property", 300: "valuation", 2_000: "mortgage", 25_000: "quokka"}
PHRASE = ("property", "valuation")
CJK_WORDS = ("東京 天気 今日 明日 会議 資料 確認 予定 時間 問題 説明 質問 回答 方法 結果 必要 可能 情報 内容 "
             "場合 利用 設定 変更 作成 開発 機能 文章 翻訳 日本語 中文 学习 工作 我们 你们 数据 分析 系统 "
             "模型 训练 报告 旅行 酒店 价格 银行 税金 家族 料理 野菜 電車 駅 空港 天气 北京 上海 大阪").split()
CJK_PARTICLES = "の は を に が で と も から まで 的 了 在 和 是".split()


def args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.message_search", description=__doc__.split("\n")[0])
    p.add_argument("--server", default=DEFAULT_SERVER, help="a PostgreSQL server with contrib (its maintenance db)")
    p.add_argument("--messages", type=int, default=5_000_000)
    p.add_argument("--user-messages", type=int, default=1_000_000)
    p.add_argument("--samples", type=int, default=50)
    p.add_argument("--write-turns", type=int, default=1_000)
    p.add_argument("--keep", action="store_true", help="keep the database (print its name) for another run")
    p.add_argument("--database", help="a database kept by --keep: skip the load")
    p.add_argument("--no-http", action="store_true", help="in-process only (no production server)")
    p.add_argument("--skip-write", action="store_true", help="skip the write-cost part")
    p.add_argument("--load-only", action="store_true", help="load (and keep) the database, measure nothing")
    p.add_argument("--json", type=Path, help="write every number here too")
    return p


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- 1. data ------------------------------------------------------------------------------------


def vocabulary(rng: random.Random) -> list[str]:
    onsets = "b c d f g h k l m n p r s t v w z br cl dr fl gr pl st tr".split()
    vowels, codas = "a e i o u ai ea ou".split(), "n r s t l m nd st rk".split()
    made: set[str] = set()
    while len(made) < 2 * VOCABULARY:
        shape = rng.random()
        parts = ((onsets, vowels, codas) if shape < 0.15 else (onsets, vowels, onsets, vowels) if shape < 0.5
                 else (onsets, vowels, onsets, vowels, codas))
        made.add("".join(rng.choice(p) for p in parts))
    words = sorted(made - set(ANCHORS.values()))
    rng.shuffle(words)
    words = words[:VOCABULARY]
    for rank, word in sorted(ANCHORS.items()):
        words.insert(rank, word)
    return words[:VOCABULARY]


def sentence_pool(rng: random.Random, words: list[str]) -> tuple[list[str], list[str]]:
    cum = list(itertools.accumulate(1 / (r + 1) for r in range(len(words))))
    latin = []
    for _ in range(SENTENCES):
        picked = rng.choices(words, cum_weights=cum, k=rng.randint(5, 15))
        if rng.random() < 0.005:
            at = rng.randrange(len(picked))
            picked[at:at + 1] = PHRASE
        latin.append(" ".join(picked).capitalize() + rng.choice(".....?!"))
    cjk_cum = list(itertools.accumulate(1 / (r + 1) for r in range(len(CJK_WORDS))))
    cjk = []
    for _ in range(5_000):
        parts = []
        for w in rng.choices(CJK_WORDS, cum_weights=cjk_cum, k=rng.randint(3, 8)):
            parts += [w, rng.choice(CJK_PARTICLES)]
        cjk.append("".join(parts) + "。")
    return latin, cjk


def load(url: str, total: int, per_user: int) -> dict:
    rng = random.Random(29)
    words = vocabulary(rng)
    latin, cjk = sentence_pool(rng, words)
    sessions = total // PER_SESSION
    user_sessions = per_user // PER_SESSION
    cum = list(itertools.accumulate(1 / (r + 1) for r in range(len(words))))
    out: dict = {"messages": sessions * PER_SESSION, "user_messages": user_sessions * PER_SESSION,
                 "sessions": sessions, "user_sessions": user_sessions}
    year = 365 * 86400 - PER_SESSION * 60
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("set maintenance_work_mem = '1GB'")
        # Every index of chat_messages but its primary key, dropped for the load and built after.
        indexes = conn.execute(
            "select i.indexrelid::regclass::text as name, pg_get_indexdef(i.indexrelid) as def "
            "from pg_index i where i.indrelid = 'chat_messages'::regclass and not i.indisprimary").fetchall()
        for name, _ in indexes:
            conn.execute(f"drop index {name}")
        started = time.perf_counter()
        starts = [NOW - timedelta(seconds=year * rng.random() + PER_SESSION * 60) for _ in range(sessions)]
        owners = [USER if g < user_sessions else f"00000000-0000-4000-8000-{g % OTHER_USERS:012d}"
                  for g in range(sessions)]
        cols = "user_id, business_id, session_id, thread_id, session_name, message_count, last_message_at"
        with conn.cursor().copy(f"copy chat_sessions ({cols}) from stdin") as copy:
            for g in range(sessions):
                name = " ".join(w.title() for w in rng.choices(words, cum_weights=cum, k=rng.randint(3, 5)))
                sid = f"s{g}"
                copy.write_row((owners[g], BUSINESS, sid, f"user_{owners[g]}_business_{BUSINESS}_session_{sid}",
                                name, PER_SESSION, starts[g] + timedelta(seconds=60 * (PER_SESSION - 1))))
        row_ids = {r[1]: r[0] for r in conn.execute("select id, session_id from chat_sessions")}
        out["sessions_s"] = round(time.perf_counter() - started, 1)
        log(f"{sessions:,} sessions in {out['sessions_s']} s; messages...")
        started = time.perf_counter()
        cols = "session_row_id, message_id, parent_id, user_id, role, content, created_at, depth"
        chars = 0
        with conn.cursor().copy(f"copy chat_messages ({cols}) from stdin") as copy:
            for g in range(sessions):
                row_id, owner, start = row_ids[f"s{g}"], owners[g], starts[g]
                parent = ""
                for depth in range(PER_SESSION):
                    role = "user" if depth % 2 == 0 else "assistant"
                    if rng.random() < 0.03:
                        content = "".join(rng.choices(cjk, k=rng.randint(1, 2) if role == "user" else rng.randint(2, 5)))
                    else:
                        content = " ".join(rng.choices(latin, k=rng.randint(1, 2) if role == "user" else rng.randint(2, 6)))
                    chars += len(content)
                    mid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                    copy.write_row((row_id, mid, parent, owner, role, content,
                                    start + timedelta(seconds=60 * depth + rng.random()), depth))
                    parent = mid
                if g % 5_000 == 4_999:
                    log(f"  {(g + 1) * PER_SESSION:,} messages, {time.perf_counter() - started:.0f} s")
        out["copy_s"] = round(time.perf_counter() - started, 1)
        out["avg_chars"] = round(chars / (sessions * PER_SESSION), 1)
        log(f"messages copied in {out['copy_s']} s (the trigger writing each vector); average {out['avg_chars']} "
            f"characters; building {len(indexes)} indexes...")
    # Two at a time (GIN builds are single-threaded), the biggest first.
    out["index_build_s"] = {}
    queue = sorted(indexes, key=lambda i: ("trgm" not in i[0], "search" not in i[0]))
    lock = threading.Lock()

    def builder() -> None:
        with psycopg.connect(url, autocommit=True) as c:
            c.execute("set maintenance_work_mem = '1GB'")
            while True:
                with lock:
                    if not queue:
                        return
                    name, definition = queue.pop(0)
                t = time.perf_counter()
                c.execute(definition)
                out["index_build_s"][name] = round(time.perf_counter() - t, 1)
                log(f"  {name}: {out['index_build_s'][name]} s")

    started = time.perf_counter()
    threads = [threading.Thread(target=builder) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out["indexes_wall_s"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("vacuum analyze chat_sessions")
        conn.execute("vacuum analyze chat_messages")
    out["vacuum_analyze_s"] = round(time.perf_counter() - started, 1)
    log(f"indexes in {out['indexes_wall_s']} s (two at a time), vacuum analyze {out['vacuum_analyze_s']} s")
    return out


def sizes(url: str) -> dict:
    with psycopg.connect(url, autocommit=True) as conn:
        n = conn.execute("select count(*) from chat_messages").fetchone()[0]
        rows = conn.execute("""
            select 'table' as what, pg_relation_size('chat_messages') as bytes
            union all select 'toast', coalesce(pg_relation_size(reltoastrelid), 0) from pg_class
             where oid = 'chat_messages'::regclass
            union all select 'toast index', coalesce(pg_indexes_size(reltoastrelid), 0) from pg_class
             where oid = 'chat_messages'::regclass
            union all select indexrelid::regclass::text, pg_relation_size(indexrelid) from pg_index
             where indrelid = 'chat_messages'::regclass""").fetchall()
    per_million = {what: round(b / 2**20 / (n / 1e6), 1) for what, b in rows}
    return {"messages": n, "mib_per_million": per_million}


# --- 2. searches -------------------------------------------------------------------------------


def pool_for(url: str) -> ConnectionPool:
    # As backend.db builds the app's own pool: autocommit, prepared after 5 uses, a statement timeout.
    return ConnectionPool(url, min_size=1, max_size=2, open=True,
                          kwargs={"autocommit": True, "row_factory": dict_row, "prepare_threshold": 5,
                                  "options": "-c statement_timeout=30000"})


def message_cases(url: str) -> dict[str, str]:
    """label -> q. The fragments are chosen from the data: a 3-letter piece of a common word that is
    no word itself, and one of a rare word (so the trigram index, not the newest messages, finds it)."""
    rng = random.Random(29)
    words = vocabulary(rng)
    known = set(words)

    # Each 3-letter piece that is no word, weighted by how often the words holding it are drawn.
    weight: dict[str, float] = {}
    for rank, w in enumerate(words):
        for piece in {w[i:i + 3] for i in range(len(w) - 2)} - known:
            weight[piece] = weight.get(piece, 0.0) + 1 / (rank + 1)

    def piece(near: float) -> str:  # the piece whose weight is nearest `near` (of the vocabulary's ~10.9)
        return min(sorted(weight), key=lambda p: abs(weight[p] - near))

    return {
        f"common word ({ANCHORS[10]}, rank 10)": ANCHORS[10],
        f"rare word ({ANCHORS[25_000]}, rank 25,000)": ANCHORS[25_000],
        f"mid word ({ANCHORS[2_000]}, rank 2,000)": ANCHORS[2_000],
        f"phrase (\"{' '.join(PHRASE)}\")": f'"{" ".join(PHRASE)}"',
        "two words (property mortgage)": "property mortgage",
        f"3-char substring, common ({piece(0.1)})": piece(0.1),
        f"3-char substring, rare ({piece(1e-4)})": piece(1e-4),
        f"3-char substring, 1 message in 100 ({piece(0.004)})": piece(0.004),
        "CJK substring (天気)": "天気",
        "no match (zqxjv)": "zqxjv",
    }


def match_counts(url: str, cases: dict[str, str]) -> dict[str, dict]:
    """How many of the user's messages each q matches, and how many of the newest WINDOW_ROWS."""
    out = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for label, q in cases.items():
            if q.startswith('"'):
                cond, p = "search_vector @@ phraseto_tsquery('simple', %s)", q.strip('"')
            elif any(ord(ch) > 0x2e80 for ch in q) or label.startswith("3-char") or label.startswith("no match"):
                cond, p = "content ilike %s", f"%{q}%"
            else:
                cond, p = "search_vector @@ plainto_tsquery('simple', %s)", q
            window = (search_store.FRAGMENT_WINDOW_ROWS if cond.startswith("content") and len(q) >= 3
                      else search_store.WINDOW_ROWS)
            total = conn.execute(f"select count(*) from chat_messages where user_id = %s and {cond}",
                                 (USER, p)).fetchone()[0]
            newest = conn.execute(
                f"select count(*) from (select * from chat_messages where user_id = %s "
                f"order by created_at desc nulls last limit {window}) m where {cond}",
                (USER, p)).fetchone()[0]
            out[label] = {"user_matches": total, "in_newest_window": newest, "window": window}
    return out


def name_cases() -> dict[str, str]:
    return {"name: common word (property)": "property", "name: rank 300 (valuation)": "valuation",
            "name: rank 2,000 (mortgage)": "mortgage", "name: phrase (Property Valuation)": "Property Valuation",
            "name: no match (zzz)": "zzz"}


FILTERS = {"session_id": None, "role": None, "include_archived": False, "since": None, "until": None,
           "branch": "all"}


def in_process(url: str, cases: dict[str, str], names: dict[str, str], samples: int) -> dict:
    pool = pool_for(url)
    service = SearchService(SearchStore(pool))
    sessions = SessionStore(pool)
    user = AuthUser(id=USER, business_id=BUSINESS, email=None, via="token")
    times: dict[tuple[str, str], list[float]] = {}
    hits: dict[tuple[str, str], int] = {}
    for i in range(samples + 5):
        for label, q in cases.items():
            for order in ("rank", "recent"):
                t = time.perf_counter()
                found, _ = service.search(user, q, filters=FILTERS, order=order, cursor=None, limit=PAGE)
                ms = (time.perf_counter() - t) * 1000
                if i >= 5:
                    times.setdefault((label, order), []).append(ms)
                hits[(label, order)] = len(found)
        for label, q in names.items():
            t = time.perf_counter()
            rows, matched, _exact = sessions.list_page(USER, include_archived=False, limit=50, search=q)
            ms = (time.perf_counter() - t) * 1000
            if i >= 5:
                times.setdefault((label, "activity"), []).append(ms)
            hits[(label, "activity")] = len(rows)
    pool.close()
    return {f"{label} | {order}": {"p50": pct(v, 50), "p95": pct(v, 95), "hits": hits[(label, order)], "n": len(v)}
            for (label, order), v in times.items()}


def over_http(url: str, cases: dict[str, str], names: dict[str, str], samples: int) -> dict:
    logdir = Path(tempfile.mkdtemp(prefix="bench-msgsearch-"))
    server = AppServer("search", url, "http://127.0.0.1:9/v1", {}, logdir).start()
    rids: dict[tuple[str, str], list[tuple[str, float]]] = {}
    hits: dict[tuple[str, str], int] = {}
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        headers = {"Authorization": f"Bearer {make_token(USER, BUSINESS)}"}

        def get(path: str) -> tuple[str, float, dict]:
            rid = uuid.uuid4().hex
            t = time.perf_counter()
            conn.request("GET", path, headers={**headers, "X-Request-ID": rid})
            r = conn.getresponse()
            body = r.read()
            ms = (time.perf_counter() - t) * 1000
            if r.status != 200:
                raise RuntimeError(f"{path}: {r.status} {body[:300]!r}")
            return rid, ms, json.loads(body)

        from urllib.parse import urlencode
        for i in range(samples + 5):
            for label, q in cases.items():
                for order in ("rank", "recent"):
                    rid, ms, body = get("/api/llm/search?" + urlencode({"q": q, "order": order, "limit": PAGE}))
                    if i >= 5:
                        rids.setdefault((label, order), []).append((rid, ms))
                    hits[(label, order)] = len(body["data"])
            for label, q in names.items():
                rid, ms, body = get("/api/llm/sessions?" + urlencode({"q": q, "limit": 50}))
                if i >= 5:
                    rids.setdefault((label, "activity"), []).append((rid, ms))
                hits[(label, "activity")] = len(body["data"])
        conn.close()
        time.sleep(0.5)
        logged = server.request_log()
    finally:
        server.stop()
    out = {}
    for (label, order), samples_ in rids.items():
        server_ms = [logged[rid]["duration_ms"] for rid, _ in samples_ if rid in logged]
        client_ms = [ms for _, ms in samples_]
        out[f"{label} | {order}"] = {"p50": pct(server_ms, 50), "p95": pct(server_ms, 95),
                                     "client_p50": pct(client_ms, 50), "hits": hits[(label, order)],
                                     "n": len(server_ms)}
    out["_logdir"] = str(logdir)
    return out


# --- 3. write cost ------------------------------------------------------------------------------


SEARCH_INDEXES = ("chat_messages_search_idx", "chat_messages_trgm_idx", "chat_messages_user_recent_idx")


def write_cost(url: str, turns: int, fill: int = 200_000) -> dict:
    rng = random.Random(5)
    words = vocabulary(random.Random(29))
    latin, _ = sentence_pool(random.Random(29), words)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("set maintenance_work_mem = '512MB'")
        indexes = conn.execute(
            "select i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) from pg_index i "
            "where i.indrelid = 'chat_messages'::regclass").fetchall()
        for table in ("wc_with", "wc_without"):
            conn.execute(f"drop table if exists {table}")
            conn.execute(f"create table {table} (like chat_messages including defaults including constraints)")
            conn.execute(f"insert into {table} select * from chat_messages where user_id = %s limit {fill}", (USER,))
            for name, definition in indexes:
                if table == "wc_without" and name in SEARCH_INDEXES:
                    continue
                conn.execute(definition.replace(f"INDEX {name} ON public.chat_messages",
                                                f"INDEX {table}_{name} ON public.{table}"))
            conn.execute(f"vacuum analyze {table}")
        conn.execute("create trigger wc_search_vector before insert or update of content on wc_with "
                     "for each row execute function chat_messages_search_vector()")
        row_ids = [r[0] for r in conn.execute(
            f"select distinct session_row_id from wc_with limit 1000").fetchall()]
    samples: dict[str, list[float]] = {"wc_with": [], "wc_without": []}
    insert = ("insert into {t} (session_row_id, message_id, parent_id, user_id, role, content, created_at, depth) "
              "values (%s, %s, '', %s, 'user', %s, now(), 1000), (%s, %s, %s, %s, 'assistant', %s, now(), 1001)")
    with psycopg.connect(url, autocommit=True) as conn:
        for i in range(turns + 20):
            question = " ".join(rng.choices(latin, k=rng.randint(1, 2)))
            reply = " ".join(rng.choices(latin, k=rng.randint(2, 6)))
            row_id = rng.choice(row_ids)
            order = ("wc_with", "wc_without") if i % 2 == 0 else ("wc_without", "wc_with")
            for table in order:
                q_id, r_id = str(uuid.uuid4()), str(uuid.uuid4())
                t = time.perf_counter()
                with conn.transaction():
                    conn.execute(insert.format(t=table),
                                 (row_id, q_id, USER, question, row_id, r_id, q_id, USER, reply))
                ms = (time.perf_counter() - t) * 1000
                if i >= 20:
                    samples[table].append(ms)
        cleanup = {}
        for name in ("chat_messages_search_idx", "chat_messages_trgm_idx"):
            t = time.perf_counter()
            pages = conn.execute(f"select gin_clean_pending_list('wc_with_{name}')").fetchone()[0]
            cleanup[name] = {"ms": round((time.perf_counter() - t) * 1000, 1), "pages": pages}
        conn.execute("drop table wc_with")
        conn.execute("drop table wc_without")
    with_, without = samples["wc_with"], samples["wc_without"]
    cleanup_per_turn = sum(c["ms"] for c in cleanup.values()) / turns
    return {"turns": turns, "rows_in_each_copy": fill,
            "with_ms": {"p50": pct(with_, 50), "mean": statistics.fmean(with_), "p95": pct(with_, 95)},
            "without_ms": {"p50": pct(without, 50), "mean": statistics.fmean(without), "p95": pct(without, 95)},
            "added_p50_ms": pct(with_, 50) - pct(without, 50),
            "added_mean_ms": statistics.fmean(with_) - statistics.fmean(without),
            "pending_list_cleanup": cleanup, "cleanup_per_turn_ms": cleanup_per_turn}


# --- the run ------------------------------------------------------------------------------------


def report(inproc: dict, http_: dict | None) -> None:
    targets = {"common word": 20, "rare word": 20, "phrase": 20, "3-char substring": 50, "no match": 5,
               "name:": 5}
    print(f"\n{'case | order':62s} {'in-process p50/p95 ms':>22s} {'HTTP server p50/p95 ms':>23s} {'hits':>5s}  target")
    for key, r in inproc.items():
        h = (http_ or {}).get(key)
        target = next((v for k, v in targets.items() if key.startswith(k)), None)
        best = h["p50"] if h else r["p50"]
        mark = "" if target is None else f"<= {target} ms {'yes' if best <= target else 'NO'}"
        hs = f"{h['p50']:8.2f} / {h['p95']:7.2f}" if h else " " * 18
        print(f"{key:62s} {r['p50']:9.2f} / {r['p95']:7.2f}    {hs}   {r['hits']:5d}  {mark}")


def main(argv: list[str] | None = None) -> int:
    args = args_parser().parse_args(argv)
    result: dict = {"started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    name = args.database or f"bench_msgsearch_{os.getpid()}"
    url = make_conninfo(**{**conninfo_to_dict(args.server), "dbname": name})
    with psycopg.connect(args.server, autocommit=True) as conn:
        result["postgres"] = conn.execute("show server_version").fetchone()[0]
        if not args.database:
            conn.execute(f'drop database if exists "{name}" with (force)')
            conn.execute(f'create database "{name}"')
    try:
        if not args.database:
            pool = ConnectionPool(url, min_size=1, max_size=1, open=True,
                                  kwargs={"autocommit": True, "row_factory": dict_row})
            setup_checkpointer(pool)
            apply_migrations(pool)
            pool.close()
            with psycopg.connect(url, autocommit=True) as conn:
                have = {r[0] for r in conn.execute("select extname from pg_extension")}
            if not {"pg_trgm", "btree_gin"} <= have:
                print(f"note: this server lacks {sorted({'pg_trgm', 'btree_gin'} - have)}: not the setup the "
                      "targets are for")
            log(f"loading {args.messages:,} messages ({args.user_messages:,} of one user) into {name}")
            result["load"] = load(url, args.messages, args.user_messages)
            if args.load_only:
                args.keep = True
                print(f"load: {json.dumps(result['load'])}")
                return 0
        result["sizes"] = sizes(url)
        log(f"sizes: {json.dumps(result['sizes'])}")
        cases, names = message_cases(url), name_cases()
        result["matches"] = match_counts(url, cases)
        for label, m in result["matches"].items():
            log(f"  {label}: {m['user_matches']:,} of the user's messages, {m['in_newest_window']} in the newest "
                f"{m['window']:,}")
        log("in-process searches...")
        result["in_process"] = in_process(url, cases, names, args.samples)
        result["http"] = None
        if not args.no_http:
            log("HTTP searches on the production server...")
            result["http"] = over_http(url, cases, names, args.samples)
        report(result["in_process"], result["http"])
        if not args.skip_write:
            log("write cost...")
            result["write"] = write_cost(url, args.write_turns)
            w = result["write"]
            print(f"\nwrite: a turn's two rows, p50 {w['with_ms']['p50']:.3f} ms with the search index / "
                  f"{w['without_ms']['p50']:.3f} without (mean {w['with_ms']['mean']:.3f} / {w['without_ms']['mean']:.3f}): "
                  f"added p50 {w['added_p50_ms']:.3f} ms, mean {w['added_mean_ms']:.3f} ms, + pending-list cleanup "
                  f"{w['cleanup_per_turn_ms']:.3f} ms per turn ({json.dumps(w['pending_list_cleanup'])})")
        print(f"\nsizes (MiB per million messages): {json.dumps(result['sizes']['mib_per_million'])}")
        if "load" in result:
            print(f"load: {json.dumps(result['load'])}")
    finally:
        if args.keep or args.database:
            print(f"database kept: {name} ({url})")
        else:
            with psycopg.connect(args.server, autocommit=True) as conn:
                conn.execute(f'drop database if exists "{name}" with (force)')
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Search (GET /api/llm/sessions?q=) at scale, at the SQL the server runs (SessionStore.list_page):
one user with 100,000 sessions among 500,000, named as auto names are (3-5 Title Case words
from a vocabulary), on a server that has pg_trgm. Creates and drops a database of its own.

    .venv/bin/python -m bench.search_timing postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import random
import statistics
import sys
import time
import uuid

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from backend.db import apply_migrations, setup_checkpointer
from backend.sessions.store import SessionStore

WORDS = ("property valuation highland tax return travel plan recipe ideas budget review contract draft meeting "
         "notes python error kitchen garden invoice summary marketing email lesson physics history essay "
         "weekend alps packing list insurance claim mortgage rates job interview prep birthday party").split()
CASES = {"no search": None, "q=mortgage rates": "mortgage rates", "q=Valuation High": "Valuation High",
         "q=alps": "alps", "q=zzz (no match)": "zzz", "q=ta (2 characters)": "ta"}


def main(server_url: str, per_user: int = 100_000, total: int = 500_000, samples: int = 20) -> None:
    name = f"search_timing_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    url = make_conninfo(**{**conninfo_to_dict(server_url), "dbname": name})
    rng = random.Random(7)
    try:
        # As the app's own pool connects (backend/db.py): statements prepared after 5 uses.
        pool = ConnectionPool(url, min_size=1, max_size=2, open=True,
                              kwargs={"autocommit": True, "row_factory": dict_row, "prepare_threshold": 5})
        setup_checkpointer(pool)
        apply_migrations(pool)
        with psycopg.connect(url, autocommit=True) as conn:
            if not conn.execute("select 1 from pg_indexes where indexname = 'chat_sessions_name_trgm_idx'").fetchone():
                print("note: no pg_trgm on this server, so no trigram index: search runs unindexed")
            columns = "user_id, business_id, session_id, thread_id, session_name"
            with conn.cursor().copy(f"copy chat_sessions ({columns}) from stdin") as copy:
                for g in range(total):
                    user = "u1" if g < per_user else f"o{g % 40_000}"
                    title = " ".join(w.title() for w in rng.sample(WORDS, rng.randint(3, 5)))
                    copy.write_row((user, "b", f"s{g}", f"user_{user}_business_b_session_s{g}", title))
            conn.execute("vacuum analyze chat_sessions")
        store = SessionStore(pool)
        print(f"{per_user:,} sessions of one user among {total:,}; first page of 50, p50 / max of {samples} after 5 warm-ups")
        for label, q in CASES.items():
            times = []
            for _ in range(samples + 5):
                started = time.perf_counter()
                rows, matched = store.list_page("u1", include_archived=False, limit=50, search=q)
                times.append((time.perf_counter() - started) * 1000)
            times = times[5:]
            print(f"  {label:22s} {len(rows):3d} rows, total {matched:7,d}: p50 {statistics.median(times):7.2f} ms, "
                  f"max {max(times):7.2f} ms")
        pool.close()
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'drop database "{name}" with (force)')


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "postgresql://postgres@127.0.0.1:5432/postgres")

"""Search (GET /api/llm/sessions?q=) at scale, at the SQL the server runs (SessionStore.list_page):
one user with 100,000 sessions among 500,000, named as auto names are (3-5 Title Case words), on a
server that has pg_trgm. Two vocabularies, each in a database of its own (created and dropped here):

- narrow: 40 words, so every word is in about 1 name in 10 and every trigram's posting list is long;
  the worst case for a trigram index, and the hardest for a phrase (many names hold both words).
- broad: 5,000 words drawn with Zipf's law (s = 1), as words occur in text: a few very common
  words, a long tail of rare ones.

    .venv/bin/python -m bench.search_timing postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import itertools
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


def broad_words(n: int = 5_000) -> list[str]:
    """n distinct pronounceable words; the 40 real ones spread over the ranks so the cases can name them."""
    rng = random.Random(11)
    onsets = "b c d f g h k l m n p r s t v w z br cl dr fl gr pl st tr".split()
    vowels, codas = "a e i o u ai ea ou".split(), "n r s t l m nd st rk".split()
    made = {"".join(rng.choice(p) for p in (onsets, vowels, onsets, vowels, codas)) for _ in range(3 * n)}
    words = sorted(made - set(WORDS))[: n - len(WORDS)]
    rng.shuffle(words)
    for rank, word in zip(itertools.count(0, n // len(WORDS)), WORDS):  # 'property' most common, then every 125th
        words.insert(rank, word)
    return words[:n]


VOCABULARIES = {
    "narrow": (WORDS, None),
    "broad": (broad_words(), [1 / (rank + 1) for rank in range(5_000)]),
}
CASES = {
    "narrow": {"no search": None, "q=mortgage rates": "mortgage rates", "q=Valuation High": "Valuation High",
               "q=alps": "alps", "q=zzz (no match)": "zzz", "q=ta (2 characters)": "ta",
               "q=tz (2 characters, no match)": "tz"},
    "broad": {"no search": None, "q=property (the most common word)": "property",
              "q=valuation (rank 126)": "valuation", "q=mortgage (rank 4,126)": "mortgage",
              "q=Property Valuation (phrase)": "Property Valuation", "q=zzz (no match)": "zzz",
              "q=ta (2 characters)": "ta", "q=tz (2 characters, no match)": "tz"},
}


def load(conn: psycopg.Connection, vocabulary: str, per_user: int, total: int) -> None:
    words, weights = VOCABULARIES[vocabulary]
    rng = random.Random(7)
    columns = "user_id, business_id, session_id, thread_id, session_name"
    with conn.cursor().copy(f"copy chat_sessions ({columns}) from stdin") as copy:
        for g in range(total):
            user = "u1" if g < per_user else f"o{g % 40_000}"
            k = rng.randint(3, 5)
            picked = rng.sample(words, k) if weights is None else rng.choices(words, weights, k=k)
            copy.write_row((user, "b", f"s{g}", f"user_{user}_business_b_session_s{g}",
                            " ".join(w.title() for w in picked)))
    conn.execute("vacuum analyze chat_sessions")


def run(server_url: str, vocabulary: str, per_user: int, total: int, samples: int) -> None:
    name = f"search_timing_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    url = make_conninfo(**{**conninfo_to_dict(server_url), "dbname": name})
    try:
        # As the app's own pool connects (backend/db.py): statements prepared after 5 uses.
        pool = ConnectionPool(url, min_size=1, max_size=2, open=True,
                              kwargs={"autocommit": True, "row_factory": dict_row, "prepare_threshold": 5})
        setup_checkpointer(pool)
        apply_migrations(pool)
        with psycopg.connect(url, autocommit=True) as conn:
            if not conn.execute("select 1 from pg_indexes where indexname = 'chat_sessions_name_trgm_idx'").fetchone():
                print("note: no pg_trgm on this server, so no trigram index: search runs unindexed")
            load(conn, vocabulary, per_user, total)
        store = SessionStore(pool)
        print(f"{vocabulary} vocabulary: {per_user:,} sessions of one user among {total:,}; first page of 50 and "
              f"its total, p50 / max of {samples} after 5 warm-ups")
        for label, q in CASES[vocabulary].items():
            times = []
            for _ in range(samples + 5):
                started = time.perf_counter()
                rows, matched, exact = store.list_page("u1", include_archived=False, limit=50, search=q)
                times.append((time.perf_counter() - started) * 1000)
            times = times[5:]
            shown = f"{matched:,}" + ("" if exact else "+")
            print(f"  {label:34s} {len(rows):3d} rows, total {shown:>8s}: p50 {statistics.median(times):7.2f} ms, "
                  f"max {max(times):7.2f} ms")
        pool.close()
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'drop database "{name}" with (force)')


def main(server_url: str, per_user: int = 100_000, total: int = 500_000, samples: int = 20) -> None:
    for vocabulary in VOCABULARIES:
        run(server_url, vocabulary, per_user, total, samples)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "postgresql://postgres@127.0.0.1:5432/postgres")

"""GET /api/llm/sessions?q=: a case-insensitive substring of the name, literal, combined with every other
list parameter, one user's sessions only; and the trigram index that serves it where pg_trgm exists."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.helpers import unique_session_id


def make(api, name: str, **extra) -> str:
    sid = unique_session_id()
    r = api.post("/api/llm/sessions", json={"session_id": sid, "session_name": name})
    assert r.status_code == 201, r.get_json()
    if extra:
        assert api.put(f"/api/llm/sessions/{sid}", json=extra).status_code == 200
    return sid


def names(api, query: str) -> list[str]:
    r = api.get(f"/api/llm/sessions?{query}")
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["count"] == len(body["data"])
    return [s["session_name"] for s in body["data"]]


def test_matches_a_substring_of_the_name_in_any_case(api):
    make(api, "Highland Property Valuation")
    make(api, "Lowland farm")
    make(api, "Tax return 2025")
    assert names(api, "q=land") == ["Lowland farm", "Highland Property Valuation"]  # newest activity first
    assert names(api, "q=HIGHLAND") == ["Highland Property Valuation"]
    assert names(api, "q=property%20val") == ["Highland Property Valuation"]
    assert names(api, "q=nothing-like-this") == []
    body = api.get("/api/llm/sessions?q=LAND").get_json()
    assert body["total"] == 2 and body["next_cursor"] is None
    # Non-ASCII text folds case too (the database is UTF-8).
    make(api, "Ärger mit der Steuer")
    assert names(api, f"q={quote('ärger')}") == ["Ärger mit der Steuer"]


def test_wildcards_and_backslashes_are_literal(api):
    make(api, "100% done")
    make(api, "1000 done")
    make(api, "snake_case")
    make(api, "snakeXcase")
    make(api, r"back\slash")
    make(api, "backslash")
    assert names(api, f"q={quote('0%')}") == ["100% done"]
    assert names(api, f"q={quote('%')}") == ["100% done"]
    assert names(api, "q=e_c") == ["snake_case"]
    assert names(api, "q=_") == ["snake_case"]
    assert names(api, f"q={quote(chr(92))}") == [r"back\slash"]
    assert names(api, f"q={quote(chr(92) + 's')}") == [r"back\slash"]


def test_combines_with_archived_filter_and_unread(api):
    make(api, "Report draft")
    make(api, "Report final", is_archived=True)
    make(api, "Unrelated")
    assert names(api, "q=report") == ["Report draft"]
    assert names(api, "q=report&include_archived=true") == ["Report final", "Report draft"]
    assert api.get("/api/llm/sessions?q=report&include_archived=true").get_json()["total"] == 2
    assert names(api, "q=report&unread=true") == []


def test_pages_by_cursor_and_offset_within_the_matches(api):
    for i in range(7):
        make(api, f"Match {i}")
        make(api, f"Other {i}")
    seen, cursor = [], None
    while True:
        query = "q=match&limit=3" + (f"&cursor={cursor}" if cursor else "")
        body = api.get(f"/api/llm/sessions?{query}").get_json()
        assert body["total"] == 7
        seen += [s["session_name"] for s in body["data"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"Match {i}" for i in reversed(range(7))]
    assert names(api, "q=match&limit=3&offset=6") == ["Match 0"]


def test_a_search_counts_its_matches_up_to_a_limit_and_says_so(api, monkeypatch):
    # The limit is 100 in production; three keeps the test small. The count runs in SQL either way.
    monkeypatch.setattr("backend.sessions.store.SEARCH_TOTAL_LIMIT", 3)
    for i in range(4):
        make(api, f"Many {i}")
    for i in range(3):
        make(api, f"Few {i}")
    many = api.get("/api/llm/sessions?q=many&limit=2").get_json()
    assert (many["total"], many["total_exact"], many["count"]) == (3, False, 2)
    for page_size in (3, 50):  # within the limit (page and count in one statement) and past it (two)
        few = api.get(f"/api/llm/sessions?q=few&limit={page_size}").get_json()
        assert (few["total"], few["total_exact"], few["count"]) == (3, True, 3)
    # Beyond the limit the pages still reach every match.
    rest = api.get(f"/api/llm/sessions?q=many&limit=2&cursor={many['next_cursor']}").get_json()
    assert [s["session_name"] for s in many["data"] + rest["data"]] == [f"Many {i}" for i in (3, 2, 1, 0)]
    # A list without a search is always counted exactly.
    everything = api.get("/api/llm/sessions").get_json()
    assert (everything["total"], everything["total_exact"]) == (7, True)


@pytest.mark.parametrize(("newest_rows", "index_rows"), [(1, 500), (2, 500), (3, 500), (1000, 500),
                                                        (1, 1), (1, 3), (2, 4), (3, 5)])
def test_matches_older_than_the_newest_sessions_are_found_and_counted(api, monkeypatch, newest_rows, index_rows):
    # A search first reads the newest sessions (2,000 in production), then what the index finds (500 at
    # most), then walks them all if the index found that many: every split of this data between the
    # three reads gives the same answer.
    monkeypatch.setattr("backend.sessions.store.SEARCH_NEWEST_ROWS", newest_rows)
    monkeypatch.setattr("backend.sessions.store.SEARCH_INDEX_ROWS", index_rows)
    monkeypatch.setattr("backend.sessions.store.SEARCH_TOTAL_LIMIT", 4)
    for i in range(3):
        make(api, f"Old match {i}")
    for i in range(3):
        make(api, f"Newer {i}")
    make(api, "Newest match")
    first = api.get("/api/llm/sessions?q=match&limit=2").get_json()
    assert [s["session_name"] for s in first["data"]] == ["Newest match", "Old match 2"]
    assert (first["total"], first["total_exact"]) == (4, True)
    rest = api.get(f"/api/llm/sessions?q=match&limit=2&cursor={first['next_cursor']}").get_json()
    assert [s["session_name"] for s in rest["data"]] == ["Old match 1", "Old match 0"]
    assert (rest["total"], rest["total_exact"]) == (4, True)
    jumped = api.get("/api/llm/sessions?q=match&limit=2&offset=3").get_json()
    assert [s["session_name"] for s in jumped["data"]] == ["Old match 0"]
    make(api, "One more match")
    assert api.get("/api/llm/sessions?q=match&limit=2").get_json()["total_exact"] is False


@pytest.mark.parametrize("index_rows", [500, 1])
def test_a_search_of_two_characters_finds_old_matches_too(api, monkeypatch, index_rows):
    # Two letters in a row ("q=ol") are looked up in the doubled-name index (sql/015) once the
    # newest sessions hold too few; it drops nothing, and the plain test keeps it exact.
    monkeypatch.setattr("backend.sessions.store.SEARCH_NEWEST_ROWS", 1)
    monkeypatch.setattr("backend.sessions.store.SEARCH_INDEX_ROWS", index_rows)
    for name in ("Old one", "ÄRGER", "ab% off", "abX off", "ab\\c", "abc", "oool", "Newer"):
        make(api, name)
    assert names(api, "q=ol") == ["oool", "Old one"]
    assert api.get("/api/llm/sessions?q=ol").get_json()["total"] == 2
    assert names(api, f"q={quote('är')}") == ["ÄRGER"]
    assert names(api, f"q={quote('ab%')}") == ["ab% off"]
    assert names(api, f"q={quote('ab_')}") == []
    assert names(api, f"q={quote(chr(92) + chr(92))}") == []  # a doubled backslash matches only two of them
    assert names(api, f"q={quote('ab' + chr(92))}") == ["ab\\c"]
    assert names(api, "q=oo") == ["oool"]


def test_a_search_without_two_letters_in_a_row_finds_old_matches_too(api, monkeypatch):
    # Nothing any index can look up ("q=o"): the walk through the newest sessions is not bounded.
    monkeypatch.setattr("backend.sessions.store.SEARCH_NEWEST_ROWS", 1)
    make(api, "Old one")
    make(api, "Newer")
    make(api, "Latest")
    assert names(api, "q=o") == ["Old one"]
    assert api.get("/api/llm/sessions?q=o").get_json()["total"] == 1


def test_only_the_callers_sessions(api, bob_api):
    make(api, "Shared word alpha")
    make(bob_api, "Shared word bravo")
    assert names(api, "q=shared") == ["Shared word alpha"]
    assert names(bob_api, "q=shared") == ["Shared word bravo"]
    assert names(bob_api, "q=alpha") == []


def test_empty_q_is_no_filter(api):
    make(api, "One")
    make(api, "Two")
    assert names(api, "q=") == ["Two", "One"]


@pytest.mark.parametrize("q", ["x" * 201, "tab%09here", "nul%00", "bell%07"])
def test_bad_q_is_a_400_in_the_error_shape(api, q):
    r = api.get(f"/api/llm/sessions?q={q}")
    assert r.status_code == 400
    body = r.get_json()
    assert body["success"] is False and body["error"]["code"] == "validation_error"
    assert "q" in body["error"]["fields"]


def test_longest_q_is_accepted(api):
    name = "y" * 200
    make(api, name)
    assert names(api, f"q={name}") == [name]


def test_trigram_index_serves_search_where_pg_trgm_exists(pool):
    with pool.connection() as conn:
        available = conn.execute("select 1 from pg_available_extensions where name = 'pg_trgm'").fetchone()
        index = conn.execute(
            "select indexdef from pg_indexes where tablename = 'chat_sessions' and indexname = 'chat_sessions_name_trgm_idx'"
        ).fetchone()
        if not available:
            assert index is None  # the migration notes it and goes on: search works unindexed
            pytest.skip("this PostgreSQL has no pg_trgm (the embedded one ships without contrib)")
        assert index is not None and "gin_trgm_ops" in index["indexdef"]
        schema = conn.execute("select extnamespace::regnamespace::text as s from pg_extension "
                              "where extname = 'pg_trgm'").fetchone()["s"]
        assert schema != "public"  # out of the schema Supabase's Data API exposes
        with conn.transaction():
            conn.execute("set local enable_seqscan = off")
            plan = "\n".join(r["QUERY PLAN"] for r in conn.execute(
                "explain select id from chat_sessions where session_name ilike %s", ("%highland%",)))
        assert "chat_sessions_name_trgm_idx" in plan


def test_two_character_index_serves_search_where_pg_trgm_exists(pool):
    from backend.sessions.store import PAIR_PATTERN, PAIR_SEARCH_EXPRESSION

    with pool.connection() as conn:
        index = conn.execute("select indexdef from pg_indexes where tablename = 'chat_sessions' "
                             "and indexname = 'chat_sessions_name_pairs_idx'").fetchone()
        if not conn.execute("select 1 from pg_extension where extname = 'pg_trgm'").fetchone():
            assert index is None
            pytest.skip("this PostgreSQL has no pg_trgm (the embedded one ships without contrib)")
        assert index is not None
        with conn.transaction():
            conn.execute("set local enable_seqscan = off")
            plan = "\n".join(r["QUERY PLAN"] for r in conn.execute(
                f"explain select id from chat_sessions where {PAIR_SEARCH_EXPRESSION} like {PAIR_PATTERN}",
                {"search": "Tz"}, prepare=False))
        assert "chat_sessions_name_pairs_idx" in plan and "ttzz" in plan

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

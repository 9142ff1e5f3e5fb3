"""A list's `total` and the session quota read chat_session_counts (sql/014), kept by triggers: it must
equal a count of the rows after every kind of write, whoever makes it, and count the rows that were
there before the migration."""

from __future__ import annotations

from backend.db import apply_migrations
from tests.helpers import database_before, unique_session_id


def totals(api) -> tuple[int, int]:
    """(active, all) as the list reports them."""
    active = api.get("/api/llm/sessions").get_json()["total"]
    everything = api.get("/api/llm/sessions?include_archived=true").get_json()["total"]
    return active, everything


def counted(pool, user_id: str) -> tuple[int, int]:
    with pool.connection() as conn:
        row = conn.execute("select count(*) filter (where not is_archived) as active, count(*) as every "
                           "from chat_sessions where user_id = %s", (user_id,)).fetchone()
    return row["active"], row["every"]


def test_totals_follow_creates_archives_deletes_and_restores(api, alice, pool):
    assert totals(api) == (0, 0)
    sids = [unique_session_id() for _ in range(3)]
    for sid in sids:
        assert api.post("/api/llm/sessions", json={"session_id": sid}).status_code == 201
    assert api.post("/api/llm/sessions", json={"session_id": sids[0]}).status_code == 200  # a retry adds nothing
    assert totals(api) == (3, 3)
    assert api.put(f"/api/llm/sessions/{sids[1]}", json={"is_archived": True}).status_code == 200
    assert api.put(f"/api/llm/sessions/{sids[1]}", json={"is_archived": True}).status_code == 200  # no change
    assert api.put(f"/api/llm/sessions/{sids[1]}", json={"session_name": "Renamed"}).status_code == 200
    assert totals(api) == (2, 3)
    deleted = api.delete(f"/api/llm/sessions/{sids[1]}?backup=true")
    assert deleted.status_code == 200
    assert totals(api) == (2, 2)
    restored = api.post("/api/llm/sessions/restore", json={"backup_id": deleted.get_json()["backup"]["backup_id"]})
    assert restored.status_code == 201
    assert totals(api) == (2, 3) == counted(pool, alice.id)
    assert api.put(f"/api/llm/sessions/{sids[1]}", json={"is_archived": False}).status_code == 200
    assert api.delete(f"/api/llm/sessions/{sids[2]}").status_code == 200
    assert totals(api) == (2, 2) == counted(pool, alice.id)


def test_totals_follow_writes_made_outside_the_backend(api, alice, bob, bob_api, pool):
    # As an operator would in the Supabase dashboard: rows inserted, moved between users, archived, deleted.
    with pool.connection() as conn:
        for i in range(4):
            conn.execute("insert into chat_sessions (user_id, business_id, session_id, thread_id, is_archived) "
                         "values (%s, 'b', %s, %s, %s)", (alice.id, f"op-{i}", f"op-thread-{alice.id}-{i}", i == 0))
    assert totals(api) == (3, 4)
    with pool.connection() as conn:
        conn.execute("update chat_sessions set user_id = %s, is_archived = false where user_id = %s and session_id "
                     "in ('op-0', 'op-1')", (bob.id, alice.id))
        conn.execute("update chat_sessions set is_archived = true where user_id = %s and session_id = 'op-2'",
                     (alice.id,))
    assert totals(api) == (1, 2) == counted(pool, alice.id)
    assert totals(bob_api) == (2, 2) == counted(pool, bob.id)
    with pool.connection() as conn:
        conn.execute("delete from chat_sessions where user_id in (%s, %s)", (alice.id, bob.id))
    assert totals(api) == (0, 0) and totals(bob_api) == (0, 0)


def test_the_migration_counts_existing_sessions_and_truncate_empties_the_counts(server_url, tmp_path):
    with database_before(server_url, tmp_path, "014") as pool:
        with pool.connection() as conn:
            conn.execute("insert into chat_sessions (user_id, business_id, session_id, thread_id, is_archived) "
                         "select 'u' || (g % 3), 'b', 's' || g, 't' || g, g % 4 = 0 from generate_series(1, 50) g")
        assert "014_session_counts" in apply_migrations(pool)
        with pool.connection() as conn:
            kept = conn.execute("select user_id, sessions, archived from chat_session_counts order by 1").fetchall()
            actual = conn.execute("select user_id, count(*) as sessions, count(*) filter (where is_archived) "
                                  "as archived from chat_sessions group by 1 order by 1").fetchall()
            assert kept == actual and len(kept) == 3
            conn.execute("truncate chat_sessions cascade")
            assert conn.execute("select count(*) as n from chat_session_counts").fetchone()["n"] == 0

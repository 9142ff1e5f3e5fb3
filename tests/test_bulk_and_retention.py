"""Bulk deletes (by ids or by filter) and retention (the purge command and the periodic upkeep)."""

from __future__ import annotations

import pytest

from backend.chat.maintenance import RETENTION_BATCH
from backend.services import services_of
from tests.chat_support import named_session, send, turn
from tests.checkpoints import NO_ROWS, rows_digest, thread_row_counts
from tests.helpers import client_for, unique_session_id


def insert_sessions(pool, user, n: int, *, prefix: str, archived: bool = False, days_old: int = 0) -> list[str]:
    sids = [f"{prefix}-{i}-{unique_session_id()}" for i in range(n)]
    with pool.connection() as conn, conn.cursor() as cur:
        cur.executemany(
            "insert into chat_sessions (user_id, business_id, session_id, thread_id, is_archived, created_at) "
            "values (%s, %s, %s, %s, %s, now() - make_interval(days => %s))",
            [(user.id, user.business_id, sid, user.thread_id(sid), archived, days_old) for sid in sids],
        )
    return sids


def sessions_of(pool, user) -> set[str]:
    with pool.connection() as conn:
        return {r["session_id"] for r in conn.execute("select session_id from chat_sessions where user_id = %s",
                                                      (user.id,))}


@pytest.fixture(scope="module")
def patient_chat_app(module_make_app, fake_model):
    """The chat app with a model read timeout that outlasts a 1,000-session bulk delete on a
    slow machine: the reply held at the fake upstream must still be in progress when the
    bulk reaches its session (with the shared app's 2 s it timed out under load)."""
    return module_make_app(openai_base_url=fake_model.base_url, openai_api_key="test-key",
                           openai_model="fake-chat", naming_model="fake-naming", openai_timeout_seconds=120)


def test_bulk_delete_of_1000_ids_mixed_owners_and_busy(patient_chat_app, fake, alice, bob, pool):
    chat = client_for(patient_chat_app, alice)
    mine = insert_sessions(pool, alice, 990, prefix="bulk")
    busy = named_session(chat)
    with_memory = named_session(chat)
    turn(chat, with_memory, "remember me")
    bobs = insert_sessions(pool, bob, 7, prefix="bob")
    with pool.connection() as conn:
        bob_before = rows_digest(conn, "select * from chat_sessions where user_id = %s", bob.id)
    ids = [*mine, busy, with_memory, *bobs, "never-existed"]
    assert len(ids) == 1000
    with fake.hold_streams() as gate:
        streaming = send(chat, busy, "hold on", buffered=False)
        assert gate.wait_for_held(1)
        r = chat.post("/api/llm/sessions/bulk-delete", json={"session_ids": ids, "backup": True})
        gate.release()
        streaming.get_data()
        streaming.close()
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    status = {x["session_id"]: x["status"] for x in body["results"]}
    assert [x["session_id"] for x in body["results"]] == ids  # in the order asked
    assert {status[s] for s in mine} == {"deleted"} and status[with_memory] == "deleted"
    assert status[busy] == "busy"
    assert {status[s] for s in bobs} == {"not_found"} and status["never-existed"] == "not_found"
    assert body["deleted_count"] == 991 and body["more"] is False
    result = next(x for x in body["results"] if x["session_id"] == with_memory)
    assert result["deleted"]["checkpoints"] >= 1 and set(result["backup"]) == {"backup_id", "expires_at"}
    assert "deleted" not in next(x for x in body["results"] if x["session_id"] == busy)
    assert thread_row_counts(pool, alice.thread_id(with_memory)) == NO_ROWS
    assert sessions_of(pool, alice) & set(ids) == {busy}
    with pool.connection() as conn:
        assert rows_digest(conn, "select * from chat_sessions where user_id = %s", bob.id) == bob_before
        audits = conn.execute("select count(*) as n from session_deletions where user_id = %s and action = 'delete' "
                              "and session_id like 'bulk-%%'", (alice.id,)).fetchone()["n"]
    assert audits == 990  # one audit row each, as single deletes

    # Safe to retry: what went is not_found now; the busy one is free and goes.
    again = chat.post("/api/llm/sessions/bulk-delete", json={"session_ids": [mine[0], busy]}).get_json()
    assert [x["status"] for x in again["results"]] == ["not_found", "deleted"]


def test_bulk_delete_by_filter_takes_the_oldest_1000_and_says_more(chat, alice, pool):
    old_archived = insert_sessions(pool, alice, 1001, prefix="arch", archived=True, days_old=40)
    recent_archived = insert_sessions(pool, alice, 2, prefix="newarch", archived=True)
    active = insert_sessions(pool, alice, 3, prefix="live", days_old=40)
    r = chat.post("/api/llm/sessions/bulk-delete", json={"filter": {"archived": True, "inactive_days": 30}})
    body = r.get_json()
    assert r.status_code == 200 and body["deleted_count"] == 1000 and body["more"] is True
    left = sessions_of(pool, alice)
    assert len(left & set(old_archived)) == 1 and set(recent_archived) <= left and set(active) <= left
    r = chat.post("/api/llm/sessions/bulk-delete", json={"filter": {"archived": True, "inactive_days": 30}})
    assert r.get_json()["deleted_count"] == 1 and r.get_json()["more"] is False
    r = chat.post("/api/llm/sessions/bulk-delete", json={"filter": {"inactive_days": 30}})
    assert r.get_json()["deleted_count"] == 3  # the unarchived old ones
    assert sessions_of(pool, alice) == set(recent_archived)


@pytest.mark.parametrize("body", [
    {},
    {"session_ids": []},
    {"session_ids": ["a"] * 1001},
    {"session_ids": ["../x"]},
    {"session_ids": ["a"], "filter": {"archived": True}},
    {"filter": {}},
    {"filter": {"inactive_days": 0}},
    {"filter": {"archived": "yes"}},
    {"session_ids": ["a"], "extra": True},
])
def test_bad_bulk_requests_are_400_and_touch_nothing(chat, alice, pool, body):
    insert_sessions(pool, alice, 2, prefix="keep")
    before = sessions_of(pool, alice)
    r = chat.post("/api/llm/sessions/bulk-delete", json=body)
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "validation_error", r.get_json()
    assert sessions_of(pool, alice) == before


def test_purge_command_dry_run_first_then_for_real(chat_app, alice, bob, pool):
    stale = insert_sessions(pool, alice, 5, prefix="stale", days_old=100)
    stale_archived = insert_sessions(pool, bob, 2, prefix="stalearch", archived=True, days_old=100)
    fresh = insert_sessions(pool, alice, 2, prefix="fresh", days_old=1)
    runner = chat_app.test_cli_runner()
    before_alice, before_bob = sessions_of(pool, alice), sessions_of(pool, bob)

    dry = runner.invoke(args=["purge-sessions", "--inactive-days", "90", "--user-id", alice.id, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "dry run: 5 session(s) would be deleted" in dry.output
    assert all(sid in dry.output for sid in stale)
    assert sessions_of(pool, alice) == before_alice

    archived_only = runner.invoke(args=["purge-sessions", "--inactive-days", "90", "--archived-only"])
    assert archived_only.exit_code == 0, archived_only.output
    assert not set(stale_archived) & sessions_of(pool, bob) and set(stale) <= sessions_of(pool, alice)

    real = runner.invoke(args=["purge-sessions", "--inactive-days", "90", "--user-id", alice.id])
    assert real.exit_code == 0 and "deleted 5 session(s)" in real.output, real.output
    assert sessions_of(pool, alice) == before_alice - set(stale)
    assert set(fresh) <= sessions_of(pool, alice)
    assert sessions_of(pool, bob) == before_bob - set(stale_archived)


def test_the_upkeep_applies_retention_to_sessions_and_audit_rows(make_app, alice, pool):
    app = make_app(retention_inactive_days=30, audit_retention_days=7)
    stale = insert_sessions(pool, alice, 3, prefix="upkeep", days_old=31)
    keep = insert_sessions(pool, alice, 1, prefix="upkeep-keep", days_old=29)
    with pool.connection() as conn:
        conn.execute("insert into session_deletions (user_id, business_id, session_id, thread_id, had_session_row, "
                     "rows_deleted, deleted_at) values (%s, 'b', 'old-audit', 't', true, '{}', now() - interval '8 days')",
                     (alice.id,))
    services_of(app).maintenance.run_once(sweep=False)
    left = sessions_of(pool, alice)
    assert not set(stale) & left and set(keep) <= left
    with pool.connection() as conn:
        assert conn.execute("select count(*) as n from session_deletions where session_id = 'old-audit'"
                            ).fetchone()["n"] == 0
        # the retention deletes wrote their own (fresh) audit rows, which stay
        assert conn.execute("select count(*) as n from session_deletions where user_id = %s and session_id like "
                            "'upkeep-%%'", (alice.id,)).fetchone()["n"] == 3


def test_once_nothing_is_due_retention_looks_again_only_after_its_recheck(make_app, alice, pool):
    maintenance = services_of(make_app(retention_inactive_days=30)).maintenance
    while (report := maintenance.apply_retention()).sessions + report.busy >= RETENTION_BATCH:
        pass  # other tests' old sessions, a batch at a time, until a pass clears the backlog
    stale = insert_sessions(pool, alice, 2, prefix="recheck", days_old=31)
    assert maintenance.apply_retention() is None  # no walk over every session each pass
    assert set(stale) <= sessions_of(pool, alice)

    maintenance.retention_recheck_seconds = 0  # the hour has passed
    assert maintenance.apply_retention().sessions >= 2
    assert not set(stale) & sessions_of(pool, alice)


def test_another_users_bulk_delete_by_filter_never_reaches_mine(chat_app, alice, bob, pool):
    mine = insert_sessions(pool, alice, 3, prefix="mine", archived=True, days_old=50)
    r = client_for(chat_app, bob).post("/api/llm/sessions/bulk-delete", json={"filter": {"archived": True}})
    assert r.status_code == 200 and r.get_json()["deleted_count"] == 0
    assert set(mine) <= sessions_of(pool, alice)

"""Migrations, LangGraph's tables, and the message-count RPC, on a real PostgreSQL."""

from __future__ import annotations

import threading
import psycopg
import pytest
from psycopg_pool import ConnectionPool

from backend.db import apply_migrations, connection_kwargs, migration_files, setup_checkpointer
from backend.config import Settings
from backend.sessions.store import SessionStore
from backend.services import services_of
from support.databases import scratch_database
from tests.helpers import unique_session_id


@pytest.fixture
def fresh_database(server_url):
    with scratch_database(server_url, prefix="mig") as url:
        yield url


def _pool(url: str, **overrides) -> ConnectionPool:
    settings = Settings(_env_file=None, database_url=url, **overrides)
    return ConnectionPool(url, min_size=1, max_size=2, kwargs=connection_kwargs(settings), open=True)


def test_two_processes_migrating_at_once_apply_each_file_once(fresh_database):
    pools = [_pool(fresh_database) for _ in range(3)]
    results: list[list[str]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(len(pools))

    def migrate(pool):
        try:
            start.wait()
            setup_checkpointer(pool)
            results.append(apply_migrations(pool))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=migrate, args=(p,)) for p in pools]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        expected = [p.stem for p in migration_files()]
        # exactly one runner applied everything; the others found nothing to do
        assert sorted(results, key=len) == [[], [], expected]
        with pools[0].connection() as conn:
            recorded = [r["version"] for r in conn.execute("select version from schema_migrations order by version")]
            assert recorded == expected
            tables = {r["t"] for r in conn.execute("select tablename as t from pg_tables where schemaname = 'public'")}
            assert {"chat_sessions", "app_users", "session_deletions", "checkpoints",
                    "checkpoint_blobs", "checkpoint_writes", "checkpoint_migrations"} <= tables
            rls = {r["relname"] for r in conn.execute("select relname from pg_class where relrowsecurity")}
            assert {"chat_sessions", "app_users", "session_deletions", "checkpoints", "checkpoint_blobs",
                    "checkpoint_writes"} <= rls
        # and again: nothing to do
        assert apply_migrations(pools[0]) == []
    finally:
        for p in pools:
            p.close()


def test_failing_migration_leaves_schema_unchanged(fresh_database, tmp_path):
    (tmp_path / "001_ok.sql").write_text("create table mig_ok (id int);")
    (tmp_path / "002_broken.sql").write_text("create table mig_broken (id int); select no_such_function();")
    pool = _pool(fresh_database)
    try:
        with pytest.raises(psycopg.errors.UndefinedFunction):
            apply_migrations(pool, tmp_path)
        with pool.connection() as conn:
            assert conn.execute("select to_regclass('mig_ok') as t").fetchone()["t"] is None
            assert conn.execute("select to_regclass('schema_migrations') as t").fetchone()["t"] is None
    finally:
        pool.close()


POOLER = {"db_transaction_pooler": True, "database_direct_url": "postgresql://direct.example/db"}


def test_pooler_mode_disables_prepared_statements():
    assert connection_kwargs(Settings(_env_file=None, **POOLER))["prepare_threshold"] is None
    assert "options" not in connection_kwargs(Settings(_env_file=None, **POOLER))
    assert connection_kwargs(Settings(_env_file=None))["prepare_threshold"] == 5


def test_pooler_mode_without_a_listen_capable_url_refuses_to_start_unless_events_are_off():
    with pytest.raises(ValueError, match="DATABASE_DIRECT_URL"):
        Settings(_env_file=None, db_transaction_pooler=True)
    assert Settings(_env_file=None, db_transaction_pooler=True, events_enabled=False).db_transaction_pooler


def test_pooler_mode_works_end_to_end(make_app, alice, database_url):
    # Without a real pgbouncer here, this shows the app runs with prepare_threshold=None throughout.
    app = make_app(db_transaction_pooler=True, database_direct_url=database_url)
    from tests.helpers import client_for

    client = client_for(app, alice)
    sid = client.post("/api/llm/sessions", json={}).get_json()["session_id"]
    assert client.get(f"/api/llm/sessions/{sid}").status_code == 200
    assert client.delete(f"/api/llm/sessions/{sid}").status_code == 200


# --- increment_session_message_count -------------------------------------------

def _count(pool, user_id, session_id):
    with pool.connection() as conn:
        return conn.execute(
            "select message_count, last_message_at from chat_sessions where user_id = %s and session_id = %s",
            (user_id, session_id),
        ).fetchone()


def test_increment_is_exact_under_concurrency(app, api, alice):
    state = services_of(app)
    sid = api.post("/api/llm/sessions", json={"session_id": unique_session_id()}).get_json()["session_id"]
    writers, per_writer = 16, 25
    start = threading.Barrier(writers)

    def write():
        start.wait()
        for _ in range(per_writer):
            with state.db.pool.connection() as conn:
                SessionStore.increment_message_count(conn, alice.id, sid, 1)

    threads = [threading.Thread(target=write) for _ in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    row = _count(state.db.pool, alice.id, sid)
    assert row["message_count"] == writers * per_writer
    assert row["last_message_at"] is not None


def test_increment_returns_new_count_and_nothing_for_unknown_session(pool, api, alice, bob):
    sid = api.post("/api/llm/sessions", json={}).get_json()["session_id"]
    with pool.connection() as conn:
        first = conn.execute("select * from increment_session_message_count(%s, %s, 2)", (alice.id, sid)).fetchone()
        assert first["message_count"] == 2
        # another user's id with the same session id touches nothing
        assert conn.execute("select * from increment_session_message_count(%s, %s)", (bob.id, sid)).fetchone() is None
        assert conn.execute("select * from increment_session_message_count(%s, 'nope')", (alice.id,)).fetchone() is None
    assert _count(pool, alice.id, sid)["message_count"] == 2


@pytest.mark.parametrize("bad", [0, -1, None])
def test_increment_refuses_non_positive_steps(pool, api, alice, bad):
    sid = api.post("/api/llm/sessions", json={}).get_json()["session_id"]
    with pool.connection() as conn, pytest.raises(psycopg.errors.InvalidParameterValue):
        conn.execute("select * from increment_session_message_count(%s, %s, %s)", (alice.id, sid, bad))
    assert _count(pool, alice.id, sid)["message_count"] == 0

"""On a Supabase database, the Data API's roles (the anon and authenticated keys) read only the
caller's own sessions, session counts, events and usage (the ledger, its daily totals and the
usage_daily view), write nothing, and call none of the migrations' functions.

A scratch database gets Supabase's roles, an `auth.uid()` reading `request.jwt.claims`, and
Supabase's default privileges (everything in `public` granted to anon, authenticated and
service_role) before the server migrates it; then every table is tried as the Data API would
(`set local role`, JWT claims), and every row compared before and after.
"""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
from psycopg import sql

from support.databases import scratch_database

SUPABASE_SETUP = """
do $$
begin
    if not exists (select 1 from pg_roles where rolname = 'anon') then create role anon nologin; end if;
    if not exists (select 1 from pg_roles where rolname = 'authenticated') then create role authenticated nologin; end if;
    if not exists (select 1 from pg_roles where rolname = 'service_role') then create role service_role nologin; end if;
end $$;
create schema if not exists auth;
create or replace function auth.uid() returns uuid language sql stable as
    $$ select nullif(current_setting('request.jwt.claims', true)::jsonb ->> 'sub', '')::uuid $$;
grant usage on schema auth to anon, authenticated, service_role;
grant execute on function auth.uid() to anon, authenticated, service_role;
grant usage on schema public to anon, authenticated, service_role;
alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;
"""


@pytest.fixture(scope="module")
def supabase_db(server_url, module_make_app):
    with scratch_database(server_url, prefix="supa") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(SUPABASE_SETUP)
        app = module_make_app(database_url=url)  # LangGraph's setup, then every migration
        yield url, app


def public_tables(conn) -> list[str]:
    return [r[0] for r in conn.execute("select tablename from pg_tables where schemaname = 'public' order by 1")]


def digest(conn) -> dict:
    return {t: conn.execute(sql.SQL("select count(*), md5(coalesce(string_agg(x::text, '|' order by x::text), '')) "
                                    "from {} x").format(sql.Identifier(t))).fetchone()
            for t in public_tables(conn)}


def as_role(conn, role: str, sub: str | None):
    conn.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))
    claims = {"role": role, **({"sub": sub} if sub else {})}
    conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))


def test_data_api_roles_read_only_their_own_rows_and_change_nothing(supabase_db):
    url, app = supabase_db
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    from tests.helpers import User, client_for

    for who in (alice, bob):
        user = User()
        user.id = who
        from tests.helpers import make_token
        user.token = make_token(who)
        client = client_for(app, user)
        assert client.post("/api/llm/sessions", json={"session_id": "s1", "session_name": f"of {who}"}).status_code == 201
        assert client.delete("/api/llm/sessions/s1?backup=true").status_code == 200
        assert client.post("/api/llm/sessions", json={"session_id": "s2"}).status_code == 201
        spend(app, who)

    with psycopg.connect(url) as owner:
        before = digest(owner)
        tables = public_tables(owner)
    assert {"schema_migrations", "chat_sessions", "session_events", "session_backups", "checkpoints",
            "auth_sessions", "app_users"} <= set(tables)

    for role, sub in (("anon", None), ("authenticated", alice)):
        for table in tables:
            ident = sql.Identifier(table)
            with psycopg.connect(url) as conn:
                as_role(conn, role, sub)
                try:
                    rows = conn.execute(sql.SQL("select to_jsonb(x) from {} x").format(ident)).fetchall()
                except psycopg.errors.InsufficientPrivilege:
                    rows = []
                conn.rollback()
            owners = {r[0].get("user_id") for r in rows}
            if role == "authenticated" and table in ("chat_sessions", "chat_session_counts", "session_events",
                                                     "usage_ledger", "usage_daily_totals"):
                assert owners == {alice}, (table, owners)  # their own, and only their own
            else:
                assert rows == [], (role, table)
            for statement in (
                sql.SQL("insert into {} select * from {}").format(ident, ident),
                sql.SQL("update {} set {} = {}").format(ident, *[sql.Identifier(_first_column(url, table))] * 2),
                sql.SQL("delete from {}").format(ident),
            ):
                with psycopg.connect(url) as conn:
                    as_role(conn, role, sub)
                    try:
                        conn.execute(statement)
                        conn.commit()
                    except psycopg.Error:
                        conn.rollback()  # refused outright: as good as touching nothing

    with psycopg.connect(url) as owner:
        assert digest(owner) == before  # nothing anywhere changed


def spend(app, user_id: str) -> None:
    """A ledger row of the user's (backend/usage), as a naming call of session s2 would write."""
    from backend.services import services_of
    from llm.usage import CallUsage

    services_of(app).usage.record_naming(
        {"user_id": user_id, "business_id": "biz-1", "session_id": "s2", "id": None}, [CallUsage("m", 10, 2)])


def test_the_usage_daily_view_shows_a_user_their_own_days_and_the_anon_key_nothing(supabase_db):
    url, app = supabase_db
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    for who in (alice, bob):
        spend(app, who)
    with psycopg.connect(url) as conn:  # the dashboard (the owner) sees everyone's
        users = {r[0] for r in conn.execute("select user_id from usage_daily")}
        assert {alice, bob} <= users
    with psycopg.connect(url) as conn:
        as_role(conn, "authenticated", alice)
        rows = conn.execute("select user_id, calls, input_tokens from usage_daily").fetchall()
        assert rows == [(alice, 1, 10)]
        conn.rollback()
    with psycopg.connect(url) as conn:
        as_role(conn, "anon", None)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select * from usage_daily").fetchall()


def test_data_api_roles_can_call_none_of_the_functions(supabase_db):
    url, _ = supabase_db
    with psycopg.connect(url) as conn:
        functions = conn.execute(
            "select p.oid::regprocedure::text, p.prorettype = 'trigger'::regtype as is_trigger "
            "from pg_proc p where p.pronamespace = 'public'::regnamespace").fetchall()
        assert functions
        for name, is_trigger in functions:
            for role in ("anon", "authenticated"):
                callable_ = conn.execute("select has_function_privilege(%s, %s, 'execute')", (role, name)).fetchone()[0]
                # Trigger functions cannot be called at all (PostgreSQL refuses, and the Data API does not list them).
                assert is_trigger or not callable_, (role, name)


def _first_column(url: str, table: str) -> str:
    with psycopg.connect(url) as conn:
        return conn.execute("select attname from pg_attribute where attrelid = %s::regclass and attnum = 1",
                            (f"public.{table}",)).fetchone()[0]

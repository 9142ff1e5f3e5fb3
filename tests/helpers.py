"""What the tests share besides fixtures: callers and clients, ids, injected database
failures, a database as it was before a migration, a pool's queue held in place, and
the check that every response is in the OpenAPI document."""

from __future__ import annotations

import re
import secrets
import shutil
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path

from flask.testing import FlaskClient
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from backend.db import MIGRATIONS_DIR, apply_migrations, setup_checkpointer
from support import identity
from support.databases import scratch_database
from support.identity import thread_id
from tests.chat_support import wait_until

JWT_SECRET = "test-jwt-secret-" + "x" * 32
SECRET_KEY = "test-secret-key-" + "y" * 32


class ServerLikeClient(FlaskClient):
    """Closes each response once read, as a real server does (the test client
    leaves that to the test), so requests in flight are counted as in production
    (backend/overload.py). Streams opened with buffered=False stay open until closed."""

    def open(self, *args, buffered: bool = True, **kwargs):
        return super().open(*args, buffered=buffered, **kwargs)


def make_token(sub: str, *, business_id: str | None = "biz-1", secret: str = JWT_SECRET, **claims) -> str:
    """A token this run's apps accept (unless the claims say otherwise)."""
    return identity.make_token(sub, secret, business_id=business_id, **claims)


class User:
    """A caller with a fresh id, so tests never share rows."""

    def __init__(self, business_id: str = "biz-1") -> None:
        self.id = str(uuid.uuid4())
        self.business_id = business_id
        self.token = make_token(self.id, business_id=business_id)

    def thread_id(self, session_id: str) -> str:
        return thread_id(self.id, self.business_id, session_id)


def client_for(app, user: User | None):
    client = app.test_client()
    if user is not None:
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {user.token}"
    return client


def unique_session_id() -> str:
    return f"chat-{secrets.token_hex(6)}"


@contextmanager
def installed_trigger(pool, name: str, table: str, event: str, when: str, then: str):
    """A BEFORE `event` row trigger on `table` running `then` for rows where `when`
    holds, while the block runs. In both, `row` is the row (OLD for deletes, NEW else)."""
    row = "old" if event == "delete" else "new"
    when, then = when.replace("row.", f"{row}."), then.replace("row.", f"{row}.")
    with pool.connection() as conn:
        conn.execute(f"""
            create or replace function {name}() returns trigger language plpgsql as $$
            begin
                if {when} then {then}; end if;
                return {row};
            end $$;
            create trigger {name} before {event} on {table} for each row execute function {name}();
        """)
    try:
        yield
    finally:
        with pool.connection() as conn:
            conn.execute(f"drop trigger {name} on {table}; drop function {name}();")


@contextmanager
def failing_trigger(pool, table: str, event: str, session_id_prefix: str):
    """A real database failure: `event` ('delete', 'insert', 'update') on `table` raises
    for rows whose session_id starts with the prefix, while the block runs."""
    with installed_trigger(pool, f"test_fail_{table}_{event}", table, event,
                           when=f"row.session_id like '{session_id_prefix}%'",
                           then="raise exception 'injected failure'"):
        yield


# --- every response the suite sees must be in the OpenAPI document ------------

undocumented: list[str] = []


def install_contract_check(app) -> None:
    """Record any response whose status (or shape) the OpenAPI document does not describe."""
    from flask import request

    from backend.http import ErrorResponse

    spec = app.api_doc

    @app.after_request
    def _check(response):
        rule = request.url_rule
        if rule is None or request.method in ("OPTIONS", "HEAD") or rule.rule.startswith("/api/docs"):
            return response
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        operation = spec.get("paths", {}).get(path, {}).get(request.method.lower())
        where = f"{request.method} {path} -> {response.status_code}"
        if operation is None:
            # The document itself, MCP (tests/test_mcp.py) and the built web app (backend/web.py) are not this API.
            if path not in ("/api/openapi.json", "/mcp", "/", "/c/{session_id}", "/assets/{name}"):
                undocumented.append(f"{where}: operation not documented")
            return response
        documented = operation.get("responses", {}).get(str(response.status_code))
        if documented is None:
            undocumented.append(f"{where}: status not documented")
        elif "application/json" in documented.get("content", {}) and response.mimetype != "application/json":
            undocumented.append(f"{where}: documented as JSON, sent {response.mimetype}")
        elif response.status_code >= 400 and response.mimetype == "application/json":
            try:
                ErrorResponse.model_validate(response.get_json())
            except Exception as exc:  # noqa: BLE001 - any mismatch is a finding
                undocumented.append(f"{where}: not the error shape ({exc})")
        return response


@contextmanager
def database_before(server_url: str, workdir: Path, migration: str):
    """A scratch database with LangGraph's tables and the migrations before `migration` (say "014")
    applied; yields its pool (autocommit, dict rows). `apply_migrations(pool)` then upgrades it."""
    before = workdir / "sql-before"
    before.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if path.name < migration:
            shutil.copy(path, before / path.name)
    with scratch_database(server_url, prefix="upgrade") as url:
        pool = ConnectionPool(url, min_size=1, max_size=2, open=True, kwargs={"autocommit": True, "row_factory": dict_row})
        try:
            setup_checkpointer(pool)
            apply_migrations(pool, before)
            yield pool
        finally:
            pool.close()


def requests_waiting(pool) -> int:
    """Requests queued for one of the pool's connections."""
    return pool.get_stats()["requests_waiting"]


def in_thread(fn):
    """Run fn in a thread; returns the thread and a dict that gets its result as `value`."""
    out: dict = {}
    thread = threading.Thread(target=lambda: out.setdefault("value", fn()))
    thread.start()
    return thread, out


def _hold_a_turn(pool, seconds: float) -> None:
    # Holding a connection for a while is what the queue's tests are about: a deliberate wait, not synchronisation.
    conn = pool.getconn(timeout=30)
    threading.Event().wait(seconds)
    pool.putconn(conn)


@contextmanager
def moving_queue(pool, holders: int = 5, hold_seconds: float = 0.4):
    """The pool's only connection handed along a queue of `holders`, each keeping it `hold_seconds`:
    connections keep coming back, but a request that joins the queue behind them waits about
    holders x hold_seconds for its turn. Yields `start()`: call it once that request is queued."""
    first = pool.getconn()
    threads = [threading.Thread(target=_hold_a_turn, args=(pool, hold_seconds)) for _ in range(holders)]
    started = False

    def start() -> None:
        nonlocal started
        assert wait_until(lambda: requests_waiting(pool) == holders + 1)
        started = True
        pool.putconn(first)

    try:
        for i, thread in enumerate(threads):
            thread.start()
            assert wait_until(lambda: requests_waiting(pool) == i + 1)
        yield start
    finally:
        if not started:
            pool.putconn(first)
        for thread in threads:
            thread.join(30)

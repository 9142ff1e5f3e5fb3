"""Test fixtures: a real PostgreSQL, a fresh database per run, and API clients.

The database is the embedded one (pgserver) unless TEST_DATABASE_URL names
another server; either way each run creates its own database and drops it at
the end, so runs never see each other's rows. Nothing here mocks the database.
"""

from __future__ import annotations

import os
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import jwt
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from flask.testing import FlaskClient

from backend import create_app
from backend.config import Settings
from backend.db import start_embedded_postgres
from backend.services import services_of

pytest_plugins = ["tests.chat_support"]  # the fake model's fixtures

JWT_SECRET = "test-jwt-secret-" + "x" * 32
SECRET_KEY = "test-secret-key-" + "y" * 32


@pytest.fixture(scope="session")
def server_url(tmp_path_factory) -> str:
    """The PostgreSQL server the suite runs against (its maintenance database)."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        return url
    return start_embedded_postgres(tmp_path_factory.mktemp("pg") / "data")


@contextmanager
def scratch_database(server_url: str, prefix: str) -> Iterator[str]:
    """A new, empty database on the server, dropped afterwards; yields its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    params = conninfo_to_dict(server_url)
    params["dbname"] = name
    try:
        yield make_conninfo(**params)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture(scope="session")
def database_url(server_url) -> Iterator[str]:
    """A database of this run's own."""
    with scratch_database(server_url, "test") as url:
        yield url


@pytest.fixture(scope="session")
def make_settings(database_url, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")

    def make(**overrides) -> Settings:
        values = dict(
            app_env="test",
            database_url=database_url,
            embedded_db_dir=data_dir / "pg",
            secret_key=SECRET_KEY,
            supabase_jwt_secret=JWT_SECRET,
            db_pool_min_size=1,
            db_pool_max_size=8,
            log_format="json",
            # Every test signs in from 127.0.0.1; the rate-limit tests turn limits on.
            rate_limits_enabled=False,
            # Background upkeep off: tests run each step themselves, when they mean to.
            maintenance_interval_seconds=0,
            run_lease_seconds=3,
            run_renew_seconds=0.1,
            force_delete_wait_seconds=5,
        )
        values.update(overrides)
        return Settings(_env_file=None, **values)

    return make


class ServerLikeClient(FlaskClient):
    """Closes each response once read, as a real server does (the test client
    leaves that to the test), so requests in flight are counted as in production
    (backend/overload.py). Streams opened with buffered=False stay open until closed."""

    def open(self, *args, buffered: bool = True, **kwargs):
        return super().open(*args, buffered=buffered, **kwargs)


@contextmanager
def _app_maker(make_settings):
    """Build apps with these settings; each is closed (pool, threads) when the block ends."""
    apps = []

    def make(**overrides):
        app = create_app(make_settings(**overrides))
        app.test_client_class = ServerLikeClient
        _install_contract_check(app)
        apps.append(app)
        return app

    try:
        yield make
    finally:
        for app in apps:
            services_of(app).close()


@pytest.fixture
def make_app(make_settings):
    """Build extra apps (other settings, a second 'process'), closed when the test ends:
    apps kept open for the whole run would hold more connections than the server allows."""
    with _app_maker(make_settings) as make:
        yield make


@pytest.fixture(scope="module")
def module_make_app(make_settings):
    """make_app for module-scoped fixtures: apps closed when the module ends."""
    with _app_maker(make_settings) as make:
        yield make


@pytest.fixture(scope="session")
def session_make_app(make_settings):
    with _app_maker(make_settings) as make:
        yield make


@pytest.fixture(scope="session")
def app(session_make_app):
    return session_make_app()


@pytest.fixture(scope="session")
def chat_app(session_make_app, fake_model):
    """An app whose model (and naming model) is the fake upstream on loopback."""
    return session_make_app(
        openai_base_url=fake_model.base_url,
        openai_api_key="test-key",
        openai_model="fake-chat",
        naming_model="fake-naming",
        openai_timeout_seconds=2,
        openai_max_retries=1,
        naming_timeout_seconds=2,
    )


@pytest.fixture
def chat(chat_app, alice):
    return client_for(chat_app, alice)


@pytest.fixture(scope="session")
def pool(app):
    return services_of(app).db.pool


def make_token(sub: str, *, business_id: str | None = "biz-1", secret: str = JWT_SECRET, **claims) -> str:
    payload = {"sub": sub, "aud": "authenticated", "exp": int(time.time()) + 3600, "role": "authenticated"}
    if business_id is not None:
        payload["app_metadata"] = {"business_id": business_id}
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, secret, algorithm="HS256")


class User:
    """A caller with a fresh id, so tests never share rows."""

    def __init__(self, business_id: str = "biz-1") -> None:
        self.id = str(uuid.uuid4())
        self.business_id = business_id
        self.token = make_token(self.id, business_id=business_id)

    def thread_id(self, session_id: str) -> str:
        return f"user_{self.id}_business_{self.business_id}_session_{session_id}"


def client_for(app, user: User | None):
    client = app.test_client()
    if user is not None:
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {user.token}"
    return client


@pytest.fixture
def alice() -> User:
    return User()


@pytest.fixture
def bob() -> User:
    return User()


@pytest.fixture
def api(app, alice):
    return client_for(app, alice)


@pytest.fixture
def bob_api(app, bob):
    return client_for(app, bob)


@pytest.fixture
def anon(app):
    return app.test_client()


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

_undocumented: list[str] = []


def _install_contract_check(app) -> None:
    """Record any response whose status (or shape) the OpenAPI document does not describe."""
    import re

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
            if path not in ("/api/openapi.json", "/", "/assets/{name}"):  # the document, the web app (backend/web.py)
                _undocumented.append(f"{where}: operation not documented")
            return response
        documented = operation.get("responses", {}).get(str(response.status_code))
        if documented is None:
            _undocumented.append(f"{where}: status not documented")
        elif "application/json" in documented.get("content", {}) and response.mimetype != "application/json":
            _undocumented.append(f"{where}: documented as JSON, sent {response.mimetype}")
        elif response.status_code >= 400 and response.mimetype == "application/json":
            try:
                ErrorResponse.model_validate(response.get_json())
            except Exception as exc:  # noqa: BLE001 - any mismatch is a finding
                _undocumented.append(f"{where}: not the error shape ({exc})")
        return response


@pytest.fixture(autouse=True)
def responses_match_openapi_document():
    start = len(_undocumented)
    yield
    found = _undocumented[start:]
    assert not found, "responses the OpenAPI document does not describe:\n" + "\n".join(found)

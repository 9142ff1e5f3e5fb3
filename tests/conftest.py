"""Test fixtures (helpers are in tests/helpers.py): a real PostgreSQL, a fresh database per run, and API clients.

The database is the embedded one (pgserver) unless TEST_DATABASE_URL names
another server; either way each run creates its own database and drops it at
the end, so runs never see each other's rows. Nothing here mocks the database.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from backend import create_app
from backend.config import Settings
from backend.db import start_embedded_postgres
from backend.services import services_of
from support.databases import scratch_database
from tests.helpers import (
    JWT_SECRET,
    SECRET_KEY,
    ServerLikeClient,
    User,
    client_for,
    install_contract_check,
    undocumented,
)

pytest_plugins = ["tests.chat_support"]  # the fake model's fixtures

@pytest.fixture(scope="session")
def server_url() -> str:
    """The PostgreSQL server the suite runs against (its maintenance database).

    The embedded one lives in a directory of its own under the system's temporary folder, never
    under pytest's: another pytest run on the machine cleans that folder and, as root, resets it
    to mode 0700, which locks out the server (it runs as its own system user) mid-run. Its data
    directory is deleted when the run ends."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        return url
    return start_embedded_postgres(Path(tempfile.mkdtemp(prefix="chat-sessions-tests-pg-")), cleanup="delete")


@pytest.fixture(scope="session")
def database_url(server_url) -> Iterator[str]:
    """A database of this run's own."""
    with scratch_database(server_url, prefix="test") as url:
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


@contextmanager
def _app_maker(make_settings):
    """Build apps with these settings; each is closed (pool, threads) when the block ends."""
    apps = []

    def make(**overrides):
        app = create_app(make_settings(**overrides))
        app.test_client_class = ServerLikeClient
        install_contract_check(app)
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


@pytest.fixture(autouse=True)
def responses_match_openapi_document():
    start = len(undocumented)
    yield
    found = undocumented[start:]
    assert not found, "responses the OpenAPI document does not describe:\n" + "\n".join(found)

"""Settings: .env.example is complete and loads; production refuses unsafe defaults."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from backend.config import PROJECT_ROOT, Settings


def test_env_example_loads_and_names_every_setting():
    example = PROJECT_ROOT / ".env.example"
    settings = Settings(_env_file=example)
    assert settings.app_env == "development" and settings.database_url is None
    named = {m.group(1).lower() for m in re.finditer(r"^([A-Z_]+)=", example.read_text(), re.M)}
    assert named == set(Settings.model_fields)


def test_production_requires_secret_and_database():
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        Settings(_env_file=None, app_env="production", database_url="postgresql://x/y")
    with pytest.raises(ValidationError, match="DATABASE_URL"):
        Settings(_env_file=None, app_env="production", secret_key="s" * 40)
    ok = Settings(_env_file=None, app_env="production", secret_key="s" * 40, database_url="postgresql://x/y")
    assert ok.cookie_secure is True


def test_cookie_secure_defaults_by_environment():
    assert Settings(_env_file=None).cookie_secure is False
    assert Settings(_env_file=None, app_env="test").cookie_secure is True
    assert Settings(_env_file=None, session_cookie_secure="").cookie_secure is False
    assert Settings(_env_file=None, session_cookie_secure=True).cookie_secure is True


def test_pool_bounds_are_checked():
    with pytest.raises(ValidationError, match="DB_POOL_MIN_SIZE"):
        Settings(_env_file=None, db_pool_min_size=5, db_pool_max_size=2)

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
        Settings(_env_file=None, app_env="production", database_url="postgresql://x/y", trusted_proxies=0)
    with pytest.raises(ValidationError, match="DATABASE_URL"):
        Settings(_env_file=None, app_env="production", secret_key="s" * 40, trusted_proxies=0)
    ok = Settings(_env_file=None, app_env="production", secret_key="s" * 40, database_url="postgresql://x/y",
                  trusted_proxies=0)
    assert ok.cookie_secure is True


def test_production_requires_an_explicit_trusted_proxies_zero_included():
    production = {"app_env": "production", "secret_key": "s" * 40, "database_url": "postgresql://x/y"}
    with pytest.raises(ValidationError, match="TRUSTED_PROXIES"):
        Settings(_env_file=None, **production)
    assert Settings(_env_file=None, **production, trusted_proxies=0).trusted_proxies == 0
    assert Settings(_env_file=None, **production, trusted_proxies=1).trusted_proxies == 1


@pytest.mark.parametrize("origins", ["*", "https://*.example.com", "https://app.example.com,*", "app.example.com",
                                     "https://app.example.com/path", "^https://.*$", "null"])
def test_wildcard_or_pattern_cors_origins_are_refused(origins):
    with pytest.raises(ValidationError, match="CORS_ORIGINS"):
        Settings(_env_file=None, cors_origins=origins)


def test_exact_cors_origins_are_accepted():
    s = Settings(_env_file=None, cors_origins="https://app.example.com, http://localhost:5173")
    assert s.cors_origin_list == ["https://app.example.com", "http://localhost:5173"]


@pytest.mark.parametrize("url", [
    "postgresql://me:s3cret-pw@db.example.com:5432/app",
    "postgresql://me@db.example.com/app?password=s3cret-pw",
    "host=db.example.com user=me password=s3cret-pw dbname=app",
    "host=db.example.com password='s3cret-pw' sslpassword=s3cret-pw dbname=app",
])
def test_database_urls_are_logged_without_secrets_in_any_form(url):
    from backend.db import redact_url

    shown = redact_url(url)
    assert "s3cret-pw" not in shown and "db.example.com" in shown and "***" in shown


def test_cookie_secure_defaults_by_environment():
    assert Settings(_env_file=None).cookie_secure is False
    assert Settings(_env_file=None, app_env="test").cookie_secure is True
    assert Settings(_env_file=None, session_cookie_secure="").cookie_secure is False
    assert Settings(_env_file=None, session_cookie_secure=True).cookie_secure is True


def test_pool_bounds_are_checked():
    with pytest.raises(ValidationError, match="DB_POOL_MIN_SIZE"):
        Settings(_env_file=None, db_pool_min_size=5, db_pool_max_size=2)

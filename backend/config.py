"""Settings, read once from the environment (and a `.env` file) and validated.

Every setting is documented in `.env.example`; this module is the single place
that reads them, so the rest of the code receives a typed `Settings` object.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    app_env: Literal["development", "test", "production"] = "development"
    secret_key: str | None = None

    # Database. Unset DATABASE_URL means: start the embedded PostgreSQL.
    database_url: str | None = None
    embedded_db_dir: Path = PROJECT_ROOT / ".data" / "pg"
    # Supabase's transaction pooler (port 6543) cannot keep prepared statements.
    db_transaction_pooler: bool = False
    db_pool_min_size: int = Field(default=2, ge=1)
    db_pool_max_size: int = Field(default=10, ge=1)
    db_pool_timeout_seconds: float = Field(default=5.0, gt=0)
    db_statement_timeout_ms: int = Field(default=30_000, ge=0)
    run_migrations_on_start: bool = True

    # Auth
    supabase_url: str | None = None
    supabase_jwt_secret: str | None = None
    jwt_audience: str = "authenticated"
    jwks_cache_seconds: int = Field(default=600, ge=0)
    default_business_id: str = "default"

    # HTTP
    cors_origins: str = "http://localhost:3000,http://localhost:5173"
    max_request_bytes: int = Field(default=1_048_576, ge=1024)
    session_cookie_secure: bool | None = None  # None: Secure everywhere but development

    # Logs
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"

    @field_validator(
        "database_url", "supabase_url", "supabase_jwt_secret", "secret_key", "session_cookie_secure", mode="before"
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _check_production(self) -> "Settings":
        if self.db_pool_min_size > self.db_pool_max_size:
            raise ValueError("DB_POOL_MIN_SIZE must not exceed DB_POOL_MAX_SIZE")
        if self.app_env == "production":
            if not self.secret_key or len(self.secret_key) < 32:
                raise ValueError("SECRET_KEY of at least 32 characters is required in production")
            if not self.database_url:
                raise ValueError("DATABASE_URL is required in production (the embedded database is for laptops)")
        return self

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def cookie_secure(self) -> bool:
        if self.session_cookie_secure is not None:
            return self.session_cookie_secure
        return self.app_env != "development"

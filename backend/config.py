"""Settings, read once from the environment (and a `.env` file) and validated.

Every setting is documented in `.env.example`; this module is the single place
that reads them, so the rest of the code receives a typed `Settings` object.
"""

from __future__ import annotations

import re
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
    # A session-mode connection for LISTEN (one per process, for live events):
    # Supabase's direct or session-pooler URL. Needed when DB_TRANSACTION_POOLER
    # is on (a transaction pooler cannot LISTEN); otherwise DATABASE_URL serves.
    database_direct_url: str | None = None
    db_pool_min_size: int = Field(default=2, ge=1)
    db_pool_max_size: int = Field(default=10, ge=1)
    # How long a request waits for a pooled connection: DB_POOL_TIMEOUT_SECONDS once a
    # connection has failed (the database is the problem), DB_POOL_QUEUE_SECONDS
    # while they keep working (a burst queueing on a busy server; never less).
    db_pool_timeout_seconds: float = Field(default=5.0, gt=0)
    db_pool_queue_seconds: float = Field(default=30.0, gt=0)
    db_statement_timeout_ms: int = Field(default=30_000, ge=0)
    run_migrations_on_start: bool = True

    # Auth
    supabase_url: str | None = None
    supabase_jwt_secret: str | None = None
    jwt_audience: str = "authenticated"
    jwks_cache_seconds: int = Field(default=600, ge=0)
    default_business_id: str = "default"
    # Cookie sign-ins end after this long whatever happens, and after this long
    # without a request (both checked by the server, on every process).
    session_max_age_seconds: int = Field(default=14 * 86_400, ge=60)
    session_idle_timeout_seconds: int = Field(default=3 * 86_400, ge=60)

    # HTTP
    cors_origins: str = "http://localhost:3000,http://localhost:5173"
    max_request_bytes: int = Field(default=1_048_576, ge=1024)
    # Seconds a request's whole body may take to arrive after its headers; then 408
    # request_timeout (backend/request_body.py). 30: a MAX_REQUEST_BYTES body at ~35 KB/s.
    request_body_timeout_seconds: float = Field(default=30.0, gt=0)
    session_cookie_secure: bool | None = None  # None: Secure everywhere but development
    # How many proxies in front of the app set X-Forwarded-For / -Proto (0: none;
    # then the client address is the TCP peer's). Rate limits key on it.
    trusted_proxies: int = Field(default=0, ge=0, le=5)
    # Requests in flight per server process (streams included) before new ones
    # get 503 + Retry-After; gunicorn.conf.py reads the same variable.
    max_connections_per_worker: int = Field(default=1500, ge=1)

    # Rate limits (flask-limiter syntax: "10 per minute; 100 per hour").
    rate_limits_enabled: bool = True
    rate_limit_storage_url: str = "memory://"
    rate_limit_fail_open: bool = False
    login_rate_limit: str = "10 per minute; 100 per hour"
    chat_rate_limit: str = "30 per minute"
    session_write_rate_limit: str = "120 per minute; 2000 per hour"

    # The model: any OpenAI-compatible server. Neither key nor base URL: the
    # built-in offline model answers (deterministic, and says so).
    openai_api_key: str | None = None
    openai_base_url: str | None = None
    openai_model: str = "gpt-4o-mini"
    openai_timeout_seconds: float = Field(default=60.0, gt=0)
    openai_connect_timeout_seconds: float = Field(default=10.0, gt=0)
    openai_max_retries: int = Field(default=2, ge=0, le=10)
    # Bounds on what one conversation can cost: the reply's length upstream, the
    # history sent with each turn (oldest messages left out), and the history kept.
    openai_max_tokens: int = Field(default=2048, ge=1)
    chat_context_max_tokens: int = Field(default=16_000, ge=100)
    chat_history_max_messages: int = Field(default=2000, ge=2)
    # The most text a session stores (UTF-8 bytes of its messages); then 409 session_full.
    chat_history_max_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # Per user, across every process: replies being written at once (the next
    # is 429 too_many_streams), and a deadline for one reply.
    chat_max_concurrent_per_user: int = Field(default=5, ge=1)
    chat_turn_max_seconds: float = Field(default=300, gt=0)
    # Sessions one user may keep (past it, a create, a first chat turn, an import or a restore is 409 quota_exceeded).
    max_sessions_per_user: int = Field(default=10_000, ge=1)
    # Open event streams per user in one server process; the next is refused (429).
    events_max_streams_per_user: int = Field(default=10, ge=1)
    require_model: bool = False  # production: refuse to start on the offline model
    system_prompt: str | None = None
    chat_graph_factory: str = "llm.graph:build_chat_graph"
    # 'latest': after each turn, prune checkpoints the thread no longer needs
    # (LangGraph's own prune), so storage grows linearly with the conversation.
    # 'full': keep every checkpoint, for LangGraph time travel / replay.
    checkpoint_history: Literal["latest", "full"] = "latest"

    # Usage (backend/usage): prices per model, per million tokens (JSON or TOML; unset: every
    # call costs 0); quotas every user has unless `flask set-quota` gives them their own
    # (tokens: input + output; cost: in the prices file's currency); how long the ledger is kept.
    model_prices_file: Path | None = None
    default_user_quota_day_tokens: int | None = Field(default=None, ge=0)
    default_user_quota_day_cost: float | None = Field(default=None, ge=0)
    default_user_quota_month_tokens: int | None = Field(default=None, ge=0)
    default_user_quota_month_cost: float | None = Field(default=None, ge=0)
    usage_retention_days: int | None = Field(default=None, ge=1)

    # Search inside conversations (backend/search): PostgreSQL's text-search configuration for
    # messages ('simple': no stemming or stop words, any language; 'english', 'german', ...: stemmed).
    # New messages use it at once; `flask reindex-search --all` rebuilds the others.
    search_language: str = Field(default="simple", pattern=r"^[a-z_]{1,63}$")

    # Auto-naming of sessions from their first message.
    naming_model: str = "gpt-4o-mini"
    naming_timeout_seconds: float = Field(default=10.0, gt=0)

    # Replies being written: a lease in PostgreSQL, renewed while the reply runs.
    run_lease_seconds: float = Field(default=15.0, gt=0)
    run_renew_seconds: float = Field(default=1.0, gt=0)
    force_delete_wait_seconds: float = Field(default=10.0, ge=0)
    # A reply whose client goes away: 'continue' writes it to its end (any tab can join
    # it); 'cancel' stops it, upstream too.
    run_on_disconnect: Literal["continue", "cancel"] = "continue"
    # How long an ended run can still be joined or replayed (its text is kept that long).
    run_replay_seconds: float = Field(default=600, gt=0)
    # How often a reader on another process than the reply's looks for new text.
    run_poll_seconds: float = Field(default=0.25, gt=0)
    # Messages that may wait behind a session's reply (multitask_strategy=enqueue); then 429 queue_full.
    run_queue_max_per_session: int = Field(default=10, ge=1)
    # How long a delete with ?backup=true can be undone (POST .../restore).
    backup_retention_seconds: float = Field(default=86_400, gt=0)
    # The most messages one import may bring (the body is also capped by MAX_REQUEST_BYTES, and the
    # conversation by what a session may hold: CHAT_HISTORY_MAX_MESSAGES, CHAT_HISTORY_MAX_BYTES).
    import_max_messages: int = Field(default=10_000, ge=1)
    # Retention, applied by the periodic upkeep (unset: keep forever). Sessions
    # with no activity for RETENTION_INACTIVE_DAYS are deleted (only archived
    # ones with RETENTION_ARCHIVED_ONLY); audit rows older than AUDIT_RETENTION_DAYS.
    retention_inactive_days: int | None = Field(default=None, ge=1)
    retention_archived_only: bool = False
    audit_retention_days: int | None = Field(default=None, ge=1)
    sse_heartbeat_seconds: float = Field(default=15.0, gt=0)
    # Reply text a stream may hold for a client that does not read; past it the
    # reply is stopped and the stream ends with an error event.
    stream_buffer_chars: int = Field(default=65_536, ge=1024)

    # MCP tools for AI agents over streamable HTTP at /mcp (bearer tokens); stdio is `flask mcp`.
    mcp_http_enabled: bool = True

    # Live events (GET /api/llm/events): kept this long for clients that reconnect.
    events_enabled: bool = True
    events_retention_seconds: float = Field(default=3600, gt=0)
    events_heartbeat_seconds: float = Field(default=15.0, gt=0)
    # A stream ends after this long and the client reconnects from its cursor
    # (missing nothing), so long-lived connections rebalance across processes.
    events_max_stream_seconds: float = Field(default=3600, gt=0)

    # Background upkeep in each process (0 turns a job off): finish turns whose
    # process died, name sessions left unnamed, remove orphaned LangGraph threads.
    maintenance_interval_seconds: float = Field(default=60.0, ge=0)
    orphan_sweep_interval_seconds: float = Field(default=3600.0, ge=0)
    orphan_min_age_seconds: float = Field(default=86400.0, ge=0)

    # Logs
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"

    @field_validator(
        "database_url", "database_direct_url", "supabase_url", "supabase_jwt_secret", "secret_key", "session_cookie_secure",
        "openai_api_key", "openai_base_url", "system_prompt", "retention_inactive_days", "audit_retention_days",
        "model_prices_file", "default_user_quota_day_tokens", "default_user_quota_day_cost",
        "default_user_quota_month_tokens", "default_user_quota_month_cost", "usage_retention_days",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _check_production(self) -> "Settings":
        if self.require_model and self.model_offline:
            raise ValueError("REQUIRE_MODEL is set but neither OPENAI_API_KEY nor OPENAI_BASE_URL is")
        if self.run_renew_seconds * 3 > self.run_lease_seconds:
            raise ValueError("RUN_LEASE_SECONDS must be at least 3 x RUN_RENEW_SECONDS, so one slow renewal loses no lease")
        if self.events_enabled and self.db_transaction_pooler and not self.database_direct_url:
            raise ValueError(
                "Live events need a session-mode connection to LISTEN on, which a transaction pooler cannot give: "
                "set DATABASE_DIRECT_URL (Supabase's direct or session-pooler URL), or EVENTS_ENABLED=false"
            )
        if self.db_pool_min_size > self.db_pool_max_size:
            raise ValueError("DB_POOL_MIN_SIZE must not exceed DB_POOL_MAX_SIZE")
        if not re.fullmatch(r"[A-Za-z0-9.:@|+-]{1,128}", self.default_business_id):
            raise ValueError("DEFAULT_BUSINESS_ID must be 1-128 of A-Z a-z 0-9 . : @ | + - (it is part of thread ids)")
        for origin in self.cors_origin_list:
            if not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?", origin):
                raise ValueError(
                    f"CORS_ORIGINS must list exact origins like https://app.example.com; {origin!r} is not one. "
                    "'*' and patterns are refused: browsers send this API's cookies with credentials, so a wildcard "
                    "would let any site act as the signed-in user"
                )
        if self.app_env == "production":
            if "trusted_proxies" not in self.model_fields_set:
                raise ValueError(
                    "TRUSTED_PROXIES must be set explicitly in production (0 when clients connect directly): "
                    "too low puts every client behind the proxy's address (one user's sign-in failures lock all "
                    "out), too high lets clients forge X-Forwarded-For (unlimited password guessing)"
                )
            if not self.secret_key or len(self.secret_key) < 32:
                raise ValueError("SECRET_KEY of at least 32 characters is required in production")
            if not self.database_url:
                raise ValueError("DATABASE_URL is required in production (the embedded database is for laptops)")
        return self

    @property
    def model_offline(self) -> bool:
        return not self.openai_api_key and not self.openai_base_url

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def cookie_secure(self) -> bool:
        if self.session_cookie_secure is not None:
            return self.session_cookie_secure
        return self.app_env != "development"

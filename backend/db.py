"""The database: which PostgreSQL, the connection pool, and the schema.

Production points `DATABASE_URL` at Supabase. On a laptop, with no URL, an
embedded PostgreSQL from `pgserver` starts with its data in a local folder that
survives restarts. Both the app's own SQL and LangGraph's `PostgresSaver` use
the one pool built here, so every connection has the same settings.
"""

from __future__ import annotations

import logging
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict
from langgraph.checkpoint.postgres import PostgresSaver
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from backend.config import PROJECT_ROOT, Settings

log = logging.getLogger(__name__)

MIGRATIONS_DIR = PROJECT_ROOT / "sql"
# Arbitrary, fixed keys for pg_advisory_*lock: one per kind of schema work.
MIGRATIONS_LOCK_KEY = 7_241_001
CHECKPOINTER_SETUP_LOCK_KEY = 7_241_002


def start_embedded_postgres(data_dir: Path) -> str:
    """Start (or join) the embedded PostgreSQL in `data_dir`; return its URI."""
    import pgserver  # imported here: production never needs it loaded

    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    # 'stop': the server stops when the last process using it exits.
    server = pgserver.get_server(data_dir, cleanup_mode="stop")
    return server.get_uri()


def resolve_database_url(settings: Settings) -> tuple[str, str]:
    """Return (conninfo, a description for logs that carries no password)."""
    if settings.database_url:
        return settings.database_url, redact_url(settings.database_url)
    uri = start_embedded_postgres(settings.embedded_db_dir)
    return uri, f"embedded PostgreSQL in {settings.embedded_db_dir}"


SECRET_PARAMS = ("password", "sslpassword")


def redact_url(url: str) -> str:
    """The connection string with every secret masked, in whatever form it came
    (URL user-info, ?password=, key=value): parsed as libpq parses it."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<a DATABASE_URL that does not parse>"
    for key in SECRET_PARAMS:
        if key in params:
            params[key] = "***"
    return " ".join(f"{k}={v}" for k, v in params.items())


def connection_kwargs(settings: Settings) -> dict:
    """Settings shared by every connection, the saver's included.

    LangGraph's saver needs autocommit and dict rows. Transaction-mode poolers
    need prepared statements off entirely (`None`; LangGraph's own 0 means
    "prepare at once", which breaks there).
    """
    kwargs: dict = {
        "autocommit": True,
        "row_factory": dict_row,
        "prepare_threshold": None if settings.db_transaction_pooler else 5,
    }
    if settings.db_statement_timeout_ms and not settings.db_transaction_pooler:
        # Poolers in transaction mode reject startup options; there the role's
        # own statement_timeout (Supabase sets one) applies instead.
        kwargs["options"] = f"-c statement_timeout={settings.db_statement_timeout_ms}"
    return kwargs


class StaleConnectionCheck:
    """Ping a pooled connection on checkout only if it sat idle long enough to go stale.

    Pinging every checkout costs a round trip per request; never pinging hands
    out connections a database restart or an idle timeout already killed. A
    connection in steady use is trusted; a broken one is still discarded by the
    pool when its request fails (that request gets 503), and any that waited
    longer than `idle_seconds` are checked first.
    """

    def __init__(self, idle_seconds: float = 2.0) -> None:
        self._idle_seconds = idle_seconds
        self._returned_at: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def returned(self, conn: psycopg.Connection) -> None:
        self._returned_at[conn] = time.monotonic()

    def check(self, conn: psycopg.Connection) -> None:
        returned = self._returned_at.get(conn)
        if returned is None or time.monotonic() - returned > self._idle_seconds:
            ConnectionPool.check_connection(conn)


@dataclass
class Database:
    pool: ConnectionPool
    description: str

    @classmethod
    def connect(cls, settings: Settings) -> "Database":
        conninfo, description = resolve_database_url(settings)
        stale = StaleConnectionCheck()
        pool = ConnectionPool(
            conninfo,
            min_size=settings.db_pool_min_size,
            max_size=settings.db_pool_max_size,
            timeout=settings.db_pool_timeout_seconds,
            kwargs=connection_kwargs(settings),
            check=stale.check,
            reset=stale.returned,
            name="app",
            open=False,
        )
        pool.open(wait=False)
        return cls(pool=pool, description=description)

    def close(self) -> None:
        self.pool.close()

    def ping(self) -> bool:
        try:
            with self.pool.connection(timeout=2) as conn:
                conn.execute("select 1")
            return True
        except (psycopg.Error, Exception):  # PoolTimeout is not a psycopg.Error
            return False

    def checkpointer(self) -> PostgresSaver:
        """The LangGraph saver for chat turns, on the shared pool."""
        return PostgresSaver(self.pool)

    def prepare_schema(self) -> list[str]:
        """LangGraph's tables first (our migrations may refer to them), then ours."""
        setup_checkpointer(self.pool)
        return apply_migrations(self.pool)


def setup_checkpointer(pool: ConnectionPool, lock_timeout_seconds: float = 120.0) -> None:
    """Create LangGraph's tables with the library's own `setup()`.

    Its migrations use CREATE INDEX CONCURRENTLY, which cannot run in a
    transaction and waits for every open transaction in the database. So a
    second starting process must not sit in `pg_advisory_lock` (a waiting
    statement is an open transaction: the two would deadlock); it polls
    `pg_try_advisory_lock` instead, each try a transaction of its own.
    """
    deadline = time.monotonic() + lock_timeout_seconds
    delay = 0.05
    with pool.connection() as conn:
        while not conn.execute("select pg_try_advisory_lock(%s) as ok", (CHECKPOINTER_SETUP_LOCK_KEY,)).fetchone()["ok"]:
            if time.monotonic() > deadline:
                raise TimeoutError("another process kept the checkpointer setup lock too long")
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        try:
            PostgresSaver(conn).setup()
        finally:
            conn.execute("select pg_advisory_unlock(%s)", (CHECKPOINTER_SETUP_LOCK_KEY,))


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[Path]:
    return sorted(p for p in directory.glob("*.sql") if p.is_file())


# The record of applied migrations is the server's alone: on Supabase, the
# default privileges would let the anon key mark a future (security) migration
# as applied, or make every one run again. RLS on with no policies, and no
# rights for the Data API's roles; re-asserted on every start, so a table made
# by an older version is closed too.
SCHEMA_MIGRATIONS_TABLE_SQL = """
create table if not exists schema_migrations (
    version text primary key,
    applied_at timestamptz not null default now()
);
alter table schema_migrations enable row level security;
do $$
begin
    if exists (select 1 from pg_roles where rolname = 'anon') then
        execute 'revoke all on schema_migrations from anon';
    end if;
    if exists (select 1 from pg_roles where rolname = 'authenticated') then
        execute 'revoke all on schema_migrations from authenticated';
    end if;
end;
$$;
"""


def apply_migrations(pool: ConnectionPool, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending `sql/*.sql` files in name order, each once; return their names.

    All in one transaction under a transaction-scoped advisory lock, so two
    processes starting together apply each file once, and a failing file
    leaves the schema as it was. Works through transaction-mode poolers too.
    """
    applied_now: list[str] = []
    with pool.connection() as conn, conn.transaction():
        conn.execute("select pg_advisory_xact_lock(%s)", (MIGRATIONS_LOCK_KEY,))
        conn.execute(SCHEMA_MIGRATIONS_TABLE_SQL, prepare=False)
        done = {r["version"] for r in conn.execute("select version from schema_migrations")}
        for path in migration_files(directory):
            if path.stem in done:
                continue
            # prepare=False: a file holds many statements, sent as one simple query.
            conn.execute(path.read_text(encoding="utf-8"), prepare=False)
            conn.execute("insert into schema_migrations (version) values (%s)", (path.stem,))
            applied_now.append(path.stem)
    for name in applied_now:
        log.info("migration applied", extra={"migration": name})
    return applied_now

"""The database: which PostgreSQL, the connection pool, and the schema.

Production points `DATABASE_URL` at Supabase. On a laptop, with no URL, an
embedded PostgreSQL from `pgserver` starts with its data in a local folder that
survives restarts. Both the app's own SQL and LangGraph's `PostgresSaver` use
the one pool built here, so every connection has the same settings.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from langgraph.checkpoint.postgres import PostgresSaver
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from backend.config import PROJECT_ROOT, Settings

log = logging.getLogger(__name__)

MIGRATIONS_DIR = PROJECT_ROOT / "sql"
# Arbitrary, fixed keys for pg_advisory_*lock: one per kind of schema work.
MIGRATIONS_LOCK_KEY = 7_241_001
CHECKPOINTER_SETUP_LOCK_KEY = 7_241_002


def start_embedded_postgres(data_dir: Path, cleanup: str = "stop") -> str:
    """Start (or join) the embedded PostgreSQL in `data_dir`; return its URI.

    `cleanup`: 'stop', the server stops when the last process using it exits; 'delete', its
    data directory goes too (a throwaway server, as the test suite's)."""
    import pgserver  # imported here: production never needs it loaded

    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with pgserver.PostgresServer._lock:
        _forget_dead_users(data_dir)
    _exit_cleanly_on_sigterm()
    server = pgserver.get_server(data_dir, cleanup_mode=cleanup)
    return server.get_uri()


def _forget_dead_users(data_dir: Path) -> None:
    """pgserver stops the server when the last process using it exits, by a list of their pids; a
    process killed without running its exit handlers stays listed, and the server would then never
    stop. Drop the pids no longer running before joining."""
    import psutil

    listed = data_dir / ".handle_pids.json"
    try:
        pids = json.loads(listed.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and psutil.pid_exists(pid)]
    if alive != pids:
        listed.write_text(json.dumps(alive))


def _exit_cleanly_on_sigterm() -> None:
    """SIGTERM (an IDE's stop, `kill`, a container's stop) exits through Python's exit handlers, as
    Ctrl-C does, so the embedded server is stopped with the last process using it. Only where
    nothing else handles the signal (gunicorn's processes install their own)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


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


class PoolHealth:
    """What the pool has seen of the database: when a connection last came back in working
    order, and when one last failed (refused, lost, or the server going away).

    It decides how long a request waits for a connection. While no connection has
    failed since one last came back, a wait is a queue: a burst of requests on a
    busy server (the pool is where they wait their turn for the CPU too), and it
    may last DB_POOL_QUEUE_SECONDS. After a failure, the database is the problem:
    a request gives up after DB_POOL_TIMEOUT_SECONDS. (Requests already queued
    when a failure happens keep their longer wait: the pool cannot shorten it.)
    """

    def __init__(self) -> None:
        self._last_return: float | None = None
        self._last_failure: float | None = None

    def returned(self) -> None:
        self._last_return = time.monotonic()

    def failed(self) -> None:
        self._last_failure = time.monotonic()

    def answering(self) -> bool:
        """No connection failed since one last came back (or none ever failed)."""
        failure, last = self._last_failure, self._last_return
        return failure is None or (last is not None and last > failure)

    def moving(self, within_seconds: float) -> bool:
        """Answering, and a connection came back in the last `within_seconds`: the queue moves."""
        last = self._last_return
        return self.answering() and last is not None and time.monotonic() - last <= within_seconds


def is_connection_failure(exc: BaseException) -> bool:
    """A lost or refused connection (no SQLSTATE: the client's own error), or the server
    going away (classes 08 and 57P); not a statement that failed on a working one."""
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(exc, psycopg.OperationalError) and (
        sqlstate is None or sqlstate.startswith("08") or sqlstate.startswith("57P"))


class StaleConnectionCheck:
    """Ping a pooled connection on checkout only if it sat idle long enough to go stale.

    Pinging every checkout costs a round trip per request; never pinging hands
    out connections a database restart or an idle timeout already killed. A
    connection in steady use is trusted; a broken one is still discarded by the
    pool when its request fails (that request gets 503), and any that waited
    longer than `idle_seconds` are checked first. Both hooks also tell `health`.
    """

    def __init__(self, health: PoolHealth, idle_seconds: float = 2.0) -> None:
        self._health = health
        self._idle_seconds = idle_seconds
        self._returned_at: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def returned(self, conn: psycopg.Connection) -> None:
        """Called (QueueingPool.putconn) for connections returned in working order only."""
        self._returned_at[conn] = time.monotonic()
        self._health.returned()

    def check(self, conn: psycopg.Connection) -> None:
        returned = self._returned_at.get(conn)
        if returned is None or time.monotonic() - returned > self._idle_seconds:
            try:
                ConnectionPool.check_connection(conn)
            except Exception:
                self._health.failed()
                raise


class PoolBusy(PoolTimeout):
    """No connection came free in time, while connections kept coming back: the server is
    busy (a queue too long), not the database down."""


class QueueingPool(ConnectionPool):
    """psycopg_pool's pool, told apart from a database that fails.

    A request waits `queue_timeout` for a connection (not the pool's own
    `timeout`) while `health` says the database answers; an explicit timeout
    still wins. A wait that times out while connections kept coming back raises
    PoolBusy. A connection that fails in use is reported to `health`, one
    returned in working order to `on_return`.

    Idle connections are handed out newest first (psycopg_pool's own order is
    oldest first): after a burst has grown the pool, light traffic keeps using
    the same few connections, so they stay warm instead of each sitting idle
    long enough to be pinged (StaleConnectionCheck) before nearly every use,
    and the rest wait at the end the pool shrinks from.
    """

    def __init__(
        self, *args, health: PoolHealth, queue_timeout: float,
        on_return: Callable[[psycopg.Connection], None] | None = None, **kwargs,
    ) -> None:
        self.health = health
        self.queue_timeout = queue_timeout
        self._on_return = on_return
        super().__init__(*args, **kwargs)

    def putconn(self, conn: psycopg.Connection) -> None:
        # Here, not as psycopg_pool's `reset` hook: with a reset hook the pool
        # hands every return to one of its worker threads, a hop through the
        # event loop before the connection is free again (for a request waiting
        # for it too). Without one it goes back in the caller's own thread.
        if self._on_return is not None and conn.pgconn.transaction_status == TransactionStatus.IDLE:
            self._on_return(conn)
        super().putconn(conn)

    def getconn(self, timeout: float | None = None) -> psycopg.Connection:
        if timeout is None and self.health.answering():
            timeout = self.queue_timeout
        try:
            return super().getconn(timeout)
        except PoolTimeout as exc:
            if self.is_moving():
                raise PoolBusy(str(exc)) from None
            raise

    def _get_ready_connection(self, timeout: float | None) -> psycopg.Connection | None:
        # Under the pool's lock. The pool takes its idle connections from the
        # left of a deque and puts them back on the right: turning it by one
        # puts the one returned last where the pool takes from.
        if len(self._pool) > 1:
            self._pool.rotate(1)
        return super()._get_ready_connection(timeout)

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[psycopg.Connection]:
        try:
            with super().connection(timeout) as conn:
                yield conn
        except psycopg.OperationalError as exc:
            if is_connection_failure(exc):
                self.health.failed()
            raise

    def is_busy(self) -> bool:
        """Every connection it may hold is open and in use, and they keep coming back."""
        stats = self.get_stats()
        return stats["pool_available"] == 0 and stats["pool_size"] >= self.max_size and self.is_moving()

    def is_moving(self) -> bool:
        """Connections came back within the last `timeout` seconds, none failing since."""
        return self.health.moving(self.timeout)


@dataclass
class Database:
    pool: QueueingPool
    description: str

    @classmethod
    def connect(cls, settings: Settings) -> "Database":
        conninfo, description = resolve_database_url(settings)
        health = PoolHealth()
        stale = StaleConnectionCheck(health)

        class AppConnection(psycopg.Connection):
            """What the pool opens: a refused connection tells `health` (the pool retries by itself)."""

            @classmethod
            def connect(cls, *args, **kwargs):
                try:
                    return super().connect(*args, **kwargs)
                except psycopg.OperationalError:
                    health.failed()
                    raise

        pool = QueueingPool(
            conninfo,
            health=health,
            queue_timeout=max(settings.db_pool_queue_seconds, settings.db_pool_timeout_seconds),
            min_size=settings.db_pool_min_size,
            max_size=settings.db_pool_max_size,
            timeout=settings.db_pool_timeout_seconds,
            kwargs=connection_kwargs(settings),
            connection_class=AppConnection,
            check=stale.check,
            on_return=stale.returned,
            name="app",
            open=False,
        )
        pool.open(wait=False)
        return cls(pool=pool, description=description)

    def close(self) -> None:
        self.pool.close()

    def ping(self) -> bool:
        try:
            with self.pool.connection(timeout=min(2.0, self.pool.timeout)) as conn:
                conn.execute("select 1")
            return True
        except (psycopg.Error, Exception):  # PoolTimeout is not a psycopg.Error
            return False

    def readiness(self) -> str | None:
        """'ready' (a connection answered), 'busy' (every connection is in use and they keep
        coming back: a ping would only queue behind them) or None (the database does not answer)."""
        if self.pool.is_busy():
            return "busy"
        return "ready" if self.ping() else None

    def dedicated_connection(self) -> psycopg.Connection:
        """A connection of its own, outside the pool, with the pool's settings: for work that must
        not wait behind requests (the lease keeper)."""
        return psycopg.connect(self.pool.conninfo, connect_timeout=max(1, round(self.pool.timeout)),
                               **self.pool.kwargs)

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

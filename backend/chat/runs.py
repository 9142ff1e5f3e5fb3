"""Replies being written by this process, and the lease that tells every process so.

The lease lives in PostgreSQL (chat_session_runs). One keeper thread per
process renews the leases of all its runs in a single statement every
RUN_RENEW_SECONDS, and learns from the same statement whether another process
asked for a cancel (a forced delete). A process that dies stops renewing; its
leases expire and the sessions are free again.

The same statement writes each reply's text past what it wrote before, so a
reader on another process can follow the reply (one write per reply per
renewal at most, never one per token).

The keeper renews on a connection of its own, not the pool's: in a burst,
requests queue for pooled connections for up to DB_POOL_QUEUE_SECONDS, longer
than a lease lasts, and a renewal waiting its turn there would let the leases
of live replies expire.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import psycopg
from psycopg import Connection
from psycopg_pool import PoolTimeout

from backend.chat.reply import ReplyBuffer
from backend.chat.run_store import RunStore
from backend.process_thread import ProcessThread

log = logging.getLogger(__name__)


class CancelToken:
    """A threading.Event that can also run callbacks when set (to close a blocked read)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self.reason: str | None = None

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def set(self, reason: str = "cancelled") -> None:
        with self._lock:
            if self._event.is_set():
                return
            self.reason = reason
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # noqa: BLE001 - closing a stream may raise; the run ends anyway
                log.debug("cancel callback failed", exc_info=True)

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run `callback` when cancelled (at once if already). Returns a remover.

        Callbacks run on the thread that cancels, often the lease keeper, so
        they must not block (shut a socket down; do not wait on it).
        """
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return lambda: self._remove(callback)
        callback()
        return lambda: None

    def _remove(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)


@dataclass
class ActiveRun:
    run_id: uuid.UUID
    user_id: str
    session_id: str
    cancel: CancelToken = field(default_factory=CancelToken)
    started: float = field(default_factory=time.monotonic)
    reply: ReplyBuffer = field(default_factory=ReplyBuffer)
    read_upto: int = 0  # characters its furthest reader in this process has been sent


# Why another process asked a run to stop (chat_session_runs.cancel_reason) -> CancelToken's reason.
CANCEL_REASONS = {"delete": "cancel_requested", "user": "user_cancelled", "interrupt": "interrupted_by_message",
                  "rollback": "rolled_back"}



class RunLeases:
    def __init__(
        self, store: RunStore, *, lease_seconds: float, renew_seconds: float, turn_max_seconds: float = float("inf"),
        connect: Callable[[], Connection],
    ) -> None:
        self._turn_max = turn_max_seconds
        self._connect = connect  # opens the keeper's own connection
        self._conn: Connection | None = None
        self._conn_lock = threading.Lock()
        self._store = store
        self._lease_seconds = lease_seconds
        self._renew_seconds = renew_seconds
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._runs: dict[uuid.UUID, ActiveRun] = {}
        self._lock = threading.Lock()
        # Started on first use, so each gunicorn worker gets its own after fork.
        self._keeper = ProcessThread(self._keep, "run-lease-keeper")
        self._stopped = threading.Event()

    def start_in_session(
        self, user_id: str, session_id: str, *, max_messages: int, max_bytes: int, max_runs: int,
        then_read: Callable[[dict], tuple[str, Sequence]] | None = None, query: str | None = None,
        usage_limits: dict | None = None,
    ) -> tuple[dict | None, ActiveRun | None, dict | None]:
        """The session and its lease (keeping `query`, the user's message) in one statement, then
        `then_read` (RunStore.start_run_in_session)."""
        session, run_id, read_row = self._store.start_run_in_session(
            user_id, session_id, self.owner, self._lease_seconds, max_messages=max_messages, max_bytes=max_bytes,
            max_runs=max_runs, then_read=then_read, query=query, usage_limits=usage_limits,
        )
        return session, None if run_id is None else self.track(run_id, user_id, session_id), read_row

    def track(self, run_id: uuid.UUID, user_id: str, session_id: str) -> ActiveRun:
        """Renew this lease (taken by this process) until the run is forgotten."""
        run = ActiveRun(run_id=run_id, user_id=user_id, session_id=session_id)
        with self._lock:
            self._runs[run_id] = run
        self._keeper.ensure_running()
        return run

    def forget(self, run: ActiveRun) -> None:
        with self._lock:
            self._runs.pop(run.run_id, None)

    def active(self) -> list[ActiveRun]:
        with self._lock:
            return list(self._runs.values())

    def start_queued(
        self, user_id: str, session_id: str, *, max_messages: int, max_bytes: int, max_runs: int,
        then_read: Callable[[dict], tuple[str, Sequence]], usage_limits: dict | None = None,
    ) -> tuple[dict | None, ActiveRun | None, str | None, dict | None]:
        """The oldest message queued in the session, started here (RunStore.start_queued_run)."""
        session, run_id, query, read_row = self._store.start_queued_run(
            user_id, session_id, self.owner, self._lease_seconds, max_messages=max_messages, max_bytes=max_bytes,
            max_runs=max_runs, then_read=then_read, usage_limits=usage_limits,
        )
        return session, None if run_id is None else self.track(run_id, user_id, session_id), query, read_row

    def get(self, run_id: uuid.UUID) -> ActiveRun | None:
        """The run, if this process is writing it."""
        with self._lock:
            return self._runs.get(run_id)

    def renew_now(self) -> None:
        """One renewal pass: extend every lease, pass on cancels, stop runs that lost theirs."""
        runs = self.active()
        if not runs:
            return
        now = time.monotonic()
        for run in runs:
            if now - run.started > self._turn_max:
                run.cancel.set("turn_deadline")  # a reply (or a reader) that never ends
        unstored = [run.reply.unstored() for run in runs]
        held = self._renew([
            (run.run_id, None, None) if new is None else (run.run_id, new[0], new[1])
            for run, new in zip(runs, unstored)
        ])
        for run, new in zip(runs, unstored):
            if run.run_id not in held:
                # The run row is gone: the session was deleted, or the lease
                # expired and another run took over. Either way, stop writing.
                run.cancel.set("lease_lost")
                continue
            if new is not None:
                run.reply.stored_chars = new[2]
            if held[run.run_id]:
                run.cancel.set(CANCEL_REASONS.get(held[run.run_id], "cancel_requested"))

    def _renew(self, progress: list[tuple[uuid.UUID, int | None, str | None]]) -> dict[uuid.UUID, str | None]:
        with self._conn_lock:
            try:
                if self._conn is None:
                    self._conn = self._connect()
                return self._store.renew_runs_on(self._conn, progress, self._lease_seconds)
            except psycopg.Error:
                self._close_connection()  # opened again on the next pass
                raise

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass

    def stop(self) -> None:
        self._stopped.set()
        with self._conn_lock:
            self._close_connection()

    def _keep(self) -> None:
        while not self._stopped.wait(self._renew_seconds):
            try:
                self.renew_now()
            except (psycopg.Error, PoolTimeout) as exc:
                # Leases outlive a few missed renewals (lease >= 3 x renew).
                log.warning("lease renewal failed", extra={"error_class": type(exc).__name__})
            except Exception:  # noqa: BLE001 - the keeper must outlive any one bad pass
                log.exception("lease renewal crashed")


class ReplyControl:
    """The replies a session delete must respect (sessions.service.Replies), from the runs table:
    so a delete sees and stops replies written by any process."""

    def __init__(self, store: RunStore, *, stop_wait_seconds: float) -> None:
        self._store = store
        self._stop_wait = stop_wait_seconds

    def is_writing(self, conn: Connection, user_id: str, session_id: str) -> bool:
        return self._store.live_on(conn, user_id, session_id)

    def stop(self, user_id: str, session_id: str) -> None:
        """Ask the reply's process to stop, and wait (FORCE_DELETE_WAIT_SECONDS at most) until it has."""
        if not self._store.request_cancel(user_id, session_id):
            return
        deadline = time.monotonic() + self._stop_wait
        while self._store.run_is_live(user_id, session_id) and time.monotonic() < deadline:
            time.sleep(0.05)  # the owner notices within RUN_RENEW_SECONDS, then ends the run

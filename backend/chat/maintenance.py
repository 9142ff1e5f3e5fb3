"""Upkeep that keeps sessions consistent after crashes, in every server process.

- Runs whose process died (lease expired): bring message_count level with the
  history the dead run left, and free the session (the run is kept as interrupted).
- Messages queued in a session with no live run (its process died): start them.
- Ended runs past RUN_REPLAY_SECONDS: forget them (their text and terminal event).
- Sessions with messages but still the default name: name them.
- LangGraph threads with no session (crashes, older versions): delete them.
- Recovery points (undo of a delete) past their expiry: delete them.
- Retention, when configured: sessions inactive for RETENTION_INACTIVE_DAYS
  (a small batch per pass, each as a single delete; once a pass finds less
  than a batch due, the next look is an hour later), audit rows older than
  AUDIT_RETENTION_DAYS.

It runs once shortly after start (the "on the next start" recovery), then on
a timer. Every step is safe to run in several processes at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from backend.chat.counts import MessageCounts
from backend.chat.namer import SessionNamer
from backend.chat.reply import INTERRUPTED_ERROR, RunFinal
from backend.chat.run_store import RunStore
from backend.sessions.cleanup import PurgeReport, SessionCleanup
from backend.sessions.service import SessionService
from backend.sessions.store import SessionStore
from backend.sessions.thread_store import CHECKPOINT_TABLES, ThreadStore

log = logging.getLogger(__name__)

ORPHAN_BATCH = 500
RETENTION_BATCH = 100
# Finding that no session is due walks every session (about 100 ms of database
# time at 1,000,000 sessions), and every process of every host runs upkeep each
# MAINTENANCE_INTERVAL_SECONDS: once a pass has cleared the backlog, the next
# look waits this long (a retention counted in days can be an hour late).
RETENTION_RECHECK_SECONDS = 3600.0


class Maintenance:
    def __init__(
        self,
        *,
        session_store: SessionStore,
        runs: RunStore,
        threads: ThreadStore,
        counts: MessageCounts,
        namer: SessionNamer,
        sessions: SessionService,
        cleanup: SessionCleanup,
        interval_seconds: float,
        sweep_interval_seconds: float,
        orphan_min_age_seconds: float,
        retention_inactive_days: int | None = None,
        retention_archived_only: bool = False,
        audit_retention_days: int | None = None,
        purge_events: Callable[[], int] | None = None,
        purge_usage: Callable[[], int] | None = None,
        interrupted_usage: Callable[[dict, dict], list[dict]] | None = None,
        purge_sign_ins: Callable[[], int] | None = None,
        run_replay_seconds: float = 600.0,
        keep_interrupted_run: Callable[[dict], None] | None = None,
        start_queued: Callable[[str, str], bool] | None = None,
        owner: str = "upkeep",
        claim_seconds: float = 15.0,
    ) -> None:
        self._session_store = session_store
        self._runs = runs
        self._threads = threads
        self._counts = counts
        self._namer = namer
        self._sessions = sessions
        self._cleanup = cleanup
        self._retention_days = retention_inactive_days
        self._retention_archived_only = retention_archived_only
        self._audit_retention_days = audit_retention_days
        self._purge_events = purge_events
        self._purge_usage = purge_usage
        self._interrupted_usage = interrupted_usage
        self._purge_sign_ins = purge_sign_ins
        self._run_replay_seconds = run_replay_seconds
        self._keep_interrupted_run = keep_interrupted_run  # UnfinishedReplies.keep_interrupted
        self._start_queued = start_queued  # ChatService.start_queued
        self._owner = owner
        self._claim_seconds = claim_seconds
        self._interval = interval_seconds
        self._sweep_interval = sweep_interval_seconds
        self.orphan_min_age_seconds = orphan_min_age_seconds
        self.retention_recheck_seconds = RETENTION_RECHECK_SECONDS
        self._retention_cleared_at: float | None = None  # when a pass last found less than a batch due
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def reconcile_runs(self) -> int:
        """Finish runs whose process died: the user's message and the text written so far are kept
        (the reply marked interrupted), and the run ends as interrupted for its readers. Returns how many."""
        finished = 0
        for run in self._runs.expired_runs():
            claimed = self._runs.claim_expired_run(run["run_id"], self._owner, self._claim_seconds)
            if claimed is None:
                continue  # another process is finishing it
            if self._keep_interrupted_run is not None:
                self._keep_interrupted_run(claimed)
            final = RunFinal("interrupted", "error", INTERRUPTED_ERROR).stored(run["run_id"], claimed["reply"])
            # The dead process's model call never reported: estimated from what it wrote.
            usage = self._interrupted_usage(run, claimed) if self._interrupted_usage is not None else None
            self._counts.end_run_and_count_messages(run["user_id"], run["session_id"], run["run_id"], "error",
                                                    final=final, usage=usage)
            finished += 1
        if finished:
            log.info("expired runs reconciled", extra={"runs": finished})
        return finished

    def start_stalled_queues(self) -> int:
        """Start messages queued in sessions with no live run (their run's process died, or the
        start waited for the user's cap). Returns how many started."""
        if self._start_queued is None:
            return 0
        started = 0
        for queue in self._runs.stalled_queues():
            started += bool(self._start_queued(queue["user_id"], queue["session_id"]))
        return started

    def purge_ended_runs(self) -> int:
        """Forget runs that ended before the replay window. Returns how many."""
        return self._runs.purge_ended_runs(self._run_replay_seconds)

    def name_unnamed(self) -> int:
        """Queue naming for sessions whose naming was lost. Returns how many were queued."""
        rows = self._session_store.unnamed_sessions()
        for row in rows:
            self._namer.submit(row["user_id"], row["session_id"])
        return len(rows)

    def sweep_orphans(self, min_age_seconds: float | None = None, max_threads: int = 10 * ORPHAN_BATCH) -> dict:
        """Delete LangGraph threads that have no session. Returns what was removed."""
        min_age = self.orphan_min_age_seconds if min_age_seconds is None else min_age_seconds
        report = {"threads": 0, "rows": {table: 0 for table in CHECKPOINT_TABLES}}
        seen: set[str] = set()
        while report["threads"] < max_threads:
            batch = [t for t in self._threads.orphan_threads(min_age, ORPHAN_BATCH) if t not in seen]
            if not batch:
                break
            for thread_id in batch:
                seen.add(thread_id)
                counts = self._threads.delete_orphan_thread(thread_id)
                if any(counts.values()):
                    report["threads"] += 1
                    for table, n in counts.items():
                        report["rows"][table] += n
        if report["threads"]:
            log.info("orphaned threads removed", extra={"threads": report["threads"], "rows_deleted": report["rows"]})
        return report

    def apply_retention(self) -> PurgeReport | None:
        """One small batch of retention deletes per pass: no long locks, no long passes.
        Returns what the session retention did, None when it did not look."""
        report = None
        cleared = self._retention_cleared_at
        if self._retention_days and (cleared is None or time.monotonic() - cleared >= self.retention_recheck_seconds):
            report = self._cleanup.purge_inactive(
                inactive_days=self._retention_days, archived_only=self._retention_archived_only,
                max_sessions=RETENTION_BATCH,
            )
            self._retention_cleared_at = time.monotonic() if report.sessions + report.busy < RETENTION_BATCH else None
        if self._audit_retention_days:
            self._cleanup.purge_audit_rows(self._audit_retention_days)
        if self._purge_events:
            self._purge_events()  # live events past EVENTS_RETENTION_SECONDS
        if self._purge_usage:
            self._purge_usage()  # expired quota reservations; ledger rows past USAGE_RETENTION_DAYS
        if self._purge_sign_ins:
            self._purge_sign_ins()  # cookie sign-ins that ended
        return report

    def run_once(self, *, sweep: bool) -> None:
        self.reconcile_runs()
        self.start_stalled_queues()
        self.purge_ended_runs()
        self.name_unnamed()
        self._sessions.purge_expired_recovery_points()
        self.apply_retention()
        if sweep:
            self.sweep_orphans()

    def start(self) -> None:
        if self._interval <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="chat-maintenance", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopped.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _loop(self) -> None:
        last_sweep = float("-inf")  # the first pass sweeps too
        delay = min(1.0, self._interval)  # first pass soon after start: recovery from the last crash
        while not self._stopped.wait(delay):
            delay = self._interval
            sweep = self._sweep_interval > 0 and time.monotonic() - last_sweep >= self._sweep_interval
            try:
                self.run_once(sweep=sweep)
                if sweep:
                    last_sweep = time.monotonic()
            except Exception:  # noqa: BLE001 - upkeep must outlive any one bad pass
                log.exception("maintenance pass failed")

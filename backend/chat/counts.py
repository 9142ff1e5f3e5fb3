"""Where message_count moves: at the end of every run, level with the conversation.

A turn's messages reach the thread through LangGraph's checkpoint writes; the
count follows when the run ends, in one transaction with the run row's
delete, so a crash leaves either both or neither (a later reconcile of the
expired run repairs the rest). A turn that measured the checkpoint it wrote
(SessionCheckpointSaver) ends in one statement (sql/018) if that checkpoint is
still the thread's latest; otherwise, and for runs that ended any other way,
the history is read back under the session's lock.
"""

from __future__ import annotations

import uuid

from psycopg_pool import ConnectionPool

from backend.chat.checkpointer import WrittenCheckpoint
from backend.chat.run_store import RunStore
from backend.messages.store import MessageStore
from backend.sessions.store import SessionStore
from backend.sessions.thread_store import ThreadStore, history_bytes
from backend.usage.store import UsageStore


class MessageCounts:
    def __init__(self, pool: ConnectionPool, sessions: SessionStore, runs: RunStore, threads: ThreadStore) -> None:
        self._pool = pool
        self._sessions = sessions
        self._runs = runs
        self._threads = threads

    def end_run_and_count_messages(
        self, user_id: str, session_id: str, run_id: uuid.UUID | None, outcome: str = "error",
        written: WrittenCheckpoint | None = None, final: str | None = None, usage: list[dict] | None = None,
    ) -> tuple[dict | None, bool]:
        """End the run and bring message_count (and history_bytes) level with the thread's history, atomically.

        `run_id` None ends whichever run of the session expired (its process
        died). `outcome` (done, error, cancelled) is what the run.finished
        event says; a reply that finished marks the session unread.
        `written`: the last checkpoint the run wrote, measured; used if it is still the latest.
        `final` (RunFinal.stored): how the run is kept for its readers (sql/023).
        `usage`: the run's ledger rows (UsageService.ledger_rows), recorded with the end, in the
        same statement or transaction (and the run's quota reservation released).
        Returns the session row (None if the session is gone), and whether a message is queued
        behind the run (its ender starts it).
        """
        if written is not None and run_id is not None:
            row, counted, queued = self._runs.end_counted_run(
                user_id, session_id, run_id, outcome, checkpoint_id=written.checkpoint_id,
                message_count=written.message_count, history_bytes=written.history_bytes, final=final,
                usage=usage,
            )
            if row is None or counted:
                return row, queued
            usage = None  # recorded by that statement all the same
        with self._pool.connection() as conn, conn.transaction():
            if usage or run_id is not None:  # billing outlives the session: recorded even if it is gone
                UsageStore.record_on(conn, usage or [], run_id)
            # With the session row locked no checkpoint write can land
            # (SessionCheckpointSaver), so the history read below is final.
            row = self._sessions.lock_and_flag_unread(conn, user_id, session_id, unread=outcome == "done")
            if row is None:
                return None, False
            if run_id is not None:
                self._runs.end_run(conn, run_id, outcome, final)
            elif not self._runs.end_expired_runs(conn, user_id, session_id, outcome):
                return row, False  # a live run took over meanwhile; it will count
            queued = self._runs.has_queued(conn, user_id, session_id)
            if row["switched_to"]:
                return row, queued  # the run wrote nothing after a switch, which set the counts
            # The history as written (by anything: a dead process, another saver): its rows follow it.
            path = self._threads.visible_history(conn, row["thread_id"])
            MessageStore.sync_path(conn, row, path)
            count, size = len(path), history_bytes(path)
            delta = count - row["message_count"]
            if delta > 0:
                self._sessions.increment_message_count(conn, user_id, session_id, delta)
            elif delta < 0:  # only a custom graph that removes messages gets here
                self._sessions.set_message_count(conn, row["id"], count)
            return self._sessions.set_history_bytes(conn, row["id"], size), queued

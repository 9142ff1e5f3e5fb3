"""LangGraph's PostgresSaver, made to write only into sessions that still exist.

Every checkpoint write runs in a transaction that first takes FOR KEY SHARE on
the session's row. A delete holds FOR UPDATE on that row, and the two
conflict: a write either commits before the delete looks at the thread's
rows (and is deleted with them) or waits, finds the row gone, and fails with
SessionGone. So a late write can never bring a deleted session back, whatever
process it comes from. The writes themselves are the library's own code.

A turn reads its thread's latest checkpoint on the pooled connection that took
its lease, right after (`latest_checkpoint_query`), and runs its graph inside
`preloaded(...)`: the run's first load of that thread is served from that row,
with the library's own conversion, instead of waiting for a pooled connection
again (in a burst of turns, that wait was most of the load's time).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
)
from langgraph.checkpoint.postgres import PostgresSaver
from psycopg import Connection, Cursor
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

from backend.sessions.store import SessionStore


class SessionGone(Exception):
    """The session was deleted; its thread takes no more writes."""


# The same query as the library's get_tuple for a thread's latest checkpoint (root namespace).
LATEST_CHECKPOINT_WHERE = "WHERE thread_id = %s AND checkpoint_ns = %s ORDER BY checkpoint_id DESC LIMIT 1"


@dataclass(slots=True)
class PreloadedCheckpoint:
    """A thread's latest checkpoint row (None: the thread has none yet), read under the turn's lease."""

    thread_id: str
    row: dict | None
    used: bool = False


_preloaded: ContextVar[PreloadedCheckpoint | None] = ContextVar("preloaded_checkpoint", default=None)


class SessionCheckpointSaver(PostgresSaver):
    conn: ConnectionPool

    def __init__(self, pool: ConnectionPool) -> None:
        super().__init__(pool)

    def latest_checkpoint_query(self, thread_id: str) -> tuple[str, tuple[str, str]]:
        """The library's read of this thread's latest checkpoint, for a caller that runs it on a
        connection it already holds (its row goes to `preloaded`)."""
        return self.SELECT_SQL + LATEST_CHECKPOINT_WHERE, (thread_id, "")

    @contextmanager
    def preloaded(self, checkpoint: PreloadedCheckpoint | None) -> Iterator[None]:
        """Within this block, the first load of `checkpoint.thread_id`'s latest checkpoint is
        served from its row. Only once: later loads (after the run's own writes) read the table."""
        token = _preloaded.set(checkpoint)
        try:
            yield
        finally:
            _preloaded.reset(token)

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        checkpoint = _preloaded.get()
        configurable = config["configurable"]
        if (checkpoint is not None and not checkpoint.used and configurable["thread_id"] == checkpoint.thread_id
                and not configurable.get("checkpoint_ns") and not get_checkpoint_id(config)):
            checkpoint.used = True
            value = checkpoint.row
            if value is None:
                return None
            # Older checkpoints keep their pending sends elsewhere: the library migrates them on load.
            if not (value["checkpoint"]["v"] < 4 and value["parent_checkpoint_id"]):
                return self._load_checkpoint_tuple(value)
        return super().get_tuple(config)

    @contextmanager
    def _session_locked(self, config: RunnableConfig) -> Iterator[Connection]:
        thread_id = config["configurable"]["thread_id"]
        with self.conn.connection() as conn, conn.transaction():
            if not SessionStore.lock_for_checkpoint_write(conn, thread_id):
                raise SessionGone(thread_id)
            yield conn

    def put(
        self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata, new_versions: ChannelVersions
    ) -> RunnableConfig:
        with self._session_locked(config) as conn:
            return PostgresSaver(conn, serde=self.serde).put(config, checkpoint, metadata, new_versions)

    def put_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        with self._session_locked(config) as conn:
            PostgresSaver(conn, serde=self.serde).put_writes(config, writes, task_id, task_path)

    @contextmanager
    def _cursor(self, *, pipeline: bool = False) -> Iterator[Cursor[DictRow]]:
        # The base class holds one threading.Lock around every call, which a
        # single shared connection needs; on a pool it would serialise every
        # read of every stream in the process.
        with self.conn.connection() as conn:
            if pipeline:
                with conn.pipeline(), conn.cursor(binary=True, row_factory=dict_row) as cur:
                    yield cur
            else:
                with conn.cursor(binary=True, row_factory=dict_row) as cur:
                    yield cur

"""LangGraph's PostgresSaver, made to write only into sessions that still exist.

Every checkpoint write runs in a transaction that first takes FOR KEY SHARE on
the session's row. A delete holds FOR UPDATE on that row, and the two
conflict: a write either commits before the delete looks at the thread's
rows (and is deleted with them) or waits, finds the row gone, and fails with
SessionGone. So a late write can never bring a deleted session back, whatever
process it comes from. The writes themselves are the library's own code.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import ChannelVersions, Checkpoint, CheckpointMetadata
from langgraph.checkpoint.postgres import PostgresSaver
from psycopg import Connection, Cursor
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

from backend.sessions.store import SessionStore


class SessionGone(Exception):
    """The session was deleted; its thread takes no more writes."""


class SessionCheckpointSaver(PostgresSaver):
    conn: ConnectionPool

    def __init__(self, pool: ConnectionPool) -> None:
        super().__init__(pool)

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

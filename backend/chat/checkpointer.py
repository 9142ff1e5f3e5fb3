"""LangGraph's PostgresSaver, made to write only into sessions that still exist.

Every checkpoint write runs in a transaction that first takes FOR KEY SHARE on
the session's row. A delete holds FOR UPDATE on that row, and the two
conflict: a write either commits before the delete looks at the thread's
rows (and is deleted with them) or waits, finds the row gone, and fails with
SessionGone. So a late write can never bring a deleted session back, whatever
process it comes from. The writes themselves are the library's own code.

A turn tells its saver what it knows (`for_run`, a RunCheckpoints): its
thread's latest checkpoint, read on the pooled connection that took its lease,
right after (`latest_checkpoint_query`), serves the run's first load of that
thread instead of a second wait for a pooled connection and round trip (in a
burst of turns, that wait was most of the load's time). And each checkpoint
the run writes is measured as the session counts it (the messages a client
sees, their bytes) from the messages in hand, so the turn's end need not read
the conversation back (sql/018 checks it is still the latest).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import BaseMessage
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

from backend.messages.store import MessageStore
from backend.sessions.store import SessionStore
from backend.sessions.thread_store import ThreadStore, history_bytes
from llm.messages import checkpoint_messages, visible_messages


class SessionGone(Exception):
    """The session was deleted; its thread takes no more writes."""


# The same query as the library's get_tuple for a thread's latest checkpoint (root namespace).
LATEST_CHECKPOINT_WHERE = "WHERE thread_id = %s AND checkpoint_ns = %s ORDER BY checkpoint_id DESC LIMIT 1"


@dataclass(frozen=True, slots=True)
class WrittenCheckpoint:
    """A checkpoint a run wrote, measured as its session counts it."""

    checkpoint_id: str
    message_count: int
    history_bytes: int
    # The turn's messages as written: its user message and the reply after it (None: none yet).
    user_message_id: str | None = None
    assistant_message_id: str | None = None


@dataclass(slots=True)
class RunCheckpoints:
    """What a run's saver knows of its thread: the latest checkpoint's row as read with the
    run's lease (None: the thread had none), served to the run's first load only; and the last
    checkpoint the run wrote."""

    thread_id: str
    start_row: dict | None
    start_used: bool = False
    written: WrittenCheckpoint | None = None
    # The ids of the path the thread's checkpoint holds (those the run loaded, then wrote).
    path_ids: list[str] | None = None


_current_run: ContextVar[RunCheckpoints | None] = ContextVar("run_checkpoints", default=None)


def _root_of(run: RunCheckpoints | None, config: RunnableConfig) -> bool:
    """Whether `config` is about `run`'s thread, root namespace."""
    configurable = config["configurable"]
    return run is not None and configurable["thread_id"] == run.thread_id and not configurable.get("checkpoint_ns")


class SessionCheckpointSaver(PostgresSaver):
    conn: ConnectionPool

    def __init__(self, pool: ConnectionPool) -> None:
        super().__init__(pool)

    def latest_checkpoint_query(self, thread_id: str) -> tuple[str, tuple[str, str]]:
        """The library's read of this thread's latest checkpoint, for a caller that runs it on a
        connection it already holds (its row goes to RunCheckpoints.start_row)."""
        return self.SELECT_SQL + LATEST_CHECKPOINT_WHERE, (thread_id, "")

    @contextmanager
    def for_run(self, run: RunCheckpoints | None) -> Iterator[None]:
        """Run a graph in this block to have its saver use and fill `run`."""
        token = _current_run.set(run)
        try:
            yield
        finally:
            _current_run.reset(token)

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        run = _current_run.get()
        if not _root_of(run, config):
            run = None
        if run is not None and not run.start_used and not get_checkpoint_id(config):
            run.start_used = True  # later loads come after the run's own writes: read the table
            saved = self._start_tuple(run)
        else:
            saved = super().get_tuple(config)
        # Every message loaded has an id (checkpoint_messages), and a run knows the path it loaded.
        messages = checkpoint_messages(saved.checkpoint if saved is not None else None)
        if run is not None and run.path_ids is None and messages is not None:
            run.path_ids = [m["id"] for m in visible_messages(messages)]
        return saved

    def _start_tuple(self, run: RunCheckpoints) -> CheckpointTuple | None:
        """The checkpoint `run` starts from, from the row read with its lease."""
        value = run.start_row
        if value is None:
            return None
        # Older checkpoints keep their pending sends elsewhere: the library migrates them on load.
        if value["checkpoint"]["v"] < 4 and value["parent_checkpoint_id"]:
            return super().get_tuple({"configurable": {"thread_id": run.thread_id, "checkpoint_ns": ""}})
        return self._load_checkpoint_tuple(value)

    def start_messages(self, run: RunCheckpoints | None) -> list[BaseMessage]:
        """The messages of the checkpoint `run` starts from (read with its lease), without using
        it up: the run's own first load still gets it."""
        saved = self._start_tuple(run) if run is not None else None
        return checkpoint_messages(saved.checkpoint if saved is not None else None) or []

    @contextmanager
    def _session_locked(self, config: RunnableConfig) -> Iterator[tuple[Connection, dict]]:
        thread_id = config["configurable"]["thread_id"]
        with self.conn.connection() as conn, conn.transaction():
            session = SessionStore.lock_for_checkpoint_write(conn, thread_id)
            if session is None:
                raise SessionGone(thread_id)
            yield conn, session

    def put(
        self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata, new_versions: ChannelVersions
    ) -> RunnableConfig:
        run = _current_run.get()
        run = run if _root_of(run, config) else None
        messages = checkpoint_messages(checkpoint)
        # Anything but a plain list (a custom channel type) is not a conversation this backend reads.
        path = (visible_messages(messages)
                if messages is not None and not config["configurable"].get("checkpoint_ns") else None)
        with self._session_locked(config) as (conn, session):
            saved = PostgresSaver(conn, serde=self.serde).put(config, checkpoint, metadata, new_versions)
            if path is not None:
                self._sync_messages(conn, session, run, path)
        if run is not None:
            run.written = self._measured(checkpoint["id"], path) if path is not None else None
        return saved

    @staticmethod
    def _sync_messages(conn: Connection, session: dict, run: RunCheckpoints | None, path: list[dict]) -> None:
        """chat_messages follows the checkpoint's path, in the checkpoint's transaction. A run that
        knows the path its thread held says so; otherwise (or after a switch) the rows say."""
        trusted = run is not None and run.path_ids is not None and session["messages_indexed"] \
            and not session["switched_to"]
        MessageStore.sync_path(conn, session, path, run.path_ids if trusted else None)
        if run is not None:
            run.path_ids = [m["id"] for m in path]

    @staticmethod
    def _measured(checkpoint_id: str, path: list[dict]) -> WrittenCheckpoint:
        user = next((i for i in range(len(path) - 1, -1, -1) if path[i]["role"] == "user"), None)
        reply = path[-1]["id"] if path and path[-1]["role"] == "assistant" and user is not None else None
        return WrittenCheckpoint(checkpoint_id, len(path), history_bytes(path),
                                 path[user]["id"] if user is not None else None, reply)

    def index_thread(self, thread_id: str) -> bool:
        """Fill chat_messages from the thread's latest checkpoint (a session from before it
        existed); False if the session is gone."""
        config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
        try:
            with self._session_locked(config) as (conn, session):
                if not session["messages_indexed"]:
                    MessageStore.sync_path(conn, session, ThreadStore.visible_history(conn, thread_id))
        except SessionGone:
            return False
        return True

    def forget_message(self, thread_id: str, message_id: str) -> None:
        """Drop a message's row (a rolled-back question): it was never an answer's branch."""
        config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
        try:
            with self._session_locked(config) as (conn, session):
                MessageStore.delete_message(conn, session["id"], message_id)
        except SessionGone:
            pass

    def put_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        with self._session_locked(config) as (conn, _session):
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

"""Following a run as Server-Sent Events, from any process, from any cursor.

A run written by this process is followed from memory (its ReplyBuffer), to the
character. A run written elsewhere, or still queued, is followed from its rows:
the text its process wrote there (every RUN_RENEW_SECONDS), read every
RUN_POLL_SECONDS, switching to memory if the run starts here; once it ended, the
whole reply and its terminal event from chat_runs (sql/023). Either way a
reader gets the text after its cursor exactly once, then the terminal event the
run's own stream got. Another user's run answers as a missing one.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator

from backend.chat.reply import INTERRUPTED_ERROR, chars_after, terminal_cursor, token_cursor
from backend.chat.run_store import RunStore
from backend.chat.runs import ActiveRun, RunLeases
from backend.errors import ApiError

SESSION_DELETED = {"code": "session_deleted", "message": "The session was deleted while the reply was being written"}


def sse_event(event: str, data: dict, event_id: int | None = None) -> bytes:
    head = "" if event_id is None else f"id: {event_id}\n"
    return f"{head}event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def run_event(run_id, session_id: str, status: str) -> bytes:
    """A run's stream starts with this: which run it follows (cursor 0)."""
    return sse_event("run", {"run_id": str(run_id), "session_id": session_id, "status": status}, 0)


def run_not_found() -> ApiError:
    return ApiError(404, "run_not_found", "No such run in this session (or it ended too long ago to replay)")


class RunReaders:
    def __init__(
        self, *, runs: RunStore, leases: RunLeases, replay_seconds: float, poll_seconds: float,
        heartbeat_seconds: float,
    ) -> None:
        self._runs = runs
        self._leases = leases
        self._replay = replay_seconds
        self._poll = poll_seconds
        self._heartbeat = heartbeat_seconds

    def local(self, user_id: str, session_id: str, run_id: uuid.UUID) -> ActiveRun | None:
        """The run, if this process is writing it for this user and session."""
        run = self._leases.get(run_id)
        if run is not None and run.user_id == user_id and run.session_id == session_id:
            return run
        return None

    def join(self, user_id: str, session_id: str, run_id: uuid.UUID, cursor: int | None) -> Iterator[bytes]:
        """The run's stream from after `cursor` (None: from the start, with its `run` event).
        Raises 404 run_not_found before any byte when there is no such run to follow."""
        after = 0 if cursor is None else chars_after(cursor)
        local = self.local(user_id, session_id, run_id)
        if local is not None:
            reply = local.reply
            if reply.final is not None and after > reply.chars:
                return iter([b": stream open\n\n"])  # the terminal event was seen already
            head = run_event(run_id, session_id, "running") if cursor is None else b""
            return _chain(b": stream open\n\n" + head, self.follow(local, after))
        row = self._runs.read_run(user_id, session_id, run_id, self._replay)
        if row is None:
            raise run_not_found()
        status = row["status"] if row["final_event"] is not None or row["status"] == "queued" else "running"
        head = run_event(run_id, session_id, status) if cursor is None else b""
        return _chain(b": stream open\n\n" + head, self.follow_stored(user_id, session_id, run_id, row, after))

    def follow(self, run: ActiveRun, after: int, *, on_leave: Callable[[], None] | None = None) -> Iterator[bytes]:
        """A run of this process from `after` characters on: `token` events as text arrives (what
        queued while the last write was in progress goes as one), then the terminal `done` or
        `error`; heartbeats while the model is quiet. `on_leave`: called if the reader goes away
        before the end (RUN_ON_DISCONNECT=cancel). The run's `read_upto` says how far its
        furthest reader has read."""
        reply = run.reply
        finished = False
        try:
            while True:
                text, final = reply.read(after, self._heartbeat)
                if text:
                    after += len(text)
                    run.read_upto = max(run.read_upto, after)
                    chunk = sse_event("token", {"content": text}, token_cursor(after))
                elif final is None:
                    yield b": keep-alive\n\n"
                    continue
                else:
                    chunk = b""
                if final is not None and after >= reply.chars:
                    finished = True
                    yield chunk + sse_event(final[0], final[1], terminal_cursor(after))
                    return
                yield chunk
        finally:
            if on_leave is not None and not finished:
                on_leave()

    def follow_stored(
        self, user_id: str, session_id: str, run_id: uuid.UUID, row: dict, after: int,
    ) -> Iterator[bytes]:
        """A run queued or written by another process, from its rows: new text as its process writes
        it, then the end; from memory once it runs here."""
        quiet_since = time.monotonic()
        while True:
            text = row["reply"]
            if len(text) > after:
                piece, after = text[after:], len(text)
                quiet_since = time.monotonic()
                yield sse_event("token", {"content": piece}, token_cursor(after))
            if row["final_event"] is not None:
                if after <= len(text):  # not seen yet
                    yield sse_event(row["final_event"], row["final_data"], terminal_cursor(len(text)))
                return
            if row["status"] == "interrupted":  # its process died: upkeep keeps it as interrupted
                yield sse_event("error", {**INTERRUPTED_ERROR, "run_id": str(run_id)}, terminal_cursor(after))
                return
            if time.monotonic() - quiet_since >= self._heartbeat:
                quiet_since = time.monotonic()
                yield b": keep-alive\n\n"
            time.sleep(self._poll)
            local = self.local(user_id, session_id, run_id)
            if local is not None:  # it started here (a queued run): to the character, from memory
                yield from self.follow(local, after)
                return
            row = self._runs.read_run(user_id, session_id, run_id, self._replay)
            if row is None:  # the session was deleted meanwhile: its runs went with it
                yield sse_event("error", {**SESSION_DELETED, "run_id": str(run_id)}, terminal_cursor(after))
                return


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest

"""A chat turn: take the session, run the graph, stream its tokens, count, release.

The graph runs in a worker thread of its own (a greenlet under the gevent
server) and hands tokens to the response through a queue, so the response can
send heartbeats while the model is quiet, and a client that goes away cancels
the reply without waiting for it. Tokens that queued up while the previous
event was being written go out as one event (a lone token is never held back),
and a client that stops reading can hold at most STREAM_BUFFER_CHARS of reply
before the reply is stopped. Whatever happens, the worker ends the run with
MessageCounts.end_run_and_count_messages, which makes message_count equal to
the history the turn left behind.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import openai
import psycopg
from langchain_core.messages import AIMessage, AIMessageChunk
from langgraph.graph.state import CompiledStateGraph

from backend.auth.service import AuthUser
from backend.chat.checkpointer import RunCheckpoints, SessionGone
from backend.chat.counts import MessageCounts
from backend.chat.namer import SessionNamer
from backend.chat.run_store import RunStore
from backend.chat.runs import ActiveRun, RunLeases
from backend.errors import ApiError, NotFound
from backend.sessions.service import SessionService
from llm.chat_model import ChatModel, ReplyCancelled
from llm.graph import ChatContext
from llm.messages import text_of, user_message

log = logging.getLogger(__name__)

# Why a reply stopped early -> the `error` event a listening client gets.
CANCEL_ERRORS = {
    "cancel_requested": ("cancelled", "The reply was stopped: the session is being deleted"),
    "lease_lost": ("session_deleted", "The session was deleted while the reply was being written"),
    "client_disconnected": ("cancelled", "The client went away"),
    "slow_client": ("slow_client", "The reply was stopped: the client did not read it fast enough"),
    "turn_deadline": ("turn_too_long", "The reply was stopped: it took longer than this server allows"),
}


def sse_event(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


@dataclass
class Turn:
    user: AuthUser
    session: dict
    run: ActiveRun
    query: str
    # What the run's saver knows of its thread: the checkpoint read with the lease, the last one written.
    checkpoints: RunCheckpoints | None = None
    events: queue.Queue = field(default_factory=queue.Queue)
    # Characters of reply text queued and sent: each written by one side only
    # (the graph's thread, the response), so their difference needs no lock.
    queued_chars: int = 0
    sent_chars: int = 0


class ChatService:
    def __init__(
        self,
        *,
        sessions: SessionService,
        runs: RunStore,
        counts: MessageCounts,
        leases: RunLeases,
        namer: SessionNamer,
        graph: CompiledStateGraph,
        model: ChatModel,
        stream_modes: list[str],
        system_prompt: str | None,
        heartbeat_seconds: float,
        prune_history: bool,
        stream_buffer_chars: int = 65_536,
        max_context_tokens: int | None = None,
        max_history_messages: int | None = None,
        max_history_bytes: int | None = None,
        max_replies_per_user: int | None = None,
    ) -> None:
        self._sessions = sessions
        self._runs = runs
        self._counts = counts
        self._leases = leases
        self._namer = namer
        self._graph = graph
        self._stream_modes = stream_modes
        self._model = model
        self._system_prompt = system_prompt
        self._heartbeat = heartbeat_seconds
        self._prune_history = prune_history
        self._buffer_limit = stream_buffer_chars
        self._max_context_tokens = max_context_tokens
        self._max_history = max_history_messages or 2**31 - 1
        self._max_bytes = max_history_bytes or 2**62
        self._max_runs = max_replies_per_user or 2**31 - 1

    def start_turn(self, user: AuthUser, session_id: str, query: str) -> Turn:
        """Everything that can fail with a status code, before any byte is streamed."""
        try:
            # The common case, a session that exists: one pooled connection, two statements.
            session, run, checkpoints = self._start_in_session(user, session_id)
            if session is None:  # ids are made by the frontend: created on first use
                self._sessions.get_or_create(user, session_id)
                session, run, checkpoints = self._start_in_session(user, session_id)
        except psycopg.errors.ForeignKeyViolation:
            raise NotFound("The session was deleted") from None
        if session is None:  # deleted again between its creation and the start
            raise NotFound("The session was deleted")
        if session["is_archived"]:
            raise ApiError(409, "session_archived", "This session is archived; unarchive it to send messages")
        if session["message_count"] >= self._max_history:
            raise ApiError(409, "session_full", f"This conversation has reached {self._max_history} messages; "
                           "start a new session to go on")
        if session["history_bytes"] >= self._max_bytes:
            raise ApiError(409, "session_full", "This conversation has reached the most text a session may hold; "
                           "start a new session to go on")
        if run is None and self._runs.live_runs(user.id) >= self._max_runs:
            raise ApiError(
                429, "too_many_streams",
                f"You have {self._max_runs} replies being written already; wait for one to finish",
                headers={"Retry-After": "5"},
            )
        if run is None:
            raise ApiError(
                409, "session_busy",
                "A reply is still being written in this session; wait for it to finish before sending another message",
            )
        if session["message_count"] == 0 and session["name_source"] == "default":
            self._namer.submit(user.id, session_id, query)
        turn = Turn(user=user, session=session, run=run, query=query, checkpoints=checkpoints)
        # Started now, not when the response is first read: a turn whose
        # response is never read still ends and frees its session.
        try:
            threading.Thread(target=self._run_turn, args=(turn,), name="chat-turn", daemon=True).start()
        except RuntimeError:  # no thread to be had: free the session again
            self._leases.forget(run)
            self._counts.end_run_and_count_messages(user.id, session_id, run.run_id)
            raise ApiError(503, "overloaded", "The server is too busy; try again shortly", headers={"Retry-After": "5"}) from None
        return turn

    def _start_in_session(
        self, user: AuthUser, session_id: str,
    ) -> tuple[dict | None, ActiveRun | None, RunCheckpoints | None]:
        """The session, its lease and, on the same pooled connection, the checkpoint the turn starts from."""
        checkpointer = self._graph.checkpointer
        session, run, row = self._leases.start_in_session(
            user.id, session_id, max_messages=self._max_history, max_bytes=self._max_bytes, max_runs=self._max_runs,
            then_read=lambda session: checkpointer.latest_checkpoint_query(session["thread_id"]),
        )
        return session, run, RunCheckpoints(session["thread_id"], row) if run is not None else None

    def stream(self, turn: Turn) -> Iterator[bytes]:
        """The SSE body, as bytes (the route passes it straight to the server): tokens, then
        `done` or `error`; heartbeats while the model is quiet."""
        events = turn.events
        finished = False
        try:
            yield b": stream open\n\n"
            while True:
                try:
                    kind, payload = events.get(timeout=self._heartbeat)
                except queue.Empty:
                    yield b": keep-alive\n\n"
                    continue
                if kind != "token":
                    finished = True
                    yield sse_event(kind, payload)
                    return
                # Whatever else is queued already joins this event: one write
                # instead of many when the stream falls behind, no wait otherwise.
                pieces, end = [payload], None
                while end is None:
                    try:
                        kind, payload = events.get_nowait()
                    except queue.Empty:
                        break
                    if kind == "token":
                        pieces.append(payload)
                    else:
                        end = sse_event(kind, payload)
                text = pieces[0] if len(pieces) == 1 else "".join(pieces)
                turn.sent_chars += len(text)
                if end is None:
                    yield sse_event("token", {"content": text})
                else:
                    finished = True
                    yield sse_event("token", {"content": text}) + end
                    return
        finally:
            if not finished:
                turn.run.cancel.set("client_disconnected")

    def _send_token(self, turn: Turn, text: str) -> None:
        turn.queued_chars += len(text)
        if turn.queued_chars - turn.sent_chars > self._buffer_limit:
            # The client stopped reading: stop paying for a reply nobody takes.
            turn.run.cancel.set("slow_client")
            raise ReplyCancelled()
        turn.events.put(("token", text))

    def _run_turn(self, turn: Turn) -> None:
        run, started = turn.run, time.perf_counter()
        error: tuple[str, str] | None = None
        tokens = 0
        try:
            tokens = self._stream_graph(turn)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an `error` event
            error = self._describe_failure(run, exc)
        finally:
            # A session's first turn leaves one checkpoint: nothing to prune.
            if self._prune_history and turn.session["message_count"] > 0:
                self._prune(turn)
            outcome = "done" if error is None else ("cancelled" if run.cancel.is_set() else "error")
            try:
                session = self._counts.end_run_and_count_messages(
                    run.user_id, run.session_id, run.run_id, outcome,
                    written=turn.checkpoints.written if turn.checkpoints else None,
                )
            except Exception:  # noqa: BLE001 - a later reconcile repairs the count
                log.exception("finishing a run failed", extra={"session_id": run.session_id})
                session = None
                error = error or ("internal_error", "Something went wrong on our side")
            self._leases.forget(run)
        if error is None and session is None:
            error = CANCEL_ERRORS["lease_lost"]
        if error:
            turn.events.put(("error", {"code": error[0], "message": error[1]}))
        else:
            turn.events.put((
                "done",
                {"session_id": run.session_id, "message_count": session["message_count"],
                 "session_name": session["session_name"]},
            ))
        log.info(
            "turn finished",
            extra={
                "user_id": run.user_id, "session_id": run.session_id, "outcome": error[0] if error else "done",
                "tokens": tokens, "duration_ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )

    def _stream_graph(self, turn: Turn) -> int:
        """Run the graph, passing its tokens on; returns how many were sent."""
        run = turn.run
        sent = 0

        def emit(text: str | None) -> None:
            nonlocal sent
            if text:
                self._send_token(turn, text)
                sent += 1

        context = ChatContext(
            model=self._model, cancel=run.cancel, system_prompt=self._system_prompt, emit=emit,
            max_context_tokens=self._max_context_tokens,
        )
        config = {"configurable": {"thread_id": turn.session["thread_id"]}}
        last_reply = None
        stream = self._graph.stream(
            {"messages": [user_message(turn.query)]}, config, context=context, stream_mode=self._stream_modes,
            # Keeping only the latest checkpoint, the steps in between need not
            # be written at all: one write when the turn ends (also on error).
            # Full history keeps LangGraph's checkpoint per step, for time travel.
            durability="exit" if self._prune_history else "async",
        )
        with self._graph.checkpointer.for_run(turn.checkpoints):
            for mode, chunk in stream:
                if run.cancel.is_set():
                    raise ReplyCancelled()
                text = None
                if mode == "custom" and isinstance(chunk, dict) and isinstance(chunk.get("token"), str):
                    text = chunk["token"]
                elif mode == "messages":
                    message = chunk[0]
                    if isinstance(message, AIMessageChunk):
                        text = text_of(message)
                    elif isinstance(message, AIMessage):
                        last_reply = text_of(message)  # a whole reply; sent below if nothing streamed
                emit(text)
        if not sent and last_reply:
            self._send_token(turn, last_reply)
            sent = 1
        return sent

    def _prune(self, turn: Turn) -> None:
        """Drop the checkpoints this turn superseded (still under the run's lease,
        so no write of this thread runs meanwhile). The latest one holds the
        whole conversation; without pruning every turn keeps a full copy."""
        try:
            self._graph.checkpointer.prune([turn.session["thread_id"]], strategy="keep_latest")
        except Exception:  # noqa: BLE001 - a missed prune costs space, not correctness
            log.warning("pruning checkpoints failed", extra={"session_id": turn.run.session_id}, exc_info=True)

    @staticmethod
    def _describe_failure(run: ActiveRun, exc: Exception) -> tuple[str, str]:
        if run.cancel.is_set():  # whatever broke, it broke because we stopped it
            return CANCEL_ERRORS.get(run.cancel.reason or "", CANCEL_ERRORS["cancel_requested"])
        if isinstance(exc, SessionGone):
            return CANCEL_ERRORS["lease_lost"]
        if isinstance(exc, openai.APITimeoutError):
            return ("upstream_timeout", "The model did not answer in time")
        if isinstance(exc, openai.RateLimitError):
            return ("upstream_rate_limited", "The model is rate limited; try again shortly")
        if isinstance(exc, openai.APIError):
            log.warning("model call failed", extra={"error_class": type(exc).__name__})
            return ("upstream_error", "The model failed to answer")
        log.exception("turn failed", extra={"session_id": run.session_id, "error_class": type(exc).__name__})
        return ("internal_error", "Something went wrong on our side")

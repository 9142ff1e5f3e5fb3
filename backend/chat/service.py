"""A chat turn: take the session, run the graph, stream its tokens, count, release.

A turn is a run (its id in the lease row): the graph runs in a worker thread of
its own (a greenlet under the gevent server) and appends the reply to the run's
ReplyBuffer, which every reader in this process follows from its own cursor:
the stream that sent the message, and any tab that joins (backend/runs). The
stream sends heartbeats while the model is quiet; text that arrived while the
previous event was being written goes out as one event (a lone token is never
held back). A client that goes away leaves the run going to its end
(RUN_ON_DISCONNECT=continue) or stops it (cancel, where a client that stops
reading can also hold at most STREAM_BUFFER_CHARS of reply before the reply is
stopped). Whatever happens, the worker ends the run with
MessageCounts.end_run_and_count_messages, which makes message_count equal to
the history the turn left behind and keeps the run for late readers (sql/023).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import openai
import psycopg
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, RemoveMessage
from langgraph.graph.message import REMOVE_ALL_MESSAGES
from langgraph.graph.state import CompiledStateGraph

from backend.auth.service import AuthUser
from backend.chat.checkpointer import RunCheckpoints, SessionGone
from backend.chat.counts import MessageCounts
from backend.chat.follow import SESSION_DELETED, RunReaders, run_event, sse_event
from backend.chat.namer import SessionNamer
from backend.chat.reply import RunFinal
from backend.chat.run_store import RunStore
from backend.chat.runs import CANCEL_REASONS, ActiveRun, RunLeases
from backend.chat.unfinished import UnfinishedReplies, user_message_id
from backend.errors import ApiError, NotFound
from backend.messages.service import MessageService
from backend.sessions.service import SessionService
from backend.usage.service import UsageService
from llm.chat_model import ChatModel, ReplyCancelled
from llm.graph import ChatContext
from llm.messages import path_messages, text_of, user_message
from llm.usage import CallUsage, MeteredModel, estimate_tokens

log = logging.getLogger(__name__)

# Why a reply stopped early -> the `error` event a listening client gets.
CANCEL_ERRORS = {
    "cancel_requested": ("cancelled", "The reply was stopped: the session is being deleted"),
    "lease_lost": ("session_deleted", "The session was deleted while the reply was being written"),
    "client_disconnected": ("cancelled", "The client went away"),
    "slow_client": ("slow_client", "The reply was stopped: the client did not read it fast enough"),
    "turn_deadline": ("turn_too_long", "The reply was stopped: it took longer than this server allows"),
    "user_cancelled": ("cancelled", "The reply was stopped"),
    "interrupted_by_message": ("cancelled", "The reply was stopped: a new message was sent"),
    "rolled_back": ("cancelled", "The reply was withdrawn with its message: a new message replaced it"),
}
# Stops after which the text written so far is kept as the reply, marked stopped.
KEEPS_PARTIAL_REPLY = {"user_cancelled", "interrupted_by_message"}
# The multitask strategies that stop the session's current run for the new message; each is also
# the run's cancel reason (chat_session_runs.cancel_reason, runs.CANCEL_REASONS).
STOP_FOR_NEW_MESSAGE = frozenset({"interrupt", "rollback"})


def status_of_error(code: str) -> str:
    """A run's status in lists, from the code of the error that ended it."""
    return code if code in ("cancelled", "interrupted") else "error"


@dataclass(frozen=True)
class QueuedTurn:
    """A message queued behind the session's running reply (multitask_strategy=enqueue)."""

    user_id: str
    session_id: str
    run_id: uuid.UUID


@dataclass(frozen=True)
class Branch:
    """A turn that starts a branch: its message hangs under `parent_id` ('' for the first message:
    an edit of it) instead of the active path's end; `regenerate` sends no new message, the
    parent (a user message) is answered again."""

    parent_id: str
    regenerate: bool = False


@dataclass
class Turn:
    session: dict
    run: ActiveRun
    query: str
    branch: Branch | None = None
    # What the run's saver knows of its thread: the checkpoint read with the lease, the last one written.
    checkpoints: RunCheckpoints | None = None
    # The most output tokens its quotas leave it (None: no quota applies), and its model calls' usage.
    max_tokens: int | None = None
    meter: MeteredModel | None = None


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
        cancel_on_disconnect: bool = False,
        readers: RunReaders,
        max_queued_per_session: int = 10,
        stop_wait_seconds: float = 10.0,
        usage: UsageService | None = None,
        messages: MessageService | None = None,
    ) -> None:
        self._sessions = sessions
        self._messages = messages
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
        self._cancel_on_disconnect = cancel_on_disconnect
        self._readers = readers
        self._max_queued = max_queued_per_session
        self._stop_wait = stop_wait_seconds
        self._unfinished = UnfinishedReplies(graph)
        self._usage = usage

    def start_branch_turn(
        self, user: AuthUser, session_id: str, message_id: str, *, query: str | None, strategy: str = "reject",
    ) -> Turn:
        """Edit (`query`: the user message `message_id` asked again, as its new sibling) or
        regenerate (no query: the assistant reply `message_id` answered again): a turn whose
        message starts a branch; the branch it leaves stays as it was."""
        row = self._sessions.get(user, session_id)
        target = self._messages.message(user, row, message_id)
        want = "assistant" if query is None else "user"
        if target["role"] != want:
            raise ApiError(400, "validation_error",
                           "Only a message of the user can be edited" if query is not None
                           else "Only a reply of the assistant can be regenerated",
                           fields={"message_id": f"not a {want} message"})
        if query is None:
            asked = self._messages.path_to(row, target["parent_id"] or "")
            if not asked or asked[-1]["role"] != "user":
                raise ApiError(400, "validation_error", "This reply answers no message of the user",
                               fields={"message_id": "a reply to no user message"})
            query = asked[-1]["content"]
            branch = Branch(target["parent_id"], regenerate=True)
        else:
            branch = Branch(target["parent_id"] or "")
        turn = self.start_turn(user, session_id, query, strategy, branch=branch)
        assert isinstance(turn, Turn)  # a branch turn is never queued
        return turn

    def start_turn(
        self, user: AuthUser, session_id: str, query: str, strategy: str = "reject", branch: Branch | None = None,
    ) -> Turn | QueuedTurn:
        """Everything that can fail with a status code, before any byte is streamed. While a reply
        runs in the session, `strategy` says what this message does: reject (409 session_busy),
        enqueue (wait its turn), interrupt (stop that reply, keeping its text) or rollback (stop
        it, discarding it and its message), then run."""
        for attempt in range(2):
            try:
                # The common case, a session that exists: one pooled connection, two statements.
                session, run, checkpoints = self._start_in_session(user, session_id, query)
                if session is None:  # ids are made by the frontend: created on first use
                    self._sessions.get_or_create(user, session_id)
                    session, run, checkpoints = self._start_in_session(user, session_id, query)
            except psycopg.errors.ForeignKeyViolation:
                raise NotFound("The session was deleted") from None
            if session is None:  # deleted again between its creation and the start
                raise NotFound("The session was deleted")
            self._refuse_if_closed(session)
            if run is not None:
                break
            busy_with = self._runs.live_run_of(user.id, session_id)
            if busy_with is None:
                if self._runs.live_runs(user.id) >= self._max_runs:
                    raise ApiError(
                        429, "too_many_streams",
                        f"You have {self._max_runs} replies being written already; wait for one to finish",
                        headers={"Retry-After": "5"},
                    )
                continue  # the reply ended meanwhile: try again
            if strategy == "enqueue" and branch is None:
                queued = self._enqueue(user, session_id, query)
                if queued is not None:
                    return queued
                continue  # the reply ended meanwhile
            if strategy in STOP_FOR_NEW_MESSAGE and attempt == 0:
                self._stop_for_new_message(user.id, session_id, busy_with, strategy)
                continue
            raise self._busy()
        else:
            raise self._busy()
        if session["message_count"] == 0 and session["name_source"] == "default":
            self._namer.submit(user.id, session_id, query)
        return self._launch(Turn(session=session, run=run, query=query, checkpoints=checkpoints, branch=branch,
                                 max_tokens=session["usage_grant"]["granted_tokens"]))

    @staticmethod
    def _busy() -> ApiError:
        return ApiError(
            409, "session_busy",
            "A reply is still being written in this session; wait for it to finish, stop it, or send with "
            "multitask_strategy enqueue, interrupt or rollback",
        )

    def _refuse_if_closed(self, session: dict) -> None:
        """An archived or full session takes no turn."""
        if session["is_archived"]:
            raise ApiError(409, "session_archived", "This session is archived; unarchive it to send messages")
        # The caps count every branch: what the session stores, not only the path shown.
        if session["message_count"] + session["branch_messages"] >= self._max_history:
            raise ApiError(409, "session_full", f"This conversation has reached {self._max_history} messages; "
                           "start a new session to go on")
        if session["history_bytes"] + session["branch_bytes"] >= self._max_bytes:
            raise ApiError(409, "session_full", "This conversation has reached the most text a session may hold; "
                           "start a new session to go on")

    def _launch(self, turn: Turn) -> Turn:
        # Started now, not when the response is first read: a turn whose
        # response is never read still ends and frees its session.
        run = turn.run
        try:
            threading.Thread(target=self._run_turn, args=(turn,), name="chat-turn", daemon=True).start()
        except RuntimeError:  # no thread to be had: free the session again
            self._leases.forget(run)
            self._counts.end_run_and_count_messages(run.user_id, run.session_id, run.run_id)
            raise ApiError(503, "overloaded", "The server is too busy; try again shortly", headers={"Retry-After": "5"}) from None
        return turn

    def _enqueue(self, user: AuthUser, session_id: str, query: str) -> QueuedTurn | None:
        """Queue the message behind the session's reply; None if that reply ended meanwhile."""
        run_id = uuid.uuid4()
        state = self._runs.enqueue(user.id, session_id, run_id, query, self._max_queued)
        if state is None:
            raise NotFound("The session was deleted")
        if state == "full":
            raise ApiError(429, "queue_full", f"{self._max_queued} messages are already waiting in this session",
                           headers={"Retry-After": "5"})
        return QueuedTurn(user.id, session_id, run_id) if state == "queued" else None

    def _stop_for_new_message(self, user_id: str, session_id: str, run_id: uuid.UUID, reason: str) -> None:
        """Stop the session's reply for a new message and wait (FORCE_DELETE_WAIT_SECONDS at most)
        until its session is free."""
        local = self._readers.local(user_id, session_id, run_id)
        if local is not None:
            local.cancel.set(CANCEL_REASONS[reason])
        elif not self._runs.request_run_cancel(user_id, session_id, run_id, reason):
            return  # it ended meanwhile
        deadline = time.monotonic() + self._stop_wait
        while self._runs.live_run_of(user_id, session_id) == run_id and time.monotonic() < deadline:
            time.sleep(0.02)  # its process notices within RUN_RENEW_SECONDS, then ends the run

    def start_queued(self, user_id: str, session_id: str) -> bool:
        """Start the oldest message queued in the session here, if the session is free. A session
        that can take no more turns (archived, full) ends its queued messages with that error."""
        checkpointer = self._graph.checkpointer
        session, run, query, row = self._leases.start_queued(
            user_id, session_id, max_messages=self._max_history, max_bytes=self._max_bytes, max_runs=self._max_runs,
            then_read=lambda session: checkpointer.latest_checkpoint_query(session["thread_id"]),
            usage_limits=self._usage_limits(),
        )
        if run is None:
            if session is not None and session["usage_grant"]["blocked"]:
                refusal = self._usage.refusal(session["usage_grant"])
                self._runs.end_queued(user_id, session_id, None, "error",
                                      {"code": refusal.code, "message": refusal.message})
            elif session is not None:
                try:
                    self._refuse_if_closed(session)
                except ApiError as closed:
                    self._runs.end_queued(user_id, session_id, None, "error",
                                          {"code": closed.code, "message": closed.message})
            return False
        try:
            self._launch(Turn(session=session, run=run, query=query,
                              checkpoints=RunCheckpoints(session["thread_id"], row),
                              max_tokens=session["usage_grant"]["granted_tokens"]))
        except ApiError:
            return False
        return True

    def cancel_queued(self, user_id: str, session_id: str, run_id: uuid.UUID) -> bool:
        """Take a queued message out of the queue; its reader gets `cancelled`."""
        code, message = CANCEL_ERRORS["user_cancelled"]
        return self._runs.end_queued(user_id, session_id, run_id, "cancelled", {"code": code, "message": message}) > 0

    def _start_in_session(
        self, user: AuthUser, session_id: str, query: str,
    ) -> tuple[dict | None, ActiveRun | None, RunCheckpoints | None]:
        """The session, its lease and, on the same pooled connection, the checkpoint the turn starts from;
        429 usage_limit_reached when the user's (or business's) quota leaves nothing for it."""
        checkpointer = self._graph.checkpointer
        session, run, row = self._leases.start_in_session(
            user.id, session_id, max_messages=self._max_history, max_bytes=self._max_bytes, max_runs=self._max_runs,
            then_read=lambda session: checkpointer.latest_checkpoint_query(session["thread_id"]), query=query,
            usage_limits=self._usage_limits(),
        )
        if session is not None and session["usage_grant"]["blocked"]:
            raise self._usage.refusal(session["usage_grant"])
        return session, run, RunCheckpoints(session["thread_id"], row) if run is not None else None

    def _usage_limits(self) -> dict | None:
        return self._usage.start_limits(self._model.name) if self._usage is not None else None

    def _ledger_rows(self, turn: Turn, reply: str) -> list[dict] | None:
        """The turn's model calls as ledger rows. A custom graph that wrote a reply without the
        configured model (its own LangChain model) is charged an estimate from the text."""
        if self._usage is None:
            return None
        calls = turn.meter.calls if turn.meter is not None else []
        if not calls and reply:
            calls = [CallUsage(model=self._model.name, input_tokens=estimate_tokens(turn.query) + 4,
                               output_tokens=estimate_tokens(reply), source="estimated")]
        if not calls:
            return None
        run = turn.run
        return self._usage.ledger_rows(
            calls, kind="chat", user_id=run.user_id, business_id=turn.session["business_id"],
            session_id=run.session_id, session_row_id=turn.session["id"], run_id=run.run_id)

    def stream(self, turn: Turn | QueuedTurn) -> Iterator[bytes]:
        """The SSE body of the turn's own request, as bytes (the route passes it straight to the
        server): the `run` event, then the reply as RunReaders sends it (a queued message: once
        it runs, wherever it runs)."""
        if isinstance(turn, QueuedTurn):
            try:
                body = self._readers.join(turn.user_id, turn.session_id, turn.run_id, None)
            except ApiError:  # the session went before the first byte
                body = iter([run_event(turn.run_id, turn.session_id, "queued")
                             + sse_event("error", {**SESSION_DELETED, "run_id": str(turn.run_id)}, 1)])
            yield from body
            return
        run = turn.run
        yield b": stream open\n\n" + run_event(run.run_id, run.session_id, "running")
        on_leave = (lambda: run.cancel.set("client_disconnected")) if self._cancel_on_disconnect else None
        yield from self._readers.follow(run, 0, on_leave=on_leave)

    def _send_token(self, turn: Turn, text: str) -> None:
        run = turn.run
        if self._cancel_on_disconnect and run.reply.chars + len(text) - run.read_upto > self._buffer_limit:
            # The client stopped reading: stop paying for a reply nobody takes.
            run.cancel.set("slow_client")
            raise ReplyCancelled()
        run.reply.append(text)

    def _run_turn(self, turn: Turn) -> None:
        run, started = turn.run, time.perf_counter()
        error: tuple[str, str] | None = None
        tokens = 0
        try:
            tokens = self._stream_graph(turn)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an `error` event
            error = self._describe_failure(run, exc)
        finally:
            reply = run.reply.text()
            if error is not None and reply and run.cancel.reason in KEEPS_PARTIAL_REPLY:
                self._unfinished.keep_stopped(turn.session["thread_id"], turn.checkpoints, reply)
            elif error is not None and run.cancel.reason == "rolled_back":
                self._unfinished.roll_back(turn.session["thread_id"], turn.checkpoints, user_message_id(run.run_id))
            # A session's first turn leaves one checkpoint: nothing to prune.
            if self._prune_history and turn.session["message_count"] > 0:
                self._prune(turn)
            outcome = "done" if error is None else ("cancelled" if run.cancel.is_set() else "error")
            written = turn.checkpoints.written if turn.checkpoints else None
            ids = ({"user_message_id": written.user_message_id, "assistant_message_id": written.assistant_message_id}
                   if written is not None else {})
            final = (RunFinal("done", "done", ids) if error is None
                     else RunFinal(status_of_error(error[0]), "error",
                                   {"code": error[0], "message": error[1]}))
            queued = False
            try:
                session, queued = self._counts.end_run_and_count_messages(
                    run.user_id, run.session_id, run.run_id, outcome,
                    written=written,
                    final=final.stored(run.run_id, reply), usage=self._ledger_rows(turn, reply),
                )
            except Exception:  # noqa: BLE001 - a later reconcile repairs the count
                log.exception("finishing a run failed", extra={"session_id": run.session_id})
                session = None
                error = error or ("internal_error", "Something went wrong on our side")
            self._leases.forget(run)
        if error is None and session is None:
            error = CANCEL_ERRORS["lease_lost"]
        if error:
            run.reply.finish("error", {"code": error[0], "message": error[1], "run_id": str(run.run_id)})
        else:
            run.reply.finish(
                "done",
                {**ids, "session_id": run.session_id, "message_count": session["message_count"],
                 "session_name": session["session_name"], "run_id": str(run.run_id)},
            )
        log.info(
            "turn finished",
            extra={
                "user_id": run.user_id, "session_id": run.session_id, "outcome": error[0] if error else "done",
                "tokens": tokens, "duration_ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )
        if queued:  # a message waits behind this reply: this process, now free of it, starts it
            try:
                self.start_queued(run.user_id, run.session_id)
            except Exception:  # noqa: BLE001 - upkeep starts stalled queues
                log.exception("starting a queued message failed", extra={"session_id": run.session_id})

    def _stream_graph(self, turn: Turn) -> int:
        """Run the graph, passing its tokens on; returns how many were sent."""
        run = turn.run
        sent = 0

        def emit(text: str | None) -> None:
            nonlocal sent
            if text:
                self._send_token(turn, text)
                sent += 1

        # Every model call of the turn goes through its meter: usage reported (or estimated), and
        # the call given at most what the quotas leave (turn.max_tokens).
        turn.meter = MeteredModel(self._model, max_tokens=turn.max_tokens)
        context = ChatContext(
            model=turn.meter, cancel=run.cancel, system_prompt=self._system_prompt, emit=emit,
            max_context_tokens=self._max_context_tokens,
        )
        config = {"configurable": {"thread_id": turn.session["thread_id"]}}
        last_reply = None
        stream = self._graph.stream(
            {"messages": self._turn_input(turn)}, config,
            context=context, stream_mode=self._stream_modes,
            # Keeping only the latest checkpoint, the steps in between need not
            # be written at all: one write when the turn ends (also on error).
            # Full history keeps LangGraph's checkpoint per step, for time travel.
            # A branch writes its start (the path and its question) before the model answers, so
            # a crash never leaves its question on the branch it left (UnfinishedReplies).
            durability="sync" if turn.branch is not None else "exit" if self._prune_history else "async",
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

    def _turn_input(self, turn: Turn) -> list[BaseMessage]:
        """The turn's message, after the history it continues when that is not the checkpoint's
        path as it stands: a branch (edit, regenerate) or the path a switch made active. Then
        the graph's memory is replaced by that path (RemoveMessage of all, then the path), so
        the model sees exactly the path the user sees."""
        message = user_message(turn.query, message_id=user_message_id(turn.run.run_id))
        upto = turn.branch.parent_id if turn.branch is not None else turn.session["switched_to"]
        if upto is None or self._messages is None:
            return [message]
        path = self._messages.path_to(turn.session, upto)
        current = self._graph.checkpointer.start_messages(turn.checkpoints)
        history = path_messages(current, path)
        new = [] if turn.branch is not None and turn.branch.regenerate else [message]
        return [RemoveMessage(id=REMOVE_ALL_MESSAGES), *history, *new]

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

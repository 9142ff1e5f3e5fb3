"""Naming sessions in the background, from their first message.

One asyncio loop per process runs in a daemon thread; naming jobs are
coroutines on it, so a slow naming model never holds a request thread. A job
first claims the session (one process names it), then asks the model (with
the heuristic as fallback, and instead when the user's or business's quota
leaves too little for the call), then writes the name only if the session
still has its default one: a rename by the user always wins.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading

import openai

from backend.sessions.store import SessionStore
from backend.sessions.thread_store import ThreadStore
from backend.usage.service import UsageService
from llm.naming import generate_session_name, naming_call_tokens
from llm.usage import CallUsage

log = logging.getLogger(__name__)


class SessionNamer:
    def __init__(
        self, sessions: SessionStore, threads: ThreadStore, client_factory, *, model: str, timeout_seconds: float,
        usage: UsageService | None = None,
    ) -> None:
        self._sessions = sessions
        self._threads = threads
        self._client_factory = client_factory  # () -> AsyncOpenAI | None (None: offline)
        self._model = model
        self._timeout = timeout_seconds
        self._usage = usage
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: openai.AsyncOpenAI | None = None
        self._lock = threading.Lock()
        self._pending: set[concurrent.futures.Future] = set()

    def submit(self, user_id: str, session_id: str, first_message: str | None = None) -> concurrent.futures.Future:
        """Name the session in the background. The future gives the name written, or None."""
        future = asyncio.run_coroutine_threadsafe(self._name(user_id, session_id, first_message), self._ensure_loop())
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._done)
        return future

    def wait_idle(self, timeout: float) -> bool:
        """Wait for every submitted job (for tests and graceful shutdown)."""
        with self._lock:
            pending = list(self._pending)
        done, not_done = concurrent.futures.wait(pending, timeout=timeout)
        return not not_done

    async def _name(self, user_id: str, session_id: str, first_message: str | None) -> str | None:
        try:
            claimed = await asyncio.to_thread(self._sessions.claim_naming, user_id, session_id)
            if claimed is None:
                return None  # named already, or another process is on it
            if first_message is None:
                first_message = await asyncio.to_thread(self._threads.first_user_message, claimed["thread_id"])
            if not first_message:
                return None
            client = self._async_client()
            if client is not None and self._usage is not None and not await asyncio.to_thread(
                    self._usage.call_fits, claimed, self._model, *naming_call_tokens(first_message)):
                # The user's or business's quota leaves too little: the heuristic names it, with no model
                # call and so no ledger row.
                log.info("session named without the model: over quota",
                         extra={"user_id": user_id, "session_id": session_id})
                client = None
            calls: list[CallUsage] = []
            name = await generate_session_name(
                first_message, client=client, model=self._model, timeout_seconds=self._timeout,
                on_usage=calls.append,
            )
            if calls and self._usage is not None:
                await asyncio.to_thread(self._usage.record_naming, claimed, calls)
            applied = await asyncio.to_thread(self._sessions.apply_auto_name, user_id, session_id, name)
            log.info("session named", extra={"user_id": user_id, "session_id": session_id, "applied": applied})
            return name if applied else None
        except Exception:  # noqa: BLE001 - naming must never hurt anything else
            log.exception("session naming failed", extra={"user_id": user_id, "session_id": session_id})
            return None

    def _async_client(self) -> openai.AsyncOpenAI | None:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="session-namer", daemon=True).start()
                self._loop = loop
                self._client = None  # an async client belongs to the loop it was made in
            return self._loop

    def _done(self, future: concurrent.futures.Future) -> None:
        with self._lock:
            self._pending.discard(future)

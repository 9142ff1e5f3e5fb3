"""The rules of runs: list a session's, join one from a cursor, stop one, from any process.

Following a run is the chat area's (backend/chat/follow.py: from memory in the process
writing it, from its rows elsewhere); this area adds the session's list and Stop. Another
user's run answers as a missing one.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

from backend.auth.service import AuthUser
from backend.chat.follow import RunReaders, run_not_found
from backend.chat.run_store import RunStore
from backend.chat.service import ChatService
from backend.errors import ApiError
from backend.sessions.service import SessionService

# Polls of a run being stopped, until it has ended (or FORCE_DELETE_WAIT_SECONDS).
CANCEL_POLL_SECONDS = 0.05


class RunService:
    def __init__(
        self, *, sessions: SessionService, runs: RunStore, readers: RunReaders, chat: ChatService,
        replay_seconds: float, stop_wait_seconds: float,
    ) -> None:
        self._sessions = sessions
        self._runs = runs
        self._readers = readers
        self._chat = chat
        self._replay = replay_seconds
        self._stop_wait = stop_wait_seconds

    def list(self, user: AuthUser, session_id: str) -> list[dict]:
        """The session's runs: being written (or whose process died), queued, and ended within the window."""
        self._sessions.get(user, session_id)  # 404 for a session the caller does not have
        return self._runs.list_runs(user.id, session_id, self._replay)

    def join(self, user: AuthUser, session_id: str, run_id: uuid.UUID, cursor: int | None) -> Iterator[bytes]:
        return self._readers.join(user.id, session_id, run_id, cursor)

    def cancel(self, user: AuthUser, session_id: str, run_id: uuid.UUID) -> dict:
        """Stop the run, from any process, and wait (FORCE_DELETE_WAIT_SECONDS at most) until it has
        ended; the text written so far is kept as the reply, marked stopped. A queued run leaves
        the queue. 409 run_finished for a run that already ended: a cancel never reaches another run."""
        local = self._readers.local(user.id, session_id, run_id)
        if local is not None:
            local.cancel.set("user_cancelled")
        elif not (self._runs.request_run_cancel(user.id, session_id, run_id)
                  or self._chat.cancel_queued(user.id, session_id, run_id)):
            row = self._runs.read_run(user.id, session_id, run_id, self._replay)
            if row is None:
                raise run_not_found()
            raise ApiError(409, "run_finished", f"This run has already ended ({row['status']})")
        deadline = time.monotonic() + self._stop_wait
        while True:
            row = self._runs.read_run(user.id, session_id, run_id, self._replay)
            if row is None:  # the session went meanwhile
                raise run_not_found()
            if row["final_event"] is not None or time.monotonic() >= deadline:
                return row
            time.sleep(CANCEL_POLL_SECONDS)  # its process notices within RUN_RENEW_SECONDS

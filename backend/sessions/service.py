"""The rules for chat sessions: ids, ownership, paging, and a delete that leaves nothing behind."""

from __future__ import annotations

import logging
import secrets
import string
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import psycopg
from psycopg import Connection
from psycopg_pool import ConnectionPool

from backend.auth.service import AuthUser
from backend.errors import ApiError, NotFound
from backend.http import decode_cursor_values, encode_cursor_values, is_row_id
from backend.sessions.deletion_store import DeletionStore
from backend.sessions.store import SessionCreateRaced, SessionQuotaExceeded, SessionStore

log = logging.getLogger(__name__)

_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_session_id() -> str:
    """chat-<epoch ms>-<random alphanumerics>, the same shape the frontend makes."""
    suffix = "".join(secrets.choice(_ID_ALPHABET) for _ in range(10))
    return f"chat-{int(time.time() * 1000)}-{suffix}"


def build_thread_id(user_id: str, business_id: str, session_id: str) -> str:
    """The LangGraph thread id of a session."""
    return f"user_{user_id}_business_{business_id}_session_{session_id}"


def encode_cursor(row: dict) -> str:
    return encode_cursor_values([row["last_activity_at"].isoformat(), row["id"]])


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        stamp, row_id = decode_cursor_values(cursor)
        when = datetime.fromisoformat(stamp)
        if when.tzinfo is None or not is_row_id(row_id):
            raise ValueError
        return when, row_id
    except (ValueError, TypeError):
        raise ApiError(400, "validation_error", "Invalid cursor", {"cursor": "not a cursor this server issued"}) from None


def quota_exceeded(max_sessions: int) -> ApiError:
    """What every path that creates a session answers at MAX_SESSIONS_PER_USER (SessionQuotaExceeded)."""
    return ApiError(409, "quota_exceeded", f"You have {max_sessions} sessions, the most allowed; "
                    "delete some to create more")


class Replies(Protocol):
    """What a delete needs of the replies being written: the chat area provides it (create_app wires it in)."""

    def is_writing(self, conn: Connection, user_id: str, session_id: str) -> bool:
        """Whether a reply is being written in the session, in any process (on the delete's connection)."""

    def stop(self, user_id: str, session_id: str) -> None:
        """Ask the session's reply to stop and wait, bounded, until it has."""


class History(Protocol):
    """A session's conversation, as clients see it: the messages area provides it (its rows in
    chat_messages, every branch), build_services wires it in."""

    def page(self, row: dict, *, limit: int, before: int | None) -> tuple[list[dict], int]:
        """The active path's newest `limit` messages before position `before`; where they start."""

    def path(self, row: dict) -> list[dict]:
        """The whole active path, oldest first."""

    def tree(self, row: dict) -> list[dict]:
        """Every message of every branch, parents before their children, each with on_path."""


@dataclass
class DeleteOutcome:
    deleted: dict[str, int]  # rows removed per table
    backup: dict | None = None  # {backup_id, expires_at} when a recovery point was kept
    audit_id: int | None = None  # the session_deletions row written


@dataclass
class SessionPage:
    rows: list[dict]
    total: int
    total_exact: bool
    limit: int
    offset: int
    next_cursor: str | None


class SessionService:
    def __init__(
        self,
        pool: ConnectionPool,
        store: SessionStore,
        deletions: DeletionStore,
        *,
        replies: Replies,
        history: History,
        backup_retention_seconds: float = 86_400,
        max_sessions_per_user: int = 10_000,
        usage_of: Callable[[dict], dict] | None = None,
        usage_of_sessions: Callable[[list[dict]], dict[int, dict]] | None = None,
    ) -> None:
        self._pool = pool
        self._store = store
        self._deletions = deletions
        self._replies = replies
        self._history = history
        self._backup_retention = backup_retention_seconds
        self._max_sessions = max_sessions_per_user
        # What a session cost, for its export (the usage area's UsageService.usage_of_session).
        self._usage_of = usage_of
        # What a page of sessions cost, by chat_sessions.id (UsageService.usage_of_sessions): include_usage.
        self._usage_of_sessions = usage_of_sessions

    def create(self, user: AuthUser, session_id: str | None, session_name: str | None) -> tuple[dict, bool]:
        session_id = session_id or new_session_id()
        try:
            row, created = self._store.insert_if_absent(
                user_id=user.id,
                business_id=user.business_id,
                session_id=session_id,
                thread_id=build_thread_id(user.id, user.business_id, session_id),
                session_name=session_name,
                max_sessions=self._max_sessions,
            )
        except SessionQuotaExceeded:
            raise quota_exceeded(self._max_sessions) from None
        except SessionCreateRaced:
            raise ApiError(409, "conflict", "The session was deleted while being created; try again") from None
        except psycopg.errors.UniqueViolation:
            # Only thread_id can clash here: another of this user's sessions,
            # under another business, maps to the same LangGraph thread.
            raise ApiError(409, "thread_conflict", "Another session already uses this conversation thread") from None
        if created:
            log.info("session created", extra={"user_id": user.id, "session_id": session_id})
        return row, created

    def list(
        self, user: AuthUser, *, include_archived: bool, limit: int, offset: int, cursor: str | None,
        unread: bool | None = None, search: str | None = None, include_usage: bool = False,
    ) -> SessionPage:
        if cursor and offset:
            raise ApiError(
                400, "validation_error", "Use either cursor or offset, not both",
                {"cursor": "cannot be combined with offset"},
            )
        after = decode_cursor(cursor) if cursor else None
        rows, total, total_exact = self._store.list_page(
            user.id, include_archived=include_archived, limit=limit, offset=offset, after=after, unread=unread,
            search=search,
        )
        next_cursor = encode_cursor(rows[-1]) if len(rows) == limit else None
        if include_usage:
            rows = self.with_usage(rows)
        return SessionPage(rows=rows, total=total, total_exact=total_exact, limit=limit, offset=offset, next_cursor=next_cursor)

    def get_or_create(self, user: AuthUser, session_id: str) -> dict:
        """For chat turns: the session usually exists, so one read is the common path."""
        return self._store.get(user.id, session_id) or self.create(user, session_id, None)[0]

    def get(self, user: AuthUser, session_id: str, *, include_usage: bool = False) -> dict:
        row = self._store.get(user.id, session_id)
        if row is None:
            raise NotFound()
        return self.with_usage([row])[0] if include_usage else row

    def with_usage(self, rows: list[dict]) -> list[dict]:
        """The rows, each with its `usage` (calls, tokens, cost): one indexed read for them all."""
        if not rows or self._usage_of_sessions is None:
            return rows
        totals = self._usage_of_sessions(rows)
        return [{**row, "usage": totals[row["id"]]} for row in rows]

    def reply_running(self, user: AuthUser, session_id: str) -> bool:
        """Whether a reply is being written in the session now, by any process."""
        with self._pool.connection() as conn:
            return self._replies.is_writing(conn, user.id, session_id)

    def messages_page(self, row: dict, *, limit: int, before: int | None) -> tuple[list[dict], int]:
        """The newest `limit` messages of the active path before position `before` (all: None); and
        where they start."""
        return self._history.page(row, limit=limit, before=before)

    def messages(self, row: dict) -> list[dict]:
        """The conversation's active path, oldest first."""
        return self._history.path(row)

    def mark_read(self, user: AuthUser, session_id: str) -> dict:
        """The user has read the session's latest reply: clear has_unread (idempotent)."""
        row = self._store.mark_read(user.id, session_id)
        if row is None:
            raise NotFound()
        return row

    def export(self, user: AuthUser, session_id: str, *, branches: bool = False) -> dict:
        """The session and its conversation, as the user sees them (the export document's parts):
        the active path; with `branches`, every message of every branch (parents first) and the
        active path's last message (`active_message_id`)."""
        row = self.get(user, session_id)
        if self._usage_of is not None:
            row = {**row, "usage": self._usage_of(row)}
        if not branches:
            return {"session": row, "messages": self.messages(row)}
        tree = self._history.tree(row)
        on_path = [m["id"] for m in tree if m["on_path"]]  # by depth: the last is the leaf
        return {"session": row, "messages": tree, "active_message_id": on_path[-1] if on_path else None}

    def update(self, user: AuthUser, session_id: str, *, session_name: str | None, is_archived: bool | None) -> dict:
        row = self._store.update(user.id, session_id, session_name=session_name, is_archived=is_archived)
        if row is None:
            raise NotFound()
        return row

    def delete(
        self, user: AuthUser, session_id: str, *, force: bool = False, backup: bool = False,
        progress: Callable[[str, float], None] | None = None,
    ) -> DeleteOutcome:
        """Delete the session row and every checkpoint row of its thread, in one transaction.

        With `backup`, the same transaction first copies the session row and
        every row of its thread into a recovery point that `restore` puts back
        until BACKUP_RETENTION_SECONDS pass (a session that lived only in the
        browser has no row to restore, so it gets none).

        Only the caller's own session is touched: the row is looked up by
        (user, session id), and a session that lived only in the browser is
        found by the caller's own thread id, which carries their user id.

        While a reply is being written (in any process) the delete is refused
        with 409, unless forced: then the reply is asked to stop and given
        FORCE_DELETE_WAIT_SECONDS to do so. If it still runs after that, the
        delete goes ahead anyway; its late checkpoint writes will find no
        session and fail (SessionCheckpointSaver), so nothing is left behind.

        `progress(phase, fraction)` is told as each phase starts (the recovery
        point, the checkpoints and the row go in one statement, so the last
        phases are its start and its end); the caller reports completion.
        """
        report = progress or (lambda phase, fraction: None)
        report("checking for a reply in progress", 0.1)
        if force:
            self._replies.stop(user.id, session_id)
        with self._pool.connection() as conn, conn.transaction():
            row = self._deletions.lock_for_delete(conn, user.id, session_id)
            thread_id = row["thread_id"] if row else build_thread_id(user.id, user.business_id, session_id)
            if row is None and self._store.thread_has_session(conn, thread_id):
                raise NotFound()  # a thread with a session row is deleted through that row only
            # With the row locked no reply can start, so this answer holds until commit.
            if row and not force and self._replies.is_writing(conn, user.id, session_id):
                raise ApiError(
                    409, "session_busy",
                    "A reply is still being written in this session. Stop it first, "
                    "or delete with ?force=true to stop it and delete.",
                )
            if backup and row is not None:
                report("creating the recovery point", 0.3)
            report("deleting checkpoints", 0.5)
            counts, recovery, audit_id = self._deletions.delete_thread_and_row(
                conn,
                thread_id=thread_id,
                row_id=row["id"] if row else None,
                user_id=user.id,
                business_id=row["business_id"] if row else user.business_id,
                session_id=session_id,
                forced=force,
                recovery_point=(uuid.uuid4(), self._backup_retention) if backup and row is not None else None,
            )
            if not any(counts.values()):
                raise NotFound()  # nothing was there under this id
            report("deleting the session", 0.8)
        log.info(
            "session deleted",
            extra={"user_id": user.id, "session_id": session_id, "rows_deleted": counts, "forced": force,
                   "backup": recovery is not None},
        )
        return DeleteOutcome(deleted=counts, backup=recovery, audit_id=audit_id)

    def restore(self, user: AuthUser, backup_id: uuid.UUID) -> dict:
        """Put a deleted session back from its recovery point, whole or not at all.

        404 for a recovery point that is unknown, expired, already used or
        another user's (indistinguishable); 409 if the session id (or its
        thread) is taken again meanwhile, or the user has MAX_SESSIONS_PER_USER
        sessions (the recovery point is kept for later): then nothing changes.
        """
        with self._pool.connection() as conn, conn.transaction():
            backup = self._deletions.lock_recovery_point(conn, user.id, backup_id)
            if backup is None:
                raise NotFound("No recovery point with this id (it may have expired or been used)")
            if self._store.session_or_thread_taken(conn, user.id, backup["session_id"], backup["thread_id"]):
                raise ApiError(
                    409, "session_exists",
                    "A session with this id exists again; delete or rename it before restoring",
                )
            try:
                self._store.claim_session_slot(conn, user.id, self._max_sessions)
            except SessionQuotaExceeded:
                raise quota_exceeded(self._max_sessions) from None
            row = self._deletions.restore_recovery_point(conn, backup)
        restored = row.pop("restored")
        log.info("session restored", extra={"user_id": user.id, "session_id": row["session_id"], "rows_restored": restored})
        return row

    def purge_expired_recovery_points(self, batch: int = 500) -> int:
        """Delete every recovery point past its expiry, in small batches; returns how many."""
        total = 0
        while True:
            purged = self._deletions.purge_expired_recovery_points(batch)
            total += purged
            if purged < batch:
                break
        if total:
            log.info("expired recovery points purged", extra={"recovery_points": total})
        return total

    def delete_preview(self, user: AuthUser, session_id: str) -> dict:
        """A delete's dry run: what it would remove now (rows per table) and
        whether a reply is being written (it would need force). The same
        ownership rules as `delete`; nothing is locked or changed."""
        with self._pool.connection() as conn:
            preview = self._deletions.delete_preview(
                conn, user_id=user.id, session_id=session_id,
                thread_id=build_thread_id(user.id, user.business_id, session_id),
            )
            if preview.pop("thread_owned") or not any(preview.values()):
                raise NotFound()
            run_live = bool(preview["chat_sessions"]) and self._replies.is_writing(conn, user.id, session_id)
        return {"deleted": preview, "run_live": run_live}

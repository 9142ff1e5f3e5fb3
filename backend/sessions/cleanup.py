"""Deleting many sessions: a user's bulk delete, and retention by inactivity.

Each session goes through SessionService.delete, exactly as a single delete:
its own transaction, its own audit row (and recovery point when asked), the
same refusal of a session whose reply is still being written. So a bulk
delete or a purge never holds a long lock, and stopping one halfway leaves
every session either whole or gone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from backend.auth.service import AuthUser
from backend.errors import ApiError
from backend.sessions.service import SessionService
from backend.sessions.deletion_store import DeletionStore
from backend.sessions.thread_store import CHECKPOINT_TABLES

log = logging.getLogger(__name__)

BULK_LIMIT = 1000


@dataclass
class PurgeReport:
    sessions: int = 0
    busy: int = 0
    rows: dict[str, int] = field(default_factory=lambda: {t: 0 for t in (*CHECKPOINT_TABLES, "chat_sessions")})
    seconds: float = 0.0
    listed: list[dict] = field(default_factory=list)  # dry runs: what would go


class SessionCleanup:
    def __init__(self, sessions: SessionService, deletions: DeletionStore) -> None:
        self._sessions = sessions
        self._deletions = deletions

    def bulk_delete(
        self, user: AuthUser, *, session_ids: list[str] | None, archived: bool | None, inactive_days: int | None,
        backup: bool, force: bool,
    ) -> tuple[list[dict], bool]:
        """Delete the given ids, or the (oldest first) BULK_LIMIT sessions matching the filter.

        Returns (one result per session, whether the filter matched more).
        Ids the caller does not own are `not_found` and never touched; a
        reply in progress makes a session `busy` unless forced. Retrying is
        safe: what went already is `not_found` the second time.
        """
        more = False
        if session_ids is None:
            session_ids = self._deletions.ids_matching(
                user.id, archived=archived, inactive_days=inactive_days, limit=BULK_LIMIT + 1
            )
            more, session_ids = len(session_ids) > BULK_LIMIT, session_ids[:BULK_LIMIT]
        results = [self._delete_one(user, sid, backup=backup, force=force) for sid in dict.fromkeys(session_ids)]
        log.info("bulk delete", extra={"user_id": user.id, "sessions": len(results),
                                       "deleted": sum(r["status"] == "deleted" for r in results)})
        return results, more

    def _delete_one(self, user: AuthUser, session_id: str, *, backup: bool, force: bool) -> dict:
        try:
            outcome = self._sessions.delete(user, session_id, force=force, backup=backup)
        except ApiError as exc:
            if exc.status == 404:
                return {"session_id": session_id, "status": "not_found"}
            if exc.code == "session_busy":
                return {"session_id": session_id, "status": "busy"}
            raise
        return {"session_id": session_id, "status": "deleted", "deleted": outcome.deleted, "backup": outcome.backup}

    def purge_inactive(
        self, *, inactive_days: int, archived_only: bool = False, user_id: str | None = None,
        dry_run: bool = False, backup: bool = False, batch: int = 200, max_sessions: int | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> PurgeReport:
        """Delete every session quiet for inactive_days (retention), batch by batch.

        A session busy with a reply is skipped (counted in `busy`); a dry run
        lists and counts, changing nothing.
        """
        report, started, after_id = PurgeReport(), time.monotonic(), 0
        while max_sessions is None or report.sessions + report.busy < max_sessions:
            limit = batch if max_sessions is None else min(batch, max_sessions - report.sessions - report.busy)
            rows = self._deletions.inactive_sessions(
                inactive_days=inactive_days, archived_only=archived_only, user_id=user_id, limit=limit,
                after_id=after_id,
            )
            if not rows:
                break
            after_id = rows[-1]["id"]
            for row in rows:
                if dry_run:
                    report.sessions += 1
                    report.listed.append({k: row[k] for k in ("user_id", "session_id", "last_activity_at")})
                    continue
                owner = AuthUser(id=row["user_id"], business_id=row["business_id"], email=None, via="token")
                result = self._delete_one(owner, row["session_id"], backup=backup, force=False)
                if result["status"] == "deleted":
                    report.sessions += 1
                    for table, n in result["deleted"].items():
                        report.rows[table] = report.rows.get(table, 0) + n
                elif result["status"] == "busy":
                    report.busy += 1
            if on_progress:
                on_progress(len(rows))
        report.seconds = time.monotonic() - started
        if report.sessions and not dry_run:
            log.info("inactive sessions purged", extra={"sessions": report.sessions, "rows_deleted": report.rows,
                                                        "inactive_days": inactive_days})
        return report

    def purge_audit_rows(self, older_than_days: int, batch: int = 1000) -> int:
        total = 0
        while (purged := self._deletions.purge_audit_rows(older_than_days, batch)) > 0:
            total += purged
            if purged < batch:
                break
        return total

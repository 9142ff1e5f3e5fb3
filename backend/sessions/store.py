"""All SQL for a session's row: read, list and search, create, update, counts, naming, locks.

Removing sessions and bringing them back (delete with its thread rows and
recovery point, restore, bulk and retention) is in DeletionStore
(deletion_store.py); statements over threads alone are in ThreadStore.
Methods that take a `conn` run inside a transaction the service opened, so
their statements commit or roll back together.
"""

from __future__ import annotations

import re
from datetime import datetime

from psycopg import Connection
from psycopg_pool import ConnectionPool

SESSION_COLUMNS = (
    "id, user_id, business_id, session_id, thread_id, session_name, is_archived, "
    "message_count, created_at, updated_at, last_message_at, last_activity_at, name_source, has_unread, history_bytes, "
    "branch_messages, branch_bytes, messages_indexed, switched_to"
)

SELECT_SESSION_SQL = f"select {SESSION_COLUMNS} from chat_sessions where user_id = %s and session_id = %s"

SELECT_SESSION_BY_ID_SQL = f"select {SESSION_COLUMNS} from chat_sessions where id = %s"

UPDATE_SESSION_SQL = f"""
update chat_sessions
   set session_name = coalesce(%s, session_name),
       -- a name the user chose is never replaced by auto-naming
       name_source  = case when %s::text is null then name_source else 'user' end,
       is_archived  = coalesce(%s, is_archived)
 where user_id = %s and session_id = %s
returning {SESSION_COLUMNS}
"""

# The RPC (sql/): one atomic UPDATE, so concurrent turns never lose a count.
INCREMENT_MESSAGE_COUNT_SQL = "select * from increment_session_message_count(%s, %s, %s)"

# Only a custom graph that removes messages needs this: counts follow history.
SET_MESSAGE_COUNT_SQL = "update chat_sessions set message_count = %s where id = %s"

# Written only when it changed; returns the row then (else the caller reads it).
SET_HISTORY_BYTES_SQL = f"""
update chat_sessions set history_bytes = %s where id = %s and history_bytes <> %s
returning {SESSION_COLUMNS}
"""

# The end of a turn read from the history: FOR UPDATE first, which checkpoint
# writes (FOR KEY SHARE) wait for; the UPDATE alone would take a lock they do not.
LOCK_AND_FLAG_UNREAD_SQL = f"""
with locked as (
    select id as locked_id from chat_sessions where user_id = %(user_id)s and session_id = %(session_id)s for update
)
update chat_sessions set has_unread = has_unread or %(unread)s
  from locked
 where id = locked.locked_id
returning {SESSION_COLUMNS}
"""

# Taken by every checkpoint write (SessionCheckpointSaver): conflicts with a
# delete's FOR UPDATE, so no write lands in a deleted session; and it reads what
# the write needs of its session for chat_messages (sql/025).
LOCK_FOR_CHECKPOINT_WRITE_SQL = (
    "select id, user_id, messages_indexed, switched_to from chat_sessions where thread_id = %s for key share"
)

THREAD_HAS_SESSION_SQL = "select exists (select 1 from chat_sessions where thread_id = %s) as owned"

# Naming: a claim lets one process name a session; retried after NAMING_CLAIM_MINUTES.
NAMING_CLAIM_MINUTES = 5
_NAMING_UNCLAIMED = f"""(naming_claimed_at is null
        or naming_claimed_at < now() - make_interval(mins => {NAMING_CLAIM_MINUTES}))"""

CLAIM_NAMING_SQL = f"""
update chat_sessions set naming_claimed_at = now()
 where user_id = %s and session_id = %s and name_source = 'default' and {_NAMING_UNCLAIMED}
returning {SESSION_COLUMNS}
"""

# Written only if nobody named the session meanwhile: a user's rename wins.
APPLY_AUTO_NAME_SQL = """
update chat_sessions set session_name = %s, name_source = 'auto'
 where user_id = %s and session_id = %s and name_source = 'default'
"""

UNNAMED_SESSIONS_SQL = f"""
select {SESSION_COLUMNS} from chat_sessions
 where name_source = 'default' and message_count > 0 and {_NAMING_UNCLAIMED}
 order by created_at
 limit %s
"""

# A count of the user's sessions kept by the triggers of sql/014_session_counts.sql: {column} is
# `sessions` (all) or `sessions - archived` (active); 0 for a user who never had one.
KEPT_COUNT = "coalesce((select {column} from chat_session_counts where user_id = %(user_id)s), 0)"

# The cap on a user's sessions, one mechanism for every path that creates one (sql/022): true
# while the user has fewer than max_sessions, and the user's lock is held until the transaction
# ends, so the insert that follows it (in the same transaction) cannot pass the cap with another.
CLAIM_SESSION_SLOT = "public.claim_session_slot(%(user_id)s, %(max_sessions)s)"
CLAIM_SESSION_SLOT_SQL = f"select {CLAIM_SESSION_SLOT} as free"

# Created only while the user has fewer than max_sessions: one statement, the claim in it.
INSERT_IF_ABSENT_SQL = f"""
insert into chat_sessions (user_id, business_id, session_id, thread_id, session_name, name_source)
select %(user_id)s, %(business_id)s, %(session_id)s, %(thread_id)s, coalesce(%(session_name)s, 'New Chat'),
       case when %(session_name)s::text is null then 'default' else 'user' end
 where {CLAIM_SESSION_SLOT}
on conflict (user_id, session_id) do nothing
returning {SESSION_COLUMNS}
"""

# A search's total counts this many matches at most (then says it is not exact).
SEARCH_TOTAL_LIMIT = 100
# A search first looks among the user's newest sessions, this many at most (see search_sql)...
SEARCH_NEWEST_ROWS = 2_000
# ...then at what the index finds, this many at most.
SEARCH_INDEX_ROWS = 500

# What pg_trgm can look up: three word characters in a row (a LIKE pattern's shorter runs give no trigram).
TRIGRAM = re.compile(r"[^\W_]{3}")
# Two in a row: the doubled-name index of sql/015 serves it (doubled, they hold a trigram).
PAIR = re.compile(r"[^\W_]{2}")
# Spelled exactly as the index expression in sql/015_session_name_pair_search.sql, and the LIKE
# pattern for it: the search text lowered and doubled by the same functions, then escaped.
PAIR_SEARCH_EXPRESSION = r"regexp_replace(lower(session_name), '(.)', '\1\1', 'g')"
PAIR_PATTERN = (r"'%%' || regexp_replace(regexp_replace(lower(%(search)s), '(.)', '\1\1', 'g'),"
                r" '([\\%%_])', '\\\1', 'g') || '%%'")

# list_page: {filters} are fixed SQL fragments chosen by list_page, never request text.
COUNT_SQL = "select count(*) as n from chat_sessions where user_id = %(user_id)s {filters}"
KEPT_COUNT_SQL = f"select {KEPT_COUNT} as n"
PAGE_SQL = f"""
select {SESSION_COLUMNS} from chat_sessions where user_id = %(user_id)s {{filters}} {{keyset}}
order by last_activity_at desc, id desc limit %(limit)s offset %(offset)s
"""


def search_sql(*, filters: str, keyset: str, index: str | None) -> str:
    """A search's first `want` matches in page order (more may exist), without the LIMIT trap.

    Parameters: user_id, search, pattern, want, newest_rows, index_rows, and
    after_at/after_id with a keyset. `index`: "trigrams" (sql/012), "pairs"
    (sql/015), or None where the text holds neither (TRIGRAM, PAIR).

    With `order by ... limit`, the planner may walk the activity index expecting
    matches early; for a rare phrase that walk reads every session of the user
    (100 ms at 100,000). So the search goes in up to three steps, each skipped
    by a one-time filter when the one before settled it:
    1. the newest SEARCH_NEWEST_ROWS sessions (after the keyset), which settles
       a common word;
    2. the matches the index finds, planned without a LIMIT (a materialized
       CTE) but read no further than SEARCH_INDEX_ROWS: fewer than that is all
       of them, which settles a rare word;
    3. else the matches are many but not among the newest (a two-letter search
       matching a few percent of names, where step 2 would recheck thousands of
       rows at about 5 us each): the walk again, unbounded, which finds them soon.
    Without an index nothing beats the walk, and it is not bounded.
    """
    # The walk's test: what ilike does, but ilike folds the pattern's case again for every row.
    # The index steps keep ilike, the form the trigram index serves.
    match = "lower(session_name) like lower(%(pattern)s)"
    where = f"where user_id = %(user_id)s {filters} {keyset}"
    order = "order by last_activity_at desc, id desc"
    # A walk down the activity order, through `rows` sessions at most. A LIMIT the planner cannot
    # read, (select null) (none), keeps it a walk: with a LIMIT it can read, or none, it may
    # instead sort every session of the user in parallel workers (5 ms to start them).
    walk = (f"select * from (select {SESSION_COLUMNS} from chat_sessions {where} {order} limit {{rows}}) walked"
            f" where {match} {{settled}} {order} limit %(want)s")
    every_row = "(select null::bigint)"
    if index is None:
        return walk.format(rows=every_row, settled="")
    indexed_match = ("session_name ilike %(pattern)s" if index == "trigrams"
                     else f"{PAIR_SEARCH_EXPRESSION} like {PAIR_PATTERN} and {match}")
    return f"""
with newest as materialized ({walk.format(rows="%(newest_rows)s", settled="")}),
every_match as materialized (
  select {SESSION_COLUMNS} from chat_sessions {where} and {indexed_match}
   and (select count(*) from newest) < %(want)s),
indexed as materialized (select * from every_match limit %(index_rows)s),
walked as materialized (
  {walk.format(rows=every_row, settled="and (select count(*) from indexed) >= %(index_rows)s")})
select * from newest where (select count(*) from newest) >= %(want)s
union all
select * from indexed where (select count(*) from indexed) < %(index_rows)s
union all
select * from walked
"""


MARK_READ_SQL = f"""
update chat_sessions set has_unread = false
 where user_id = %s and session_id = %s
returning {SESSION_COLUMNS}
"""

INSERT_NEW_SQL = f"""
insert into chat_sessions (user_id, business_id, session_id, thread_id, session_name, name_source, is_archived)
values (%(user_id)s, %(business_id)s, %(session_id)s, %(thread_id)s, coalesce(%(session_name)s, 'New Chat'),
        case when %(session_name)s::text is null then 'default' else 'user' end, %(is_archived)s)
on conflict (user_id, session_id) do nothing
returning {SESSION_COLUMNS}
"""

SESSION_OR_THREAD_TAKEN_SQL = """
select exists (select 1 from chat_sessions
                where (user_id = %(user_id)s and session_id = %(session_id)s) or thread_id = %(thread_id)s)
    or exists (select 1 from checkpoints where thread_id = %(thread_id)s)
    or exists (select 1 from checkpoint_blobs where thread_id = %(thread_id)s)
    or exists (select 1 from checkpoint_writes where thread_id = %(thread_id)s) as taken
"""

class SessionQuotaExceeded(Exception):
    """The user has as many sessions as they may."""


class SessionCreateRaced(Exception):
    """The session was deleted by another request while this one created it."""


def like_pattern(text: str) -> str:
    """An ILIKE pattern matching names that contain `text` literally (its % _ and \\ escaped)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class SessionStore:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    # --- reads -----------------------------------------------------------

    def get(self, user_id: str, session_id: str) -> dict | None:
        with self._pool.connection() as conn:
            return conn.execute(SELECT_SESSION_SQL, (user_id, session_id)).fetchone()

    def list_page(
        self,
        user_id: str,
        *,
        include_archived: bool,
        limit: int,
        offset: int = 0,
        after: tuple[datetime, int] | None = None,
        unread: bool | None = None,
        search: str | None = None,
    ) -> tuple[list[dict], int, bool]:
        """One page, newest activity first, the number that match, and whether that number is exact.

        `after` continues a keyset page from (last_activity_at, id), which
        stays an index range scan at any depth; `offset` is for jumping.
        `search` keeps names containing it, case-insensitively, as literal text
        (served by the trigram index of sql/012_session_name_search.sql). A
        search counts its matches no further than SEARCH_TOTAL_LIMIT: an exact
        count would read every match of a short or common word, where the page
        itself stops at `limit`. Without a search the count is exact: kept per
        user by triggers (sql/014), or, for an unread filter, an index-only count
        of the user's rows, which max_sessions_per_user bounds.
        """
        filters = "" if include_archived else "and not is_archived"
        if unread is not None:
            filters += " and has_unread" if unread else " and not has_unread"
        keyset = "and (last_activity_at, id) < (%(after_at)s, %(after_id)s)" if after else ""
        params = {"user_id": user_id, "limit": limit, "offset": offset,
                  "after_at": after[0] if after else None, "after_id": after[1] if after else None}
        with self._pool.connection() as conn:
            if not search:
                if unread is None:
                    count_sql = KEPT_COUNT_SQL.format(column="sessions" if include_archived else "sessions - archived")
                else:
                    count_sql = COUNT_SQL.format(filters=filters)
                with conn.pipeline():  # page and count in one round trip
                    page = conn.execute(PAGE_SQL.format(filters=filters, keyset=keyset), params)
                    counted = conn.execute(count_sql, params)
                    return page.fetchall(), counted.fetchone()["n"], True
            # A search is planned for its own text each time (not prepared): a generic plan
            # cannot know whether the trigram index or the activity order serves it best.
            index = "trigrams" if TRIGRAM.search(search) else "pairs" if PAIR.search(search) else None
            params |= {"search": search, "pattern": like_pattern(search), "want": SEARCH_TOTAL_LIMIT + 1,
                       "newest_rows": SEARCH_NEWEST_ROWS, "index_rows": SEARCH_INDEX_ROWS}
            first_rows = search_sql(filters=filters, keyset="", index=index)
            if not after and not offset and limit <= SEARCH_TOTAL_LIMIT:
                # The first page and its count, from one read of the matches.
                rows = conn.execute(
                    f"select *, count(*) over () as matched from ({first_rows}) found "
                    "order by last_activity_at desc, id desc limit %(limit)s", params, prepare=False,
                ).fetchall()
                total = rows[0]["matched"] if rows else 0
                for row in rows:
                    del row["matched"]
            else:
                with conn.pipeline():
                    page = conn.execute(
                        f"select * from ({search_sql(filters=filters, keyset=keyset, index=index)}) found "
                        "order by last_activity_at desc, id desc limit %(limit)s offset %(offset)s",
                        params | {"want": offset + limit}, prepare=False,
                    )
                    counted = conn.execute(f"select count(*) as n from ({first_rows}) found", params, prepare=False)
                    rows, total = page.fetchall(), counted.fetchone()["n"]
        if total > SEARCH_TOTAL_LIMIT:
            return rows, SEARCH_TOTAL_LIMIT, False
        return rows, total, True

    # --- writes ----------------------------------------------------------

    def insert_if_absent(
        self, *, user_id: str, business_id: str, session_id: str, thread_id: str, session_name: str | None,
        max_sessions: int = 2**31 - 1,
    ) -> tuple[dict, bool]:
        """Create the session, or return the user's existing one unchanged.

        Returns (row, created). Retried creates from the frontend land here.
        Raises SessionQuotaExceeded when the user already has max_sessions.
        """
        with self._pool.connection() as conn:
            row = conn.execute(INSERT_IF_ABSENT_SQL, {
                "user_id": user_id, "business_id": business_id, "session_id": session_id, "thread_id": thread_id,
                "session_name": session_name, "max_sessions": max_sessions,
            }).fetchone()
            if row is not None:
                return row, True
            existing = conn.execute(SELECT_SESSION_SQL, (user_id, session_id)).fetchone()
            if existing is None:
                kept = conn.execute(KEPT_COUNT_SQL.format(column="sessions"), {"user_id": user_id}).fetchone()
                if kept["n"] >= max_sessions:
                    raise SessionQuotaExceeded(max_sessions)
                raise SessionCreateRaced()  # deleted by a concurrent request between the two statements
        return existing, False

    @staticmethod
    def claim_session_slot(conn: Connection, user_id: str, max_sessions: int) -> None:
        """Inside the caller's transaction, before it inserts a session (an import, a restore):
        raises SessionQuotaExceeded when the user has max_sessions; else the slot is the
        caller's until its transaction ends (sql/022), whoever else creates meanwhile."""
        if not conn.execute(CLAIM_SESSION_SLOT_SQL, {"user_id": user_id, "max_sessions": max_sessions}).fetchone()["free"]:
            raise SessionQuotaExceeded(max_sessions)

    @staticmethod
    def insert_new(
        conn: Connection, *, user_id: str, business_id: str, session_id: str, thread_id: str,
        session_name: str | None, is_archived: bool,
    ) -> dict | None:
        """Create the session inside the caller's transaction; None if the user has one with this id."""
        return conn.execute(INSERT_NEW_SQL, {
            "user_id": user_id, "business_id": business_id, "session_id": session_id, "thread_id": thread_id,
            "session_name": session_name, "is_archived": is_archived,
        }).fetchone()

    def update(
        self, user_id: str, session_id: str, *, session_name: str | None, is_archived: bool | None
    ) -> dict | None:
        with self._pool.connection() as conn:
            return conn.execute(
                UPDATE_SESSION_SQL, (session_name, session_name, is_archived, user_id, session_id)
            ).fetchone()

    def mark_read(self, user_id: str, session_id: str) -> dict | None:
        """Clear the unread flag (a no-op write when already read); None if there is no such session."""
        with self._pool.connection() as conn:
            return conn.execute(MARK_READ_SQL, (user_id, session_id)).fetchone()

    # --- the count and the end of a turn, inside the service's transaction ---

    @staticmethod
    def increment_message_count(conn: Connection, user_id: str, session_id: str, increment: int) -> dict | None:
        """The RPC, on the caller's connection: the new (message_count, last_message_at), or None."""
        return conn.execute(INCREMENT_MESSAGE_COUNT_SQL, (user_id, session_id, increment)).fetchone()

    @staticmethod
    def set_message_count(conn: Connection, row_id: int, count: int) -> None:
        conn.execute(SET_MESSAGE_COUNT_SQL, (count, row_id))

    @staticmethod
    def set_history_bytes(conn: Connection, row_id: int, size: int) -> dict:
        """Record the conversation's size; returns the row as it now is (one statement when the size changed)."""
        return (conn.execute(SET_HISTORY_BYTES_SQL, (size, row_id, size)).fetchone()
                or conn.execute(SELECT_SESSION_BY_ID_SQL, (row_id,)).fetchone())

    @staticmethod
    def lock_and_flag_unread(conn: Connection, user_id: str, session_id: str, unread: bool) -> dict | None:
        """Lock the row for the rest of the transaction (no checkpoint write lands meanwhile), marking it
        unread if `unread`; None if it is gone."""
        return conn.execute(LOCK_AND_FLAG_UNREAD_SQL,
                            {"user_id": user_id, "session_id": session_id, "unread": unread}).fetchone()

    @staticmethod
    def lock_for_checkpoint_write(conn: Connection, thread_id: str) -> dict | None:
        """Hold the session of this thread against a delete until the transaction ends: its
        {id, user_id, messages_indexed, switched_to}, or None if it has none."""
        return conn.execute(LOCK_FOR_CHECKPOINT_WRITE_SQL, (thread_id,)).fetchone()

    # --- naming --------------------------------------------------------------

    def claim_naming(self, user_id: str, session_id: str) -> dict | None:
        """Claim a still-default name for naming; one process at a time, retried after a while."""
        with self._pool.connection() as conn:
            return conn.execute(CLAIM_NAMING_SQL, (user_id, session_id)).fetchone()

    def apply_auto_name(self, user_id: str, session_id: str, name: str) -> bool:
        """Write the generated name only if nobody named the session meanwhile."""
        with self._pool.connection() as conn:
            return conn.execute(APPLY_AUTO_NAME_SQL, (name, user_id, session_id)).rowcount == 1

    def unnamed_sessions(self, limit: int = 50) -> list[dict]:
        """Sessions with messages but no name: their naming was lost (crash, restart)."""
        with self._pool.connection() as conn:
            return conn.execute(UNNAMED_SESSIONS_SQL, (limit,)).fetchall()

    # --- who holds a session id or a thread (delete, restore, import) ------

    @staticmethod
    def thread_has_session(conn: Connection, thread_id: str) -> bool:
        return conn.execute(THREAD_HAS_SESSION_SQL, (thread_id,)).fetchone()["owned"]

    @staticmethod
    def session_or_thread_taken(conn: Connection, user_id: str, session_id: str, thread_id: str) -> bool:
        """Whether restoring would collide: a session with this id or thread, or rows left in the thread."""
        return conn.execute(
            SESSION_OR_THREAD_TAKEN_SQL, {"user_id": user_id, "session_id": session_id, "thread_id": thread_id}
        ).fetchone()["taken"]

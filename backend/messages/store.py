"""All SQL over chat_messages (sql/025): a conversation's every message, every branch.

The checkpoint write keeps the table equal to the checkpoint's path (`sync_path`, called by
SessionCheckpointSaver.put in its own transaction, which holds the session's FOR KEY SHARE).
Reads give the active path a page at a time with each message's siblings; a switch and a
rating are one SQL function each. Methods that take a `conn` run in the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from psycopg import Connection
from psycopg_pool import ConnectionPool

PATH_IDS_SQL = "select message_id from chat_messages where session_row_id = %s and on_path order by depth"

# The checkpoint's path from `first_depth` on (the rows before it are already the path's):
# rows the path left go off it, the path's rows are written (or put back on it), and the
# session is marked as following its checkpoint again. Parameters: row_id, user_id,
# first_depth, and one array a column for the path's messages from first_depth.
SYNC_PATH_SQL = """
with tail as (
    select * from unnest(%(ids)s::text[], %(parents)s::text[], %(roles)s::text[], %(contents)s::text[],
                         %(statuses)s::text[], %(created)s::timestamptz[])
           with ordinality as t(message_id, parent_id, role, content, status, created_at, n)
), moved_off as (
    update chat_messages m set on_path = false
     where m.session_row_id = %(row_id)s and m.on_path and m.depth >= %(first_depth)s
       and m.message_id <> all(%(ids)s::text[])
), written as (
    insert into chat_messages as m
        (session_row_id, message_id, parent_id, user_id, role, content, status, created_at, depth)
    select %(row_id)s, message_id, parent_id, %(user_id)s, role, content, status, created_at,
           %(first_depth)s + n::integer - 1
      from tail
    on conflict (session_row_id, message_id) do update
       set on_path = true, parent_id = excluded.parent_id, content = excluded.content,
           status = excluded.status, depth = excluded.depth
     where (m.on_path, m.parent_id, m.content, m.status, m.depth)
           is distinct from (true, excluded.parent_id, excluded.content, excluded.status, excluded.depth)
)
update chat_sessions set switched_to = null, messages_indexed = true
 where id = %(row_id)s and (switched_to is not null or not messages_indexed)
"""

# A whole tree at once (an import), in the caller's transaction: every message of every branch,
# with its place (depth, on the active path or not) and its rating; one array a column.
INSERT_TREE_SQL = """
insert into chat_messages (session_row_id, user_id, message_id, parent_id, role, content, status, created_at,
                           depth, on_path, rating, feedback_comment, rated_at)
select %(row_id)s, %(user_id)s, t.*
  from unnest(%(ids)s::text[], %(parents)s::text[], %(roles)s::text[], %(contents)s::text[], %(statuses)s::text[],
              %(created)s::timestamptz[], %(depths)s::integer[], %(on_path)s::boolean[], %(ratings)s::smallint[],
              %(comments)s::text[], %(rated)s::timestamptz[]) as t
"""

# The messages clients see, with their branch and feedback.
_MESSAGE_COLUMNS = """
m.message_id as id, nullif(m.parent_id, '') as parent_id, m.role, m.content, m.created_at, m.status, m.depth,
m.rating, m.feedback_comment, m.rated_at,
(select array_agg(s.message_id order by s.created_at nulls first, s.message_id) from chat_messages s
  where s.session_row_id = m.session_row_id and s.parent_id = m.parent_id) as sibling_ids
"""

# A page of the active path: the newest `limit` before position `before`, newest first. Siblings
# only where there are some (sibling_ids null: the message alone, message_out's [id]): the
# parents with more than one child are found in one pass over the session's rows (the history
# cap bounds them), and only their messages aggregate their siblings. One subquery per message
# of the page cost twice as much on the server for 1,000 messages, and its arrays, one per row,
# half again to decode (python -m bench.branches, path).
PATH_PAGE_SQL = """
with page as (
    select m.message_id, m.parent_id, m.role, m.content, m.created_at, m.status, m.depth, m.rating,
           m.feedback_comment, m.rated_at
      from chat_messages m
     where m.session_row_id = %(row_id)s and m.on_path and m.depth < %(before)s
     order by m.depth desc
     limit %(limit)s
), forks as (
    select s.parent_id from chat_messages s
     where s.session_row_id = %(row_id)s
     group by s.parent_id
    having count(*) > 1
)
select p.message_id as id, nullif(p.parent_id, '') as parent_id, p.role, p.content, p.created_at, p.status, p.depth,
       p.rating, p.feedback_comment, p.rated_at,
       case when f.parent_id is not null then
           (select array_agg(s.message_id order by s.created_at nulls first, s.message_id) from chat_messages s
             where s.session_row_id = %(row_id)s and s.parent_id = p.parent_id)
       end as sibling_ids
  from page p left join forks f on f.parent_id = p.parent_id
 order by p.depth desc
"""

MESSAGE_SQL = f"""
select {_MESSAGE_COLUMNS}, m.on_path
  from chat_sessions c join chat_messages m on m.session_row_id = c.id
 where c.user_id = %s and c.session_id = %s and m.message_id = %s
"""

# From the first message down to `message_id`, by parent links: the path a branch continues.
PATH_TO_SQL = """
with recursive up as (
    select m.message_id, m.parent_id, m.role, m.content, m.status, m.created_at, m.depth
      from chat_messages m where m.session_row_id = %(row_id)s and m.message_id = %(message_id)s
    union all
    select m.message_id, m.parent_id, m.role, m.content, m.status, m.created_at, m.depth
      from up join chat_messages m on m.session_row_id = %(row_id)s and m.message_id = up.parent_id
)
select message_id as id, role, content, status, created_at from up order by depth
"""

# Every message of every branch, in the order they were written on each path.
TREE_SQL = f"""
select {_MESSAGE_COLUMNS}, m.on_path
  from chat_messages m where m.session_row_id = %s
 order by m.depth, m.created_at nulls first, m.message_id
"""

SWITCH_SQL = "select outcome, (session_row).* from switch_session_branch(%s, %s, %s)"

RATE_SQL = f"""
select {_MESSAGE_COLUMNS}
  from rate_chat_message(%s, %s, %s, %s::smallint, %s) m
"""

DELETE_MESSAGE_SQL = "delete from chat_messages where session_row_id = %s and message_id = %s"

# Ratings since a time, each with the conversation up to the rated reply, oldest rating first.
RATINGS_SINCE_SQL = """
select c.user_id, c.business_id, c.session_id, m.session_row_id, m.message_id, m.rating, m.feedback_comment,
       m.rated_at
  from chat_messages m join chat_sessions c on c.id = m.session_row_id
 where m.rating is not null and m.rated_at >= %s and (%s::timestamptz is null or m.rated_at < %s::timestamptz)
 order by m.rated_at, m.session_row_id, m.message_id
"""


class MessageStore:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    # --- the checkpoint write's side (the caller's transaction) --------------

    @staticmethod
    def path_ids(conn: Connection, row_id: int) -> list[str]:
        return [r["message_id"] for r in conn.execute(PATH_IDS_SQL, (row_id,))]

    @staticmethod
    def sync_path(conn: Connection, session: dict, path: Sequence[dict], known: Sequence[str] | None = None) -> None:
        """Make the session's rows follow `path` ([{id, role, content, status, created_at}], the
        checkpoint's messages a client sees), given `known`, the path the rows had (None: read it)."""
        if known is None:
            known = MessageStore.path_ids(conn, session["id"])
        first = 0
        while first < len(known) and first < len(path) and known[first] == path[first]["id"]:
            first += 1
        if first == len(known) == len(path) and session["messages_indexed"] and not session["switched_to"]:
            return  # nothing moved (a step that did not touch the messages)
        tail = path[first:]
        conn.execute(SYNC_PATH_SQL, {
            "row_id": session["id"], "user_id": session["user_id"], "first_depth": first,
            "ids": [m["id"] for m in tail],
            "parents": [path[first + i - 1]["id"] if first + i > 0 else "" for i in range(len(tail))],
            "roles": [m["role"] for m in tail], "contents": [m["content"] for m in tail],
            "statuses": [m.get("status") for m in tail], "created": [m.get("created_at") for m in tail],
        })

    @staticmethod
    def insert_tree(conn: Connection, row_id: int, user_id: str, rows: Sequence[dict]) -> None:
        """Write a new session's messages ([{id, parent_id ('' for a first), role, content, status,
        created_at, depth, on_path, rating, feedback_comment, rated_at}]); the branch-count trigger
        counts those off the active path."""
        def column(name: str) -> list:
            return [r[name] for r in rows]

        conn.execute(INSERT_TREE_SQL, {
            "row_id": row_id, "user_id": user_id, "ids": column("id"), "parents": column("parent_id"),
            "roles": column("role"), "contents": column("content"), "statuses": column("status"),
            "created": column("created_at"), "depths": column("depth"), "on_path": column("on_path"),
            "ratings": column("rating"), "comments": column("feedback_comment"), "rated": column("rated_at"),
        })

    @staticmethod
    def delete_message(conn: Connection, row_id: int, message_id: str) -> None:
        conn.execute(DELETE_MESSAGE_SQL, (row_id, message_id))

    # --- reads ---------------------------------------------------------------

    def path_page(self, row_id: int, *, limit: int, before: int | None) -> list[dict]:
        """The active path's newest `limit` messages before position `before`, oldest first."""
        with self._pool.connection() as conn:
            rows = conn.execute(PATH_PAGE_SQL, {"row_id": row_id, "limit": limit,
                                                "before": 2**31 - 1 if before is None else before}).fetchall()
        return rows[::-1]

    def message(self, user_id: str, session_id: str, message_id: str) -> dict | None:
        with self._pool.connection() as conn:
            return conn.execute(MESSAGE_SQL, (user_id, session_id, message_id)).fetchone()

    def path_to(self, row_id: int, message_id: str) -> list[dict]:
        """The messages from the first down to `message_id`, oldest first (empty: no such message)."""
        with self._pool.connection() as conn:
            return conn.execute(PATH_TO_SQL, {"row_id": row_id, "message_id": message_id}).fetchall()

    def tree(self, row_id: int) -> list[dict]:
        with self._pool.connection() as conn:
            return conn.execute(TREE_SQL, (row_id,)).fetchall()

    def ratings_since(self, since: datetime, until: datetime | None) -> list[dict]:
        with self._pool.connection() as conn:
            return conn.execute(RATINGS_SINCE_SQL, (since, until, until)).fetchall()

    # --- writes --------------------------------------------------------------

    def switch(self, user_id: str, session_id: str, message_id: str) -> dict:
        """switch_session_branch's row: {outcome: switched|busy|no_session|no_message, session columns}."""
        with self._pool.connection() as conn:
            return conn.execute(SWITCH_SQL, (user_id, session_id, message_id)).fetchone()

    def rate(self, user_id: str, session_id: str, message_id: str, rating: int | None, comment: str | None) -> dict | None:
        """The rated reply, or None: no such assistant message in the caller's session."""
        with self._pool.connection() as conn:
            return conn.execute(RATE_SQL, (user_id, session_id, message_id, rating, comment)).fetchone()

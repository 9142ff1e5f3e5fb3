"""All SQL of message search (sql/027): the text-search configuration, the search itself, and
the reindex of messages from before the index.

A search reads the caller's newest messages first (WINDOW_ROWS of them, by the
(user_id, created_at) index): when a page of matches is there, that is the answer, at a cost
that does not grow with how many messages the user has or how common the word is. Otherwise
it asks the word index (GIN, led by user_id where btree_gin is installed) for every match,
which is few for a word rare in recent messages. In the recent order both steps give the exact
newest matches; in the rank order the first step ranks the newest messages' matches only
(documented in docs/api.md).
"""

from __future__ import annotations

import time

from psycopg import Connection
from psycopg_pool import ConnectionPool

from backend.search.query import ParsedQuery, like_pattern, tsquery_sql

# The newest messages a search reads before asking the word index.
WINDOW_ROWS = 5000
# ...and before asking the trigram index, for a search with fragments of 3 characters or more:
# matching a substring case-insensitively costs a few us a message (ILIKE lowers the whole
# text), against well under 1 us for a tsvector, so the window is smaller; a fragment in one
# message in 50 still fills a page there. A shorter fragment (天気, "ab") has no trigram for the
# index to look up, so it keeps the larger window.
FRAGMENT_WINDOW_ROWS = 1000

SET_CONFIG_SQL = """
update message_search_settings set config = %(config)s::regconfig
 where singleton and config <> %(config)s::regconfig
"""
VALID_CONFIG_SQL = "select %s::regconfig::text as config"

# ts_headline marks matches with these (removed from the text first), so the snippet comes back
# as plain text with offsets.
MARK_START, MARK_END = "\x01", "\x02"
HEADLINE_OPTIONS = f"StartSel={MARK_START}, StopSel={MARK_END}, MaxFragments=1, MaxWords=30, MinWords=12, " \
                   "FragmentDelimiter=\" … \""

# Sessions whose messages have no rows yet (from before sql/025), or rows without a vector.
UNINDEXED_SESSIONS_SQL = """
select id, thread_id, messages_indexed from chat_sessions s
 where s.id > %(after)s
   and (not s.messages_indexed
        or exists (select 1 from chat_messages m where m.session_row_id = s.id and (%(all)s or m.search_vector is null)))
 order by s.id
 limit %(limit)s
"""
# `update ... set content = content` runs the trigger that writes the vector (sql/027), in
# small batches, each its own short transaction: writes to the session wait at most for one.
REINDEX_SESSION_SQL = """
update chat_messages set content = content
 where session_row_id = %(row_id)s and (%(all)s or search_vector is null)
"""
# The lexemes ANALYZE found most common in messages (up to 10 x the statistics target), read
# again every COMMON_LEXEMES_SECONDS; and whether any message of the user matches a text with a
# lexeme not among them (see SearchStore._may_match), with the configuration.
COMMON_LEXEMES_SQL = """
select most_common_elems::text::text[] as lexemes from pg_stats
 where schemaname = 'public' and tablename = 'chat_messages' and attname = 'search_vector'
"""
COMMON_LEXEMES_SECONDS = 600.0
PROBE_SQL = """
select (select config::text from message_search_settings where singleton limit 1) as config,
       case when not %s::text[] @> tsvector_to_array(to_tsvector(%s::regconfig, %s))
            then exists (select 1 from chat_messages m where m.user_id = %s and m.search_vector @@ {tsq})
            else true
       end as found
"""
COUNT_SESSIONS_SQL = "select count(*) as n from chat_sessions where id > %s"


class SearchStore:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._config: str | None = None  # the configuration last read, for the probe (see _may_match)
        self._common: tuple[float, list[str] | None] = (float("-inf"), None)  # (read at, lexemes)

    def _may_match(self, conn: Connection, user_id: str, parsed: ParsedQuery) -> bool:
        """False when no message of the user holds the words and phrases (whatever the filters), for
        a text with a word that is rare in the whole table: the word index answers that in well under
        a millisecond, where the newest WINDOW_ROWS messages take a few ms to find nothing.

        Only for a rare word (one not among the lexemes ANALYZE found most common, read from
        pg_stats every COMMON_LEXEMES_SECONDS; before any ANALYZE, no word is taken as rare): the probe is
        planned with the tsquery as a constant, so the planner picks the word index for it; for a
        common word it would walk the user's messages newest first, which costs all of them when
        this user has none (a word common in other users' messages). Planned for each text (not
        prepared). The configuration is the one the previous search read; the same statement reads
        the table's, and when they differ the probe's answer is not used."""
        if not (parsed.words or parsed.phrases):
            return True
        read_at, common = self._common
        if time.monotonic() - read_at > COMMON_LEXEMES_SECONDS:
            row = conn.execute(COMMON_LEXEMES_SQL).fetchone()
            common = row["lexemes"] if row else None
            self._common = (time.monotonic(), common)
        if common is None:  # not analyzed yet: nothing says which words are rare
            return True
        config = self._config or "simple"
        tsq, tsq_params = tsquery_sql(parsed, config="%s::regconfig")
        params = [common, config, " ".join(parsed.words + parsed.phrases), user_id,
                  *(p for word in tsq_params for p in (config, word))]
        row = conn.execute(PROBE_SQL.format(tsq=tsq), params, prepare=False).fetchone()
        self._config = row["config"]
        return row["found"] or row["config"] != config

    def configure(self, config: str) -> str:
        """Make `config` the text-search configuration of new messages and of searches; returns it
        as PostgreSQL names it. A name PostgreSQL does not know fails here, at start."""
        with self._pool.connection() as conn:
            name = conn.execute(VALID_CONFIG_SQL, (config,)).fetchone()["config"]
            conn.execute(SET_CONFIG_SQL, {"config": config})
        return name

    def search(self, user_id: str, parsed: ParsedQuery, *, filters: dict, order: str, keyset: tuple | None,
               limit: int) -> list[dict]:
        """The caller's matching messages, a page (limit rows), in `order` after `keyset`."""
        with self._pool.connection() as conn:
            if not self._may_match(conn, user_id, parsed):
                return []
            if filters.get("session_id"):  # one session's messages: few, read by its key
                return self._run(conn, user_id, parsed, filters, order, keyset, limit, window=False)
            rows = self._run(conn, user_id, parsed, filters, order, keyset, limit, window=True)
            if len(rows) < limit:
                rows = self._run(conn, user_id, parsed, filters, order, keyset, limit, window=False)
        return rows

    @staticmethod
    def _run(conn: Connection, user_id: str, parsed: ParsedQuery, filters: dict, order: str,
             keyset: tuple | None, limit: int, *, window: bool) -> list[dict]:
        tsq, tsq_params = tsquery_sql(parsed, config="c.cfg")
        conditions = ["m.user_id = %s"]
        params: list = []
        params_where: list = [user_id]
        if tsq:
            conditions.append("m.search_vector @@ q.query")
        for fragment in parsed.fragments:
            conditions.append("m.content ilike %s")
            params_where.append(like_pattern(fragment))
        if filters.get("session_id"):
            # By the session's row id: its rows (at most the history caps) by their key, whatever
            # the word, instead of every match of the user's (a common word: 0.8 s).
            conditions.append("m.session_row_id = (select id from chat_sessions where user_id = %s "
                              "and session_id = %s)")
            params_where.extend([user_id, filters["session_id"]])
        if filters.get("role"):
            conditions.append("m.role = %s")
            params_where.append(filters["role"])
        if not filters.get("include_archived"):
            conditions.append("not s.is_archived")
        if filters.get("since"):
            conditions.append("m.created_at >= %s")
            params_where.append(filters["since"])
        if filters.get("until"):
            conditions.append("m.created_at < %s")
            params_where.append(filters["until"])
        if filters.get("branch") == "active":
            conditions.append("m.on_path")
        stamp = "coalesce(m.created_at, '-infinity'::timestamptz)"
        rank = "ts_rank(m.search_vector, q.query)" if tsq else "0::real"
        if order == "rank":
            sort_key = f"({rank}, {stamp}, m.session_row_id, m.message_id)"
            order_by = f"{rank} desc, {stamp} desc, m.session_row_id desc, m.message_id desc"
            if keyset is not None:
                conditions.append(f"{sort_key} < (%s::real, %s::timestamptz, %s::bigint, %s::text)")
                params_where.extend(keyset)
        else:
            sort_key = f"({stamp}, m.session_row_id, m.message_id)"
            order_by = f"{stamp} desc, m.session_row_id desc, m.message_id desc"
            if keyset is not None:
                conditions.append(f"{sort_key} < (%s::timestamptz, %s::bigint, %s::text)")
                params_where.extend(keyset[1:])
        source = "chat_messages"
        if window:
            newest = "created_at desc nulls last, session_row_id desc, message_id desc"
            indexed = parsed.fragments and all(len(fragment) >= 3 for fragment in parsed.fragments)
            rows = FRAGMENT_WINDOW_ROWS if indexed else WINDOW_ROWS
            # The newest messages within since/until: the window honours them, or a search of an
            # older span would find none in it and ask the word index for every match.
            span = "".join(f" and created_at {op} %s" for op, key in ((">=", "since"), ("<", "until"))
                           if filters.get(key))
            source = f"(select * from chat_messages where user_id = %s{span} order by {newest} limit {rows})"
            params.extend([user_id, *(filters[key] for key in ("since", "until") if filters.get(key))])
            if order == "recent" or not tsq:
                # In the index's order (sql/027), so the step stops at the page's last match instead
                # of reading and sorting the whole window (the same order: nulls last is -infinity).
                # Only here: in the index step an ordered walk would read every message of the user
                # to find a rare word's few.
                order_by = "m." + newest.replace(", ", ", m.")
        headline = (f"ts_headline(t.cfg, replace(replace(t.content, chr(1), ''), chr(2), ''), t.query, %s)"
                    if tsq else "null")
        # The configuration and the query, one row read once: `limit 1` tells the planner so (a
        # one-row table that autovacuum never analyzes is otherwise estimated at about 1,200 rows,
        # which multiplied every estimate above it, past jit_above_cost: 75 ms of JIT compiling);
        # materialized, so the tsquery is built once, not for every message the window reads.
        query = f"""
with q as materialized (select c.cfg, {tsq or "null::tsquery"} as query
             from (select config as cfg from message_search_settings where singleton limit 1) c)
select t.session_row_id, t.message_id, t.role, t.created_at, t.content, t.on_path, t.session_id, t.session_name,
       t.rank, {headline} as headline
  from (
    select m.session_row_id, m.message_id, m.role, m.created_at, m.content, m.on_path, s.session_id,
           s.session_name, {rank} as rank, q.query, q.cfg
      from q
     cross join {source} m
      join chat_sessions s on s.id = m.session_row_id
     where {" and ".join(conditions)}
     order by {order_by}
     limit %s
  ) t
 order by {"t.rank desc, " if order == "rank" else ""}coalesce(t.created_at, '-infinity'::timestamptz) desc,
          t.session_row_id desc, t.message_id desc
"""
        # In the order they are written: the query's, the headline's options (the outer select),
        # the window's user, the conditions', the limit.
        headline_params = [HEADLINE_OPTIONS] if tsq else []
        return conn.execute(query, [*tsq_params, *headline_params, *params, *params_where, limit]).fetchall()

    # --- reindex ---------------------------------------------------------------

    def sessions_to_index(self, after: int, limit: int, *, everything: bool) -> list[dict]:
        with self._pool.connection() as conn:
            return conn.execute(UNINDEXED_SESSIONS_SQL, {"after": after, "limit": limit, "all": everything}).fetchall()

    def reindex_session(self, row_id: int, *, everything: bool) -> int:
        with self._pool.connection() as conn:
            return conn.execute(REINDEX_SESSION_SQL, {"row_id": row_id, "all": everything}).rowcount

    def sessions_after(self, after: int) -> int:
        with self._pool.connection() as conn:
            return conn.execute(COUNT_SESSIONS_SQL, (after,)).fetchone()["n"]

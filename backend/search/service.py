"""The rules of message search: what a query means, pages by keyset, snippets as plain text.

A snippet is the text around the match, never markup: `highlights` are [start, end) character
offsets into it, so a client marks them without trusting any HTML.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime

from backend.auth.service import AuthUser
from backend.errors import ApiError
from backend.http import decode_cursor_values, encode_cursor_values, is_row_id
from backend.search.query import ParsedQuery, QueryError, parse_query
from backend.search.store import MARK_END, MARK_START, SearchStore

SNIPPET_CHARS = 160  # around a substring match


class SearchService:
    def __init__(self, store: SearchStore, *, language: str = "simple") -> None:
        self._store = store
        self._language = language

    def configure(self, language: str | None = None) -> None:
        """Write SEARCH_LANGUAGE (or `language`) where the index and searches read it (at start)."""
        self._store.configure(language or self._language)

    def search(self, user: AuthUser, text: str, *, filters: dict, order: str, cursor: str | None,
               limit: int) -> tuple[list[dict], str | None]:
        try:
            parsed = parse_query(text)
        except QueryError as exc:
            raise ApiError(400, "validation_error", f"Invalid q: {exc}", fields={"q": str(exc)}) from None
        keyset = decode_cursor(cursor, order) if cursor else None
        rows = self._store.search(user.id, parsed, filters=filters, order=order, keyset=keyset, limit=limit + 1)
        if not rows and keyset is None and _one_word(parsed):
            # A single word the text search does not know as a word ("ell" of "hello", a code
            # fragment): found as a substring instead.
            parsed = ParsedQuery(fragments=parsed.words)
            rows = self._store.search(user.id, parsed, filters=filters, order=order, keyset=None, limit=limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        hits = [self._hit(row, parsed) for row in rows]
        return hits, encode_cursor(rows[-1], order) if more else None

    @staticmethod
    def _hit(row: dict, parsed: ParsedQuery) -> dict:
        if row["headline"] is not None:
            snippet, highlights = unmark(row["headline"])
        else:
            snippet, highlights = around(row["content"], parsed.fragments)
        highlights = merged(highlights + find_all(snippet, parsed.fragments)) if parsed.fragments else highlights
        return {"session_id": row["session_id"], "session_name": row["session_name"], "message_id": row["message_id"],
                "role": row["role"], "created_at": row["created_at"], "on_active_branch": row["on_path"],
                "snippet": snippet, "highlights": highlights}

    # --- reindex ---------------------------------------------------------------

    def reindex(self, *, index_thread: Callable[[str], bool], everything: bool = False, batch: int = 100,
                progress: Callable[[int, int], None] | None = None, after: int = 0) -> int:
        """Index every session's messages that are not (from before sql/025 or sql/027; with
        `everything`, all of them again, after SEARCH_LANGUAGE changed): a session at a time, each
        a short transaction, resumable from a session row id. Returns the sessions indexed."""
        done = 0
        total = self._store.sessions_after(after)
        while True:
            sessions = self._store.sessions_to_index(after, batch, everything=everything)
            if not sessions:
                break
            for session in sessions:
                if not session["messages_indexed"]:
                    index_thread(session["thread_id"])  # writes its rows, and so their vectors
                self._store.reindex_session(session["id"], everything=everything)
                done += 1
                after = session["id"]
            if progress is not None:
                progress(after, total)
        return done


def _one_word(parsed: ParsedQuery) -> bool:
    return len(parsed.words) == 1 and not (parsed.phrases or parsed.fragments or parsed.excluded_words
                                           or parsed.excluded_phrases)


def unmark(headline: str) -> tuple[str, list[list[int]]]:
    """ts_headline's text with its marks, as plain text and [start, end) offsets."""
    out: list[str] = []
    highlights: list[list[int]] = []
    length = 0
    start = None
    for piece in re.split(f"([{MARK_START}{MARK_END}])", headline):
        if piece == MARK_START:
            start = length
        elif piece == MARK_END:
            if start is not None and length > start:
                highlights.append([start, length])
            start = None
        else:
            out.append(piece)
            length += len(piece)
    return "".join(out), merged(highlights)


def find_all(text: str, fragments: list[str]) -> list[list[int]]:
    found = []
    for fragment in fragments:
        for match in re.finditer(re.escape(fragment), text, re.IGNORECASE):
            found.append([match.start(), match.end()])
    return found


def around(content: str, fragments: list[str]) -> tuple[str, list[list[int]]]:
    """About SNIPPET_CHARS of `content` around the first fragment found in it."""
    first = min((m.start() for f in fragments if (m := re.search(re.escape(f), content, re.IGNORECASE))), default=0)
    start = max(0, first - SNIPPET_CHARS // 3)
    end = min(len(content), start + SNIPPET_CHARS)
    snippet = ("…" if start else "") + content[start:end] + ("…" if end < len(content) else "")
    return snippet, []


def merged(spans: list[list[int]]) -> list[list[int]]:
    out: list[list[int]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return out


def encode_cursor(row: dict, order: str) -> str:
    stamp = row["created_at"].isoformat() if row["created_at"] else None
    return encode_cursor_values([order, row["rank"], stamp, row["session_row_id"], row["message_id"]])


def decode_cursor(cursor: str, order: str) -> tuple:
    """(rank, created_at, session_row_id, message_id) of the last hit of the page before."""
    try:
        made_for, rank, stamp, row_id, message_id = decode_cursor_values(cursor)
        when = datetime.fromisoformat(stamp) if stamp is not None else None
        if when is not None and when.tzinfo is None:
            raise ValueError
        if made_for != order or not isinstance(rank, (int, float)) or isinstance(rank, bool):
            raise ValueError
        if not is_row_id(row_id):
            raise ValueError
        if not isinstance(message_id, str) or len(message_id) > 128:
            raise ValueError
    except (ValueError, TypeError):
        raise ApiError(400, "validation_error", "Invalid cursor: not one this search gave",
                       fields={"cursor": "not a cursor from this search"}) from None
    return (rank, when if when is not None else "-infinity", row_id, message_id)
